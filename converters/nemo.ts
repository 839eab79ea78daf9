/**
 * NeMo Automodel GroupedExperts (`--to nemo`): mlp.experts.gate_and_up_projs [E,H,2I] (stored
 * [in, out]: the forward is x @ W), gate and up CONCATENATED along the last dim for SwiGLU
 * (torch.chunk(…, 2, -1); interleaved on request with --gate-up interleaved, as NeMo does for
 * quick_geglu), mlp.experts.down_projs [E,I,H], optional gate_up_proj_bias [E,2I] / down_proj_bias
 * [E,H]; non-gated experts store mlp.experts.up_projs [E,H,I].
 * Router and shared experts keep the HF names Automodel's state-dict adapters use: mlp.gate.weight,
 * mlp.gate.e_score_correction_bias (moved onto the Gate module), mlp.shared_experts.{gate,up,down}_proj.
 * Sources: nemo_automodel/components/moe/experts.py (GroupedExperts) and its DeepSeek-V3 / Kimi state
 * dict adapters (combined[:, :inter] = w1ᵀ, combined[:, inter:] = w3ᵀ, down_projs[e] = w2ᵀ).
 * Assumptions (not confirmed in the source we could read): the router bias is mlp.gate.bias and a
 * Qwen2-style shared-expert gate is mlp.shared_expert_gate.weight.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedBias, fusedGateUp, fusedWidth, id, T } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'nemo',
  description: 'NeMo Automodel stacked experts.gate_and_up_projs [E,H,2I], down_projs [E,I,H]',
  source: 'nemo_automodel/components/moe/experts.py (GroupedExperts)',
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat', 'interleaved'] },
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'gate.bias', scope: 'layer', parts: () => ({ router_bias: id }) },
    { name: 'gate.e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    { name: 'experts.gate_and_up_projs', scope: 'stacked', slab: (d) => [d.H, 2 * d.I], parts: (d, o) => (d.gated ? fusedGateUp(d, o, 1, true) : {}) },
    { name: 'experts.up_projs', scope: 'stacked', slab: (d) => [d.H, d.I], parts: (d) => (d.gated ? {} : { up: T }) },
    { name: 'experts.gate_up_proj_bias', scope: 'stacked', slab: (d) => [fusedWidth(d)], parts: (d, o) => fusedBias(d, o) },
    { name: 'experts.down_projs', scope: 'stacked', slab: (d) => [d.I, d.H], parts: () => ({ down: T }) },
    { name: 'experts.down_proj_bias', scope: 'stacked', slab: (d) => [d.H], parts: () => ({ down_bias: id }) },
    { name: 'shared_experts.gate_proj.weight', scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: 'shared_experts.up_proj.weight', scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: 'shared_experts.down_proj.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
    { name: 'shared_expert_gate.weight', scope: 'layer', parts: () => ({ shared_gate: id }) },
  ],
};
