#!/usr/bin/env python3
"""The Python path users run today, for `npm run bench` to time beside moekit: safetensors' safe_open
and save_file with torch ops, on the bench's synthetic Mixtral checkpoint (HF names, index or single
file). Writes the same tensor names moekit writes, so the bench can check both produced identical
tensors. Prints one JSON line: {"seconds": wall, "peakRssMB": ru_maxrss}.

  python3 bench/peer.py te|nemo SRC DST         Megatron TE GroupedLinear names / NeMo stacked experts
  python3 bench/peer.py shard SRC DST EP        EP ranks epR-of-EP, experts renumbered, routers on every rank,
                                                other tensors on rank 0 (moekit's --dense rank0)
"""
import json, os, re, resource, sys, time

import torch
from safetensors import safe_open
from safetensors.torch import save_file

EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")
ROUTER = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight")
SHARD_BYTES = 5 * 10**9


def source(src):
    idx = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(idx):
        where = json.load(open(idx))["weight_map"]
    else:
        with safe_open(os.path.join(src, "model.safetensors"), "pt") as f:
            where = {k: "model.safetensors" for k in f.keys()}
    files = {f: safe_open(os.path.join(src, f), "pt") for f in sorted(set(where.values()))}
    return list(where), lambda k: files[where[k]].get_tensor(k)


class Out:
    """Tensors buffered up to SHARD_BYTES per file, as save_file needs whole dicts."""

    def __init__(self, d):
        self.d, self.buf, self.size, self.n, self.map = d, {}, 0, 0, {}
        os.makedirs(d, exist_ok=True)

    def put(self, k, t):
        b = t.numel() * t.element_size()
        if self.buf and self.size + b > SHARD_BYTES:
            self.flush()
        self.buf[k] = t.contiguous()
        self.size += b

    def flush(self):
        self.n += 1
        name = f"model-{self.n:05d}.safetensors"
        save_file(self.buf, os.path.join(self.d, name), metadata={"format": "pt"})
        self.map.update({k: name for k in self.buf})
        self.buf, self.size = {}, 0

    def close(self):
        if self.buf:
            self.flush()
        json.dump({"metadata": {}, "weight_map": self.map}, open(os.path.join(self.d, "model.safetensors.index.json"), "w"))


def convert(mode, src, dst):
    names, get = source(src)
    experts = {}
    out = Out(dst)
    for k in names:
        m = EXPERT.match(k)
        if m:
            experts.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), {})[m.group(3)] = k
            continue
        r = ROUTER.match(k)
        if r:
            out.put(f"decoder.layers.{r.group(1)}.mlp.router.weight" if mode == "te" else f"model.layers.{r.group(1)}.mlp.gate.weight", get(k))
        else:
            out.put(k, get(k))
    for l, es in sorted(experts.items()):
        ids = sorted(es)
        if mode == "te":
            for e in ids:
                out.put(f"decoder.layers.{l}.mlp.experts.linear_fc1.weight{e}", torch.cat([get(es[e]["w1"]), get(es[e]["w3"])], 0))
                out.put(f"decoder.layers.{l}.mlp.experts.linear_fc2.weight{e}", get(es[e]["w2"]))
        else:
            out.put(f"model.layers.{l}.mlp.experts.gate_and_up_projs", torch.stack([torch.cat([get(es[e]["w1"]).T, get(es[e]["w3"]).T], 1) for e in ids]))
            out.put(f"model.layers.{l}.mlp.experts.down_projs", torch.stack([get(es[e]["w2"]).T for e in ids]))
    out.close()


def shard(src, dst, ep):
    names, get = source(src)
    n_exp = 1 + max(int(m.group(2)) for k in names if (m := EXPERT.match(k)))
    per = n_exp // ep
    for r in range(ep):
        out = Out(os.path.join(dst, f"ep{r}-of-{ep}"))
        for k in names:
            m = EXPERT.match(k)
            if not m:
                if r == 0 or ROUTER.match(k):
                    out.put(k, get(k))
            elif r * per <= int(m.group(2)) < (r + 1) * per:
                out.put(f"model.layers.{m.group(1)}.block_sparse_moe.experts.{int(m.group(2)) - r * per}.{m.group(3)}.weight", get(k))
        out.close()


if __name__ == "__main__":
    t0 = time.perf_counter()
    mode, src, dst = sys.argv[1:4]
    if mode == "shard":
        shard(src, dst, int(sys.argv[4]))
    else:
        convert(mode, src, dst)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peakRssMB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
