#!/bin/bash
# Build dist/ from HEAD (not from the working tree, which others may be editing) for a GPU-machine
# run: a clean clone compiled with this checkout's node_modules, source maps and .d.ts files left
# out, and kernels/ + package.json copied inside, so src/gpu/kernels.ts finds the kernels built
# with this dist first. The device tool carries at most 64 MiB of tree: tracked files + .device
# (Node, loader, node_modules: ~29.6 MB) + dist (~0.9 MB) fit; anything more has to be left out.
#   scripts/device/pack-dist.sh      (from the repository root)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$root" "$tmp/src"
ln -s "$root/node_modules" "$tmp/src/node_modules"
(cd "$tmp/src" && npm run -s build)
rm -rf "$root/dist"
cp -r "$tmp/src/dist" "$root/dist"
find "$root/dist" \( -name '*.map' -o -name '*.d.ts' \) -delete
cp -r "$tmp/src/kernels" "$tmp/src/package.json" "$root/dist/"
tracked=$(cd "$root" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
extra=$(du -sb "$root/dist" "$root/.device" 2>/dev/null | awk '{s += $1} END {print s}')
echo "dist from $(git -C "$root" rev-parse --short HEAD); tracked $((tracked / 1000000)) MB + dist/.device $((extra / 1000000)) MB of 67 MB"
if [ $((tracked + extra)) -gt 67108864 ]; then
  big=$(cd "$root" && du -sb fixtures/hf 2>/dev/null | cut -f1)
  echo "over the device tool's 64 MiB: the fixtures (fixtures/hf, $((big / 1000000)) MB) are not needed on the GPU machine by gpu-run.sh;"
  echo "leave them out of the working tree for the call: git sparse-checkout set --no-cone '/*' '!/fixtures/hf/'"
  echo "and bring them back right after: git sparse-checkout disable (not tried with the device tool yet;"
  echo "stripping the node binary saves only 2.3 MB of the 24 MB node.xz)"
fi
