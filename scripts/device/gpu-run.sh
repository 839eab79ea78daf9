#!/bin/bash
# What the GPU machine should run next (issue 16's kernel figures, verify's host phases and the
# GPU-host bench), in one call of the device tool from the repository root, after scripts/device/pack-dist.sh:
#   command: bash scripts/device/gpu-run.sh     carry: [".device", "dist"]     timeout 600
# Everything useful is written under $OUT as it is made, so a run cut short still returns it.
# 1. with FIXTURES=1: fixtures/gen_fixtures_families3_{a,b}.py (CPU, in the background): 15 families'
#    transformers fixtures, tarred to $OUT/fx3a.tar.gz / fx3b.tar.gz (unpack into fixtures/hf/).
# 2. hbm-probe: the read bandwidth a plain WGSL kernel reaches on this card (the kernels' floor).
# 3. kernel-tune: the shipped kernels, three fresh processes (steady state: the median of 64 runs of
#    each dispatch in a process's first forward; compare shapes with kernel-ab.sh).
# 4. verify-bench: kernels, verify/read and where the verify forward's host time went, with torch
#    eager f32 beside them.
# 5. npm run bench at 5 GiB with the Python path (16 cores); SKIP_BENCH=1 leaves it out.
# With VARIANT=<patch against kernels/> (e.g. scripts/device/overlays/v16.patch), first that kernel
# variant against the shipped kernels (scripts/device/kernel-ablate.sh, rows full and patch).
export PYTHONUNBUFFERED=1
. .device/env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ "${FIXTURES:-0}" = 1 ] && for g in a b; do
  (cd fixtures && OMP_NUM_THREADS=3 timeout 300 python3 gen_fixtures_families3_$g.py --out-dir /tmp/fx3$g >"$OUT/fam3_$g.log" 2>&1
   echo "fam3_$g rc=$?" >>"$OUT/fam3_rc.txt"; tar -czf "$OUT/fx3$g.tar.gz" -C /tmp "fx3$g") &
done
[ -n "${VARIANT:-}" ] && PATCH=$VARIANT ABL="full patch" ROUNDS=3 bash scripts/device/kernel-ablate.sh
timeout 60 node scripts/device/hbm-probe.mjs 2>&1 | grep -v Warning | tee "$OUT/hbm.log"
for r in 1 2 3; do
  timeout 80 node dist/bench/kernel-tune.js --sync stream 2>&1 | grep --line-buffered -v Warning
done 2>&1 | tee "$OUT/tune.log"
timeout 110 node dist/bench/verify-bench.js 2>&1 | grep -v Warning | tail -14 | tee "$OUT/vbench.log"
[ "${SKIP_BENCH:-0}" = 1 ] && { wait; cat "$OUT/fam3_rc.txt" 2>/dev/null; exit 0; }
MOEKIT_BENCH_DIR=/tmp MOEKIT_BENCH_GB=5 MOEKIT_BENCH_REPS=1 MOEKIT_BENCH_SKIP_VERIFY=1 timeout 240 node --expose-gc dist/bench/bench.js 2>&1 |
  grep --line-buffered -v "Warning\|^verify: \|^convert: \|^shard: " >"$OUT/bench.log"
tail -40 "$OUT/bench.log"
wait
cat "$OUT/fam3_rc.txt" 2>/dev/null
