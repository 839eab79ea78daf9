#!/bin/bash
# A kernel variant (a patch against kernels/, e.g. scripts/device/overlays/v16.patch: 16-byte weight
# loads, one per row and step, instead of two of 8 bytes, the x tile stored permuted so each lane's two
# x vec4s stay bank-conflict free) against the shipped kernels: kernel-tune in fresh processes,
# interleaved over ROUNDS rounds (steady state, --sync). One device-tool call, after scripts/device/pack-dist.sh:
#   command: bash scripts/device/kernel-overlay-ab.sh scripts/device/overlays/v16.patch   carry: [".device", "dist"]
# Check a variant on lavapipe first (the stream tests must pass with it):
#   NO_RUN=1 bash scripts/device/kernel-overlay-ab.sh <patch>   (prints the patched folder), then
#   MOEKIT_KERNEL_DIR=<folder> npx vitest run --config test/vitest.config.ts test/forward-gpu.test.ts -t stream
set -eu
patch_file=$(realpath "${1:?usage: kernel-overlay-ab.sh <patch against kernels/>}")
[ -f .device/env.sh ] && . .device/env.sh
root=$(pwd)
dir=$(mktemp -d)
kernels=dist/kernels
[ -d "$kernels" ] || kernels=kernels
cp "$kernels"/*.wgsl "$dir"/
(cd "$dir" && if command -v patch >/dev/null; then patch -s -p1 <"$patch_file"; else git apply -p1 "$patch_file"; fi)
echo "variant $patch_file → $dir"
[ "${NO_RUN:-0}" = 1 ] && exit 0
set +e
for r in $(seq "${ROUNDS:-3}"); do
  for v in shipped variant; do
    echo -n "$v: "
    if [ $v = variant ]; then MOEKIT_KERNEL_DIR=$dir timeout 60 node dist/bench/kernel-tune.js --sync stream; else
      timeout 60 node dist/bench/kernel-tune.js --sync stream; fi 2>&1 | grep -v Warning
  done
done | tee "${OUT:-$root}/variant-ab.log"
