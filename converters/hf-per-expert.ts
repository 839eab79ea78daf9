/**
 * HF per-expert gate_proj/up_proj/down_proj style: mlp.experts.<e>.{gate,up}_proj [I,H], down_proj [H,I],
 * router mlp.gate [E,H], DeepSeek-V3 / GLM4-MoE score-correction bias mlp.gate.e_score_correction_bias [E]
 * and shared experts mlp.shared_experts.{gate,up,down}_proj (Is = n_shared · moe_intermediate_size).
 * Sources: transformers models/qwen3_moe, olmoe, flex_olmo, deepseek_v2, deepseek_v3, deepseek_v32, glm4_moe,
 * glm4_moe_lite, glm_moe_dsa, glm4v_moe (its text model), solar_open, dots1, cohere2_moe modeling files and conversion_mapping.py (all save per expert);
 * fixtures fixtures/hf/* of these families (transformers 5.17 save_pretrained).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import type { TensorRule } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';

/**
 * The per-expert tensors mlp.experts.<e>.{gate,up,down}_proj and the shared expert's, under the
 * module name each family gives it: `shared_experts` (this layout, ERNIE-4.5-MoE, AFMoE, EXAONE-MoE), `shared_expert`
 * (Qwen2-MoE), `shared_mlp` (Hunyuan-MoE); none (Jamba).
 */
export function perExpertRules(shared?: string): TensorRule[] {
  const experts: TensorRule[] = [
    { name: 'experts.{e}.gate_proj.weight', scope: 'expert', parts: () => ({ gate: id }) },
    { name: 'experts.{e}.up_proj.weight', scope: 'expert', parts: () => ({ up: id }) },
    { name: 'experts.{e}.down_proj.weight', scope: 'expert', parts: () => ({ down: id }) },
  ];
  if (shared === undefined) return experts;
  return [
    ...experts,
    { name: `${shared}.gate_proj.weight`, scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: `${shared}.up_proj.weight`, scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: `${shared}.down_proj.weight`, scope: 'layer', parts: () => ({ shared_down: id }) },
  ];
}

export const spec: LayoutSpec = {
  id: 'hf-per-expert',
  description:
    'HF per-expert mlp.experts.<e>.gate_proj/up_proj/down_proj (Qwen3-MoE, OLMoE, FlexOlmo, DeepSeek-V2/V3/V3.2, GLM4-MoE(-Lite, -DSA), GLM-4.5V, Solar Open, dots.llm1, Cohere2-MoE)',
  source: 'transformers modeling_qwen3_moe.py / modeling_olmoe.py / modeling_deepseek_v3.py / modeling_glm4_moe.py',
  families: [
    'qwen3_moe',
    'olmoe',
    'flex_olmo',
    'deepseek_v3',
    'deepseek_v32',
    'glm4_moe',
    'glm4_moe_lite',
    'glm_moe_dsa',
    'dots1',
    'deepseek_v2',
    'cohere2_moe',
    'glm4v_moe',
    'solar_open',
    // read from transformers 5.17's conversion mappings (fixtures/hf/families3-notes-*.md), confirmed by their fixtures
    'axk2',
    'glm5_next',
    'mellum',
    'qwen3_omni_moe',
    'mimo_v2_flash',
  ],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'gate.e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    ...perExpertRules('shared_experts'),
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
