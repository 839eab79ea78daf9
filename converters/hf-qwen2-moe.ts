/**
 * HF Qwen2-MoE: per-expert mlp.experts.<e>.{gate,up,down}_proj, router mlp.gate [E,H], one shared
 * expert mlp.shared_expert.{gate,up,down}_proj (own shared_expert_intermediate_size) scaled by
 * sigmoid(mlp.shared_expert_gate [1,H]).
 * Source: transformers models/qwen2_moe/modeling_qwen2_moe.py (Qwen2MoeSparseMoeBlock), and
 * qwen3_next / qwen3_5_moe (their blocks subclass it; conversion_mapping.py saves them per expert);
 * fixtures fixtures/hf/qwen2_moe, qwen3_next, qwen3_5_moe (transformers 5.17).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-qwen2-moe',
  description: 'HF Qwen2-MoE / Qwen3-Next / Qwen3.5-MoE mlp.experts.<e>.gate_proj/up_proj/down_proj + mlp.shared_expert + shared_expert_gate',
  source: 'transformers modeling_qwen2_moe.py',
  families: ['qwen2_moe', 'qwen3_next', 'qwen3_5_moe', 'qwen4_exp'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    ...perExpertRules('shared_expert'),
    { name: 'shared_expert_gate.weight', scope: 'layer', parts: () => ({ shared_gate: id }) },
  ],
  cannotHold: 'expert biases, router bias, score-correction bias',
};
