/**
 * Hunyuan-V3 (hy_v3) as transformers 5.17 would save it (conversion_mapping.py "hy_v3": qwen2_moe's per-expert
 * split plus renames reversed on save): per-expert mlp.experts.<e>.{gate,up,down}_proj, router
 * mlp.router.gate.weight [E,H] (in memory mlp.gate.weight), the selection bias mlp.expert_bias [E] (in memory the
 * buffer mlp.e_score_correction_bias), ungated shared experts mlp.shared_mlp.{gate,up,down}_proj (in memory
 * shared_experts; Is = num_shared_experts · moe_intermediate_size) — AFMoE's router names with Hunyuan's shared MLP.
 * Sources: transformers models/hy_v3/modeling_hy_v3.py (HYV3TopKRouter, HYV3MoE), conversion_mapping.py; names
 * derived in fixtures/hf/families3-notes-a.md and confirmed by transformers' save (fixtures/hf/hy_v3).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-hy-v3',
  description: 'HF Hunyuan-V3: per-expert gate_proj/up_proj/down_proj, router mlp.router.gate, selection bias mlp.expert_bias, mlp.shared_mlp',
  source: 'transformers modeling_hy_v3.py',
  families: ['hy_v3'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [
    { name: 'router.gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'expert_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    ...perExpertRules('shared_mlp'),
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
