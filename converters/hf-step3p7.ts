/**
 * Step-3.7 (step3p7) text model as its Hub checkpoints hold it and transformers 5.17 would save it (conversion_mapping.py
 * "step3p7", reversed on save: model.language_model.layers. → model.layers., mlp.gate.weight → moe.gate.weight,
 * mlp.gate.e_score_correction_bias → moe.router_bias, mlp.experts.gate_up_proj chunked along dim 1 into
 * moe.gate_proj.weight / moe.up_proj.weight, mlp.experts.down_proj → moe.down_proj.weight, mlp.shared_experts. →
 * share_expert.): router moe.gate.weight [E,H], selection bias moe.router_bias [E], stacked experts
 * moe.gate_proj.weight [E,I,H], moe.up_proj.weight [E,I,H], moe.down_proj.weight [E,H,I], one ungated shared expert
 * share_expert.{gate,up,down}_proj.weight on the decoder layer (share_expert_dim). The vision tower passes through.
 * Sources: transformers models/step3p7/modeling_step3p7.py (Step3p7TopKRouter, Step3p7MoE, Step3p7DecoderLayer),
 * conversion_mapping.py; names derived in fixtures/hf/families3-notes-a.md and confirmed by transformers' save
 * (fixtures/hf/step3p7).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'hf-step3p7',
  description: 'HF Step-3.7: moe.gate.weight, moe.router_bias, stacked moe.gate_proj/up_proj [E,I,H], moe.down_proj [E,H,I], share_expert',
  source: 'transformers modeling_step3p7.py',
  families: ['step3p7'],
  prefix: '{root}layers.{n}.',
  root: 'hf',
  rules: [
    { name: 'moe.gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'moe.router_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    { name: 'moe.gate_proj.weight', scope: 'stacked', parts: () => ({ gate: id }) },
    { name: 'moe.up_proj.weight', scope: 'stacked', parts: () => ({ up: id }) },
    { name: 'moe.down_proj.weight', scope: 'stacked', parts: () => ({ down: id }) },
    { name: 'share_expert.gate_proj.weight', scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: 'share_expert.up_proj.weight', scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: 'share_expert.down_proj.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
