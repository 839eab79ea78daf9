#!/bin/bash
# Kernel sources of an overlay folder (WGSL files replacing the package's of the same name, e.g.
# scripts/device/overlays/v16: 16-byte weight loads, one per row and step, instead of two of 8 bytes,
# the x tile stored permuted so each lane's two x vec4s stay bank-conflict free) against the shipped
# kernels: kernel-tune in fresh processes, interleaved over ROUNDS rounds (steady state, --sync).
# One device-tool call, after scripts/device/pack-dist.sh:
#   command: bash scripts/device/kernel-overlay-ab.sh scripts/device/overlays/v16   carry: [".device", "dist"]
# Check an overlay on lavapipe first (the stream tests must pass with it, and fail with a broken one):
#   MOEKIT_KERNEL_DIR=<folder built as below> npx vitest run --config test/vitest.config.ts test/forward-gpu.test.ts -t stream
set -u
overlay=${1:?usage: kernel-overlay-ab.sh <overlay folder>}
[ -f .device/env.sh ] && . .device/env.sh
root=$(pwd)
dir=$(mktemp -d)
kernels=dist/kernels
[ -d "$kernels" ] || kernels=kernels
cp "$kernels"/*.wgsl "$dir"/
cp "$overlay"/*.wgsl "$dir"/
echo "overlay $overlay: $(cd "$overlay" && ls *.wgsl | tr '\n' ' ')→ $dir"
for r in $(seq "${ROUNDS:-3}"); do
  for v in shipped overlay; do
    echo -n "$v: "
    if [ $v = overlay ]; then MOEKIT_KERNEL_DIR=$dir timeout 60 node dist/bench/kernel-tune.js --sync stream; else
      timeout 60 node dist/bench/kernel-tune.js --sync stream; fi 2>&1 | grep -v Warning
  done
done | tee "${OUT:-$root}/overlay-ab.log"
