/**
 * Qwen3-VL-MoE's text model (qwen3_vl_moe): fused experts under model.language_model.layers.<n>.mlp.,
 * router mlp.gate.weight [E, H], no shared expert; the vision tower passes through. Two orientations
 * of the same names are on disk:
 *  - `hf-qwen3-vl-moe` (what `--to hf` writes): as transformers 5.17 save_pretrained writes it and as its
 *    module holds it, experts.gate_up_proj [E, 2I, H] (per expert [gate; up] rows, F.linear(x, W[e])),
 *    experts.down_proj [E, H, I] (fixtures/hf/qwen3_vl_moe, written by transformers 5.17.0);
 *  - `hf-qwen3-vl-moe-hub`: as the Qwen/Qwen3-VL-*-A*B checkpoints hold it, transposed: gate_up_proj
 *    [E, H, 2I] ([gate | up] columns, x @ W), down_proj [E, I, H]; read, and told from the other by shape
 *    (read.ts shapesFit).
 * Sources: transformers models/qwen3_vl_moe/modeling_qwen3_vl_moe.py (Qwen3VLMoeTextExperts: gate_up_proj
 * [E, 2I, H], down_proj [E, H, I]; Qwen3VLMoeTextTopKRouter: softmax, top-k, renormalised) and
 * conversion_mapping.py ("qwen3_vl_moe": Transpose(1, 2, check_dims=True) of both when loading the Hub's form).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, id, T } from '../src/engine/layout.js';

const base = {
  source: 'transformers modeling_qwen3_vl_moe.py, conversion_mapping.py',
  families: ['qwen3_vl_moe'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat'] },
  cannotHold: 'expert biases, router bias, score-correction bias, shared experts',
} as const;

export const spec: LayoutSpec = {
  ...base,
  id: 'hf-qwen3-vl-moe',
  description: 'HF Qwen3-VL-MoE fused mlp.experts.gate_up_proj [E,2I,H], down_proj [E,H,I] (transformers save), router mlp.gate',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'experts.gate_up_proj', scope: 'stacked', slab: (d) => [fusedWidth(d), d.H], parts: (d, o) => fusedGateUp(d, o, 0, false) },
    { name: 'experts.down_proj', scope: 'stacked', slab: (d) => [d.H, d.I], parts: () => ({ down: id }) },
  ],
};

export const hubSpec: LayoutSpec = {
  ...base,
  id: 'hf-qwen3-vl-moe-hub',
  description: 'HF Qwen3-VL-MoE fused mlp.experts.gate_up_proj [E,H,2I], down_proj [E,I,H] (Hub checkpoints), router mlp.gate',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'experts.gate_up_proj', scope: 'stacked', slab: (d) => [d.H, fusedWidth(d)], parts: (d, o) => fusedGateUp(d, o, 1, true) },
    { name: 'experts.down_proj', scope: 'stacked', slab: (d) => [d.I, d.H], parts: () => ({ down: T }) },
  ],
};
