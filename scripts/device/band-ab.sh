#!/bin/bash
# Whole slabs against worker-written row bands (src/engine/execute.ts writeBands) on the GPU host's
# 16 cores: a synthetic bf16 Mixtral-layout checkpoint (GB, default 5; H 2048, I 5632 as in npm run bench)
# converted to nemo and megatron-grouped with MOEKIT_STREAM_BAND=0 and the default, interleaved with
# cp -r of the same bytes, ROUNDS rounds (default 2). Seconds and peak RSS per run.
#   command: bash scripts/device/band-ab.sh     carry: [".device", "dist"]
set -u
[ -f .device/env.sh ] && . .device/env.sh
OUT=${OUT:-/tmp/band-ab}; mkdir -p "$OUT"
W=$(mktemp -d /tmp/band-ab.XXXX)
GB=${GB:-5}
node -e "
const { writeSyntheticMixtral } = await import('./dist/bench/lib.js');
const per = 8 * 3 * 2048 * 5632 * 2;
await writeSyntheticMixtral('$W/src', { layers: Math.max(1, Math.round($GB * 2 ** 30 / per)), experts: 8, hidden: 2048, inter: 5632 });
" --input-type=module
sync
t() { local name=$1; shift; /usr/bin/time -f "$name %e s, peak %M KB" "$@" >/dev/null 2>>"$OUT/ab.err" || echo "$name failed" >>"$OUT/ab.err"; tail -1 "$OUT/ab.err"; }
for r in $(seq "${ROUNDS:-2}"); do
  rm -rf "$W/o"; t cp cp -r "$W/src" "$W/o"
  for to in nemo megatron-grouped; do
    for b in 0 default; do
      rm -rf "$W/o"
      if [ $b = 0 ]; then t "$to-whole" env MOEKIT_STREAM_BAND=0 node bin/moekit.js convert "$W/src" --to $to -o "$W/o" --no-fsync
      else t "$to-bands" node bin/moekit.js convert "$W/src" --to $to -o "$W/o" --no-fsync; fi
    done
  done
done | tee "$OUT/ab.log"
rm -rf "$W"
