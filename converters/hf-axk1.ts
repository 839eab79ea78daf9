/**
 * A.X-K1 (axk1) as transformers 5.17 would save it (conversion_mapping.py "axk1": qwen2_moe's per-expert split plus
 * post_mlp_layernorm ↔ mlp.post_mlp_layernorm, reversed on save): per-expert mlp.experts.<e>.{gate,up,down}_proj,
 * router mlp.gate.weight [E,H], selection bias mlp.gate.e_score_correction_bias [E], ungated shared experts
 * mlp.shared_experts.* (Is = n_shared_experts · moe_intermediate_size), and the RMSNorm weight the block's output
 * (routed + shared) goes through, post_mlp_layernorm.weight [H] on the decoder layer — hence the layer prefix.
 * Sources: transformers models/axk1/modeling_axk1.py (AXK1TopkRouter, AXK1MoE), conversion_mapping.py; names
 * derived in fixtures/hf/families3-notes-b.md and confirmed by transformers' save (fixtures/hf/axk1).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-axk1',
  description: 'HF A.X-K1: per-expert mlp.experts.<e>.gate_proj/up_proj/down_proj, mlp.gate.e_score_correction_bias, mlp.shared_experts, post_mlp_layernorm',
  source: 'transformers modeling_axk1.py',
  families: ['axk1'],
  prefix: '{root}layers.{n}.',
  root: 'hf',
  rules: [
    { name: 'mlp.gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'mlp.gate.e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    ...perExpertRules('shared_experts').map((r) => ({ ...r, name: `mlp.${r.name}` })),
    { name: 'post_mlp_layernorm.weight', scope: 'layer', parts: () => ({ post_norm: id }) },
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
