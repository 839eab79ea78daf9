/**
 * Kimi-Linear (kimi_linear) as its Hub checkpoints hold it and transformers 5.17 would save it (conversion_mapping.py
 * "kimi_linear": block_sparse_moe ↔ mlp, experts' w1/w3 ↔ gate_up_proj, w2 ↔ down_proj): Mixtral's per-expert
 * names block_sparse_moe.experts.<e>.w1 (gate) / w3 (up) [I,H], w2 (down) [H,I], router block_sparse_moe.gate.weight
 * [E,H], the selection bias block_sparse_moe.gate.e_score_correction_bias [E] (a persistent buffer), ungated shared
 * experts block_sparse_moe.shared_experts.{gate,up,down}_proj (Is = num_shared_experts · moe_intermediate_size).
 * Sources: transformers models/kimi_linear/modeling_kimi_linear.py (KimiLinearTopkRouter, KimiLinearSparseMoeBlock),
 * conversion_mapping.py; names derived in fixtures/hf/families3-notes-a.md and confirmed by transformers' save
 * (fixtures/hf/kimi_linear).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'hf-kimi-linear',
  description: 'HF Kimi-Linear: per-expert block_sparse_moe.experts.<e>.w1/w3/w2, gate.e_score_correction_bias, block_sparse_moe.shared_experts',
  source: 'transformers modeling_kimi_linear.py',
  families: ['kimi_linear'],
  prefix: '{root}layers.{n}.block_sparse_moe.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'gate.e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    { name: 'experts.{e}.w1.weight', scope: 'expert', parts: () => ({ gate: id }) },
    { name: 'experts.{e}.w3.weight', scope: 'expert', parts: () => ({ up: id }) },
    { name: 'experts.{e}.w2.weight', scope: 'expert', parts: () => ({ down: id }) },
    { name: 'shared_experts.gate_proj.weight', scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: 'shared_experts.up_proj.weight', scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: 'shared_experts.down_proj.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
