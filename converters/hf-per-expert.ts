/**
 * HF per-expert gate_proj/up_proj/down_proj style: mlp.experts.<e>.{gate,up}_proj [I,H], down_proj [H,I],
 * router mlp.gate [E,H], DeepSeek-V3 / GLM4-MoE score-correction bias mlp.gate.e_score_correction_bias [E]
 * and shared experts mlp.shared_experts.{gate,up,down}_proj (Is = n_shared · moe_intermediate_size).
 * Sources: transformers models/qwen3_moe, olmoe, deepseek_v2, deepseek_v3, glm4_moe, dots1 modeling files; fixtures
 * fixtures/hf/qwen3_moe and fixtures/hf/deepseek_v3 (transformers 5.17 save_pretrained).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import type { TensorRule } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';

/**
 * The per-expert tensors mlp.experts.<e>.{gate,up,down}_proj and the shared expert's, under the
 * module name each family gives it: `shared_experts` (this layout, ERNIE-4.5-MoE), `shared_expert`
 * (Qwen2-MoE), `shared_mlp` (Hunyuan-MoE).
 */
export function perExpertRules(shared: string): TensorRule[] {
  return [
    { name: 'experts.{e}.gate_proj.weight', scope: 'expert', parts: () => ({ gate: id }) },
    { name: 'experts.{e}.up_proj.weight', scope: 'expert', parts: () => ({ up: id }) },
    { name: 'experts.{e}.down_proj.weight', scope: 'expert', parts: () => ({ down: id }) },
    { name: `${shared}.gate_proj.weight`, scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: `${shared}.up_proj.weight`, scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: `${shared}.down_proj.weight`, scope: 'layer', parts: () => ({ shared_down: id }) },
  ];
}

export const spec: LayoutSpec = {
  id: 'hf-per-expert',
  description: 'HF per-expert mlp.experts.<e>.gate_proj/up_proj/down_proj (Qwen3-MoE, OLMoE, DeepSeek-V2/V3, GLM4-MoE, dots.llm1)',
  source: 'transformers modeling_qwen3_moe.py / modeling_olmoe.py / modeling_deepseek_v3.py / modeling_glm4_moe.py',
  families: ['qwen3_moe', 'olmoe', 'deepseek_v3', 'glm4_moe', 'dots1', 'deepseek_v2'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'gate.e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    ...perExpertRules('shared_experts'),
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
