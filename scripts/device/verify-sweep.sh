#!/bin/bash
# verify / read on the GPU machine across libuv thread-pool sizes and upload staging shapes: each row is
# one fresh process of bench/verify-bench.ts (Mixtral-8x7B layer, 2.63 GiB, best of 3 verify runs
# against the best bare read), without torch. One device-tool call, after scripts/device/pack-dist.sh:
#   command: bash scripts/device/verify-sweep.sh     carry: [".device", "dist"]
# UV="4 8" the thread-pool sizes; STAGING="default 16,4 …" the MOEKIT_GPU_STAGING values (<slots>,<MiB>).
set -u
[ -f .device/env.sh ] && . .device/env.sh
OUT=${OUT:-/tmp/verify-sweep}; mkdir -p "$OUT"
for r in $(seq "${ROUNDS:-1}"); do
  for uv in ${UV:-4 8}; do
    for st in ${STAGING:-default 16,4 16,8 8,16}; do
      echo "== UV_THREADPOOL_SIZE=$uv MOEKIT_GPU_STAGING=$st"
      s=$st; [ "$s" = default ] && s=
      UV_THREADPOOL_SIZE=$uv MOEKIT_GPU_STAGING=$s timeout 120 node dist/bench/verify-bench.js --no-torch 2>&1 |
        grep -v Warning | grep "read weights\|verify (\|forward on the host\|verify / read\|kernels"
    done
  done
done | tee "$OUT/sweep.log"
