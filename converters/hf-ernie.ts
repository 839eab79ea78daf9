/**
 * ERNIE-4.5-MoE as transformers 5.17 saves it: per-expert mlp.experts.<e>.{gate,up,down}_proj,
 * router mlp.gate.weight [E, H], the selection bias mlp.moe_statics.e_score_correction_bias
 * [1, E] (in memory mlp.gate.moe_statics.…; the conversion mapping renames it on save and load),
 * shared experts mlp.shared_experts.{gate,up,down}_proj (Is = moe_num_shared_experts ·
 * moe_intermediate_size). Sources: transformers models/ernie4_5_moe/modeling_ernie4_5_moe.py
 * (Ernie4_5_MoeStatics, Ernie4_5_MoeTopKRouter), conversion_mapping.py; fixtures/hf/ernie4_5_moe.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-ernie',
  description: 'HF ERNIE-4.5-MoE: per-expert gate_proj/up_proj/down_proj, mlp.moe_statics.e_score_correction_bias [1,E]',
  source: 'transformers modeling_ernie4_5_moe.py',
  families: ['ernie4_5_moe'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'moe_statics.e_score_correction_bias', scope: 'layer', slab: (d) => [1, d.Er], parts: () => ({ score_bias: (v) => v.reshape([v.numel]) }) },
    ...perExpertRules('shared_experts'),
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
