#!/bin/bash
# The GPU machine's Python-only work, in one call of the device tool from the repository root (no node needed):
#   command: bash scripts/device/py-run.sh     carry: [".mcore", ".mla"]     timeout 600
# 1. issue 11: fixtures/gen_fixtures_families3_{a,b}.py (CPU, in the background) → $OUT/fx3a.tar.gz, fx3b.tar.gz
#    (unpack into fixtures/hf/).
# 2. issue 12: with .mla/ds = `moekit convert fixtures/hf/deepseek_v3 --to megatron --format torch_dist`
#    and .mla/ds-reference.safetensors = that fixture's reference: fixtures/torch/check_mcore_mla_hf.py
#    (Megatron-Core loads it; its MLP outputs and logits against transformers').
# 3. issue 12: fixtures/torch/gen_mcore_mla.py through scripts/device/mla-gen.sh → $OUT/mla.tar.gz.
# Everything is written under $OUT as it is made, so a run cut short still returns it.
export PYTHONUNBUFFERED=1
for g in a b; do
  (cd fixtures && OMP_NUM_THREADS=4 timeout ${FX_TIMEOUT:-290} python3 gen_fixtures_families3_$g.py --out-dir /tmp/fx3$g >"$OUT/fam3_$g.log" 2>&1
   echo "fam3_$g rc=$?" >>"$OUT/fam3_rc.txt"; tar -czf "$OUT/fx3$g.tar.gz" -C /tmp "fx3$g") &
done
[ -d .mla/ds ] && PYTHONUNBUFFERED=1 NO_VCS_VERSION=1 PYTHONPATH=.mcore:fixtures/torch timeout 150 \
  python3 fixtures/torch/check_mcore_mla_hf.py .mla/ds .mla/ds-reference.safetensors 2>&1 | grep -v Warning | tail -25 | tee "$OUT/mla-hf.log"
[ -d .mcore ] && bash scripts/device/mla-gen.sh 2>&1 | tee "$OUT/mla.log" | tail -40
wait
cat "$OUT/fam3_rc.txt"; tail -5 "$OUT"/fam3_*.log
