#!/bin/bash
# What the GPU machine should run next (issue 11's fixtures, issue 16's kernel tuning and GPU-host
# bench), in one call of the device tool from the repository root, after scripts/device/pack-dist.sh:
#   command: bash scripts/device/gpu-run.sh     carry: [".device", "dist"]     timeout 600
# Everything useful is written under $OUT as it is made, so a run cut short still returns it.
# 1. fixtures/gen_fixtures_families3_{a,b}.py (CPU, in the background): 15 families' transformers
#    fixtures, tarred to $OUT/fx3a.tar.gz / fx3b.tar.gz (unpack into fixtures/hf/).
# 2. kernel-tune: the stream kernels' shapes (RW rows per invocation, C workgroups per row block)
#    against the defaults, with 1 GiB and 128 MiB pieces (MOEKIT_GPU_PIECE_MIB).
# 3. verify-bench: kernels and verify/read, with torch eager f32 beside them.
# 4. npm run bench at 5 GiB with the Python path (16 cores).
export PYTHONUNBUFFERED=1
. .device/env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ "${SKIP_FIXTURES:-0}" = 1 ] || for g in a b; do
  (cd fixtures && OMP_NUM_THREADS=3 timeout 300 python3 gen_fixtures_families3_$g.py --out-dir /tmp/fx3$g >"$OUT/fam3_$g.log" 2>&1
   echo "fam3_$g rc=$?" >>"$OUT/fam3_rc.txt"; tar -czf "$OUT/fx3$g.tar.gz" -C /tmp "fx3$g") &
done
for pm in 1024 128; do
  echo "== pieces of $pm MiB"
  MOEKIT_GPU_PIECE_MIB=$pm timeout 80 node dist/bench/kernel-tune.js stream gpu stream:8,1,2,2:8,8,2,2 stream:16,1,2,2:16,8,2,2 \
    stream:8,1,1,2:8,8,1,2 stream:8,1,2:8,8,2 2>&1 | grep --line-buffered -v Warning
done 2>&1 | tee "$OUT/tune.log"
timeout 110 node dist/bench/verify-bench.js 2>&1 | grep -v Warning | tail -14 | tee "$OUT/vbench.log"
[ "${SKIP_BENCH:-0}" = 1 ] && { wait; cat "$OUT/fam3_rc.txt" 2>/dev/null; exit; }
MOEKIT_BENCH_DIR=/tmp MOEKIT_BENCH_GB=5 MOEKIT_BENCH_REPS=1 MOEKIT_BENCH_SKIP_VERIFY=1 timeout 240 node --expose-gc dist/bench/bench.js 2>&1 |
  grep --line-buffered -v "Warning\|^verify: \|^convert: \|^shard: " >"$OUT/bench.log"
tail -40 "$OUT/bench.log"
wait
cat "$OUT/fam3_rc.txt"
