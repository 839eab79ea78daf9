/**
 * AFMoE (afmoe, Arcee Trinity) as transformers 5.17 saves it: per-expert mlp.experts.<e>.{gate,up,down}_proj,
 * router mlp.router.gate.weight [E, H], the selection bias mlp.expert_bias [E] (a parameter, saved), ungated
 * shared experts mlp.shared_experts.{gate,up,down}_proj (Is = num_shared_experts · moe_intermediate_size).
 * Sources: transformers models/afmoe/modeling_afmoe.py (AfmoeTokenChoiceRouter, AfmoeSparseMoeBlock),
 * conversion_mapping.py ("afmoe" saves like qwen2_moe: per expert); fixtures/hf/afmoe.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-afmoe',
  description: 'HF AFMoE: per-expert gate_proj/up_proj/down_proj, router mlp.router.gate, selection bias mlp.expert_bias',
  source: 'transformers modeling_afmoe.py',
  families: ['afmoe'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [
    { name: 'router.gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'expert_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    ...perExpertRules('shared_experts'),
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
