#!/usr/bin/env python3
"""PyTorch eager f32 baseline for bench/verify-bench.ts.

Usage: torch_moe.py <checkpoint dir> <io.safetensors> [--reps N] [--device cpu|cuda]

Loads layer 0 of the Mixtral-layout checkpoint written by verify-bench (bf16 -> f32 on the
device), runs the MoE block the way transformers' MixtralSparseMoeBlock does in eager mode
(softmax over all experts, top-k, renormalise, per-expert SwiGLU MLP, index_add_), times it
(median of N runs after warm-up, weights already resident), compares with the WebGPU output in
io.safetensors, and prints one JSON line: {"device", "ms", "max_rel_vs_webgpu"}.
Needs only torch (no safetensors package).
"""
import json
import struct
import sys
import time

import torch


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = torch.frombuffer(data, dtype=dtypes[t["dtype"]], count=(b - a) // torch.tensor([], dtype=dtypes[t["dtype"]]).element_size(), offset=a).reshape(t["shape"])
    return out


def main():
    ckdir, io_path = sys.argv[1], sys.argv[2]
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 10
    dev = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else ("cuda" if torch.cuda.is_available() else "cpu")
    with open(f"{ckdir}/config.json") as f:
        cfg = json.load(f)
    E, K = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    w = read_safetensors(f"{ckdir}/model.safetensors")
    p = "model.layers.0.block_sparse_moe"
    gate = w[f"{p}.gate.weight"].to(dev, torch.float32)
    w1 = [w[f"{p}.experts.{e}.w1.weight"].to(dev, torch.float32) for e in range(E)]
    w2 = [w[f"{p}.experts.{e}.w2.weight"].to(dev, torch.float32) for e in range(E)]
    w3 = [w[f"{p}.experts.{e}.w3.weight"].to(dev, torch.float32) for e in range(E)]
    del w
    io = read_safetensors(io_path)
    x = io["input"].to(dev)
    ref = io["output"].to(dev)

    def moe(x):
        # modeling_mixtral.py MixtralSparseMoeBlock.forward (eager)
        logits = x @ gate.T
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        topw, topi = torch.topk(probs, K, dim=-1)
        topw = topw / topw.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(E):
            tok, slot = torch.where(topi == e)
            if tok.numel() == 0:
                continue
            xe = x[tok]
            h = torch.nn.functional.silu(xe @ w1[e].T) * (xe @ w3[e].T)
            out.index_add_(0, tok, (h @ w2[e].T) * topw[tok, slot, None])
        return out

    with torch.no_grad():
        for _ in range(2):
            y = moe(x)
        times = []
        for _ in range(reps):
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            y = moe(x)
            if dev == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    rel = ((y - ref).abs().max() / ref.abs().max()).item()
    name = torch.cuda.get_device_name(0) if dev == "cuda" else f"cpu ({torch.get_num_threads()} threads, torch {torch.__version__})"
    print(json.dumps({"device": name, "ms": times[len(times) // 2], "max_rel_vs_webgpu": rel}))


if __name__ == "__main__":
    main()
