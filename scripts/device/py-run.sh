#!/bin/bash
# The GPU machine's Python-only work, in one call of the device tool from the repository root (no node needed):
#   command: bash scripts/device/py-run.sh     carry: [".mcore"]     timeout 600
# 1. issue 11: fixtures/gen_fixtures_families3_{a,b}.py (CPU, in the background) → $OUT/fx3a.tar.gz, fx3b.tar.gz
#    (unpack into fixtures/hf/).
# 2. issue 12: fixtures/torch/gen_mcore_mla.py through scripts/device/mla-gen.sh → $OUT/mla.tar.gz.
# Everything is written under $OUT as it is made, so a run cut short still returns it.
export PYTHONUNBUFFERED=1
for g in a b; do
  (cd fixtures && OMP_NUM_THREADS=4 timeout 400 python3 gen_fixtures_families3_$g.py --out-dir /tmp/fx3$g >"$OUT/fam3_$g.log" 2>&1
   echo "fam3_$g rc=$?" >>"$OUT/fam3_rc.txt"; tar -czf "$OUT/fx3$g.tar.gz" -C /tmp "fx3$g") &
done
[ -d .mcore ] && bash scripts/device/mla-gen.sh 2>&1 | tee "$OUT/mla.log" | tail -40
wait
cat "$OUT/fam3_rc.txt"; tail -5 "$OUT"/fam3_*.log
