#!/bin/bash
# Issue 12, DeepSeek-V3 (MLA) in Megatron-Core: on the GPU machine, from the repository root, with the
# Megatron-Core source in .mcore (see ../shared/device/megatron/README.md):
#   command: bash scripts/device/mla-gen.sh     carry: [".mcore"]
# 1. fixtures/torch/gen_mcore_mla.py: the checkpoint Megatron-Core writes (EP 1 and EP 2, no MTP; EP 1
#    with one MTP layer, for its keys), its HF twin and outputs → $OUT/mla.tar.gz (unpack in fixtures/torch/).
# Megatron loading moekit's output is fixtures/torch/check_mcore_mla_hf.py (py-run.sh runs it); moekit writing
# what Megatron wrote is test/torch.test.ts against the unpacked fixture.
export PYTHONUNBUFFERED=1 NO_VCS_VERSION=1 PYTHONPATH=.mcore:fixtures/torch
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p /tmp/mla /tmp/mla-mtp
timeout 120 python3 fixtures/torch/gen_mcore_mla.py /tmp/mla --mtp 0 2>&1 | tail -30
[ "${MLA_ONLY_EP1:-0}" = 1 ] || timeout 80 python3 fixtures/torch/gen_mcore_mla.py /tmp/mla --mtp 0 --ep 2 --port 29517 2>&1 | tail -10
[ "${MLA_ONLY_EP1:-0}" = 1 ] || timeout 60 python3 fixtures/torch/gen_mcore_mla.py /tmp/mla-mtp --mtp 1 --port 29519 2>&1 | tail -10
mv /tmp/mla-mtp/mcore_torch_dist_mla /tmp/mla/mcore_torch_dist_mla_mtp 2>/dev/null
python3 -c "import json; print(json.dumps(json.load(open('/tmp/mla/mcore_torch_dist_mla/keys.json')).get('hf_check'), indent=0)[:3000])"
tar -czf "$OUT/mla.tar.gz" -C /tmp/mla .
ls -la /tmp/mla/*
