/**
 * Laguna (laguna) as transformers 5.17 would save it (conversion_mapping.py "laguna": qwen2_moe's per-expert
 * split plus two renames reversed on save): per-expert mlp.experts.<e>.{gate,up,down}_proj, router
 * mlp.gate.weight [E,H], the selection bias mlp.experts.e_score_correction_bias [E] (in memory
 * mlp.gate.e_score_correction_bias), one ungated shared expert mlp.shared_expert.{gate,up,down}_proj (in
 * memory shared_experts; shared_expert_intermediate_size). Sources: transformers models/laguna/modeling_laguna.py
 * (LagunaTopKRouter, LagunaSparseMoeBlock), conversion_mapping.py; names derived in
 * fixtures/hf/families3-notes-a.md and confirmed by transformers' save (fixtures/hf/laguna).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-laguna',
  description: 'HF Laguna: per-expert gate_proj/up_proj/down_proj, selection bias mlp.experts.e_score_correction_bias, mlp.shared_expert',
  source: 'transformers modeling_laguna.py',
  families: ['laguna'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'experts.e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    ...perExpertRules('shared_expert'),
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
