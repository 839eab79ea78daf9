/**
 * EXAONE-MoE (exaone_moe) as transformers 5.17 saves it: per-expert mlp.experts.<e>.{gate,up,down}_proj,
 * router mlp.gate.weight [E, H], the selection bias mlp.e_score_correction_bias [E] (on the block: in
 * memory it is mlp.gate.e_score_correction_bias, conversion_mapping.py renames it on save and load),
 * shared experts mlp.shared_experts.{gate,up,down}_proj (Is = num_shared_experts · moe_intermediate_size).
 * Sources: transformers models/exaone_moe/modeling_exaone_moe.py (ExaoneMoeSparseMoEBlock), conversion_mapping.py;
 * fixtures/hf/exaone_moe.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-exaone',
  description: 'HF EXAONE-MoE: per-expert gate_proj/up_proj/down_proj, mlp.e_score_correction_bias on the block',
  source: 'transformers modeling_exaone_moe.py',
  families: ['exaone_moe'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    ...perExpertRules('shared_experts'),
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
