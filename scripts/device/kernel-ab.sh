#!/bin/bash
# Expert-kernel shapes compared in fresh processes (kernel-tune's in-process comparisons mislead: a
# configuration timed after another in one process ran slower), interleaved over ROUNDS rounds so
# drift hits every shape alike; then verify-bench (torch eager f32 beside it) with the default and
# with BEST (an up:down[@piece MiB] of MOEKIT_UP_CFG / MOEKIT_DOWN_CFG / MOEKIT_GPU_PIECE_MIB). One device-tool call, after
# scripts/device/pack-dist.sh:   command: bash scripts/device/kernel-ab.sh   carry: [".device", "dist"]
. .device/env.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
# up:down[@piece MiB] (MOEKIT_GPU_PIECE_MIB, default moekit's: 1024 on a GPU)
CFGS=${CFGS:-"8,1,2,2:8,8,2,2 16,1,2,2:16,8,2,2 8,1,2,1:8,8,2,1 8,1,2,2:8,4,2,2 8,1,2,2:8,8,2,2@128"}
for r in $(seq "${ROUNDS:-2}"); do
  for c in $CFGS; do
    pm=1024; case $c in *@*) pm=${c##*@}; c=${c%@*};; esac
    echo -n "pieces $pm MiB: "
    MOEKIT_GPU_PIECE_MIB=$pm timeout 60 node dist/bench/kernel-tune.js ${TUNE_ARGS:---sync} "stream:$c" 2>&1 | grep -v Warning
  done
done | tee "$OUT/ab.log"
# BEST unset: the configuration with the lowest kernel time above (when it is not the default's)
if [ -z "${BEST:-}" ]; then
  BEST=$(awk '/kernels/ { for (i = 1; i <= NF; i++) if ($i == "kernels") ms = $(i + 1); cfg = $4; sub(/^stream:/, "", cfg); pm = $2
    if (best == "" || ms + 0 < bms) { best = cfg "@" pm; bms = ms + 0 } } END { print best }' "$OUT/ab.log")
  [ "$BEST" = "8,1,2,2:8,8,2,2@1024" ] && BEST=
fi
for c in default ${BEST:-}; do
  echo "== verify-bench $c"
  if [ "$c" = default ]; then timeout 100 node dist/bench/verify-bench.js; else
    pm=1024; case $c in *@*) pm=${c##*@}; c=${c%@*};; esac
    MOEKIT_GPU_PIECE_MIB=$pm MOEKIT_UP_CFG=${c%%:*} MOEKIT_DOWN_CFG=${c##*:} timeout 100 node dist/bench/verify-bench.js; fi 2>&1 | grep -v Warning | tail -9
done | tee "$OUT/vbench.log"
