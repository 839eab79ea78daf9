/**
 * HF Llama4: feed_forward.experts.gate_up_proj [E,H,2I] = [gate | up] CONCATENATED along the last
 * dim, feed_forward.experts.down_proj [E,I,H], router feed_forward.router.weight [E,H], shared expert
 * feed_forward.shared_expert.{gate,up,down}_proj.
 * Source: transformers models/llama4/modeling_llama4.py (Llama4TextExperts: gate_up_proj
 * [num_experts, hidden, 2·expert_dim], gate, up = chunk(2, dim=-1); bmm(x, gate_up_proj));
 * Llama4TextMoe: router, shared_expert). Checkpoints of Llama4ForConditionalGeneration put the text
 * model under language_model.model.; the root is kept as read.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, id, T } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'hf-llama4',
  description: 'HF Llama4 fused feed_forward.experts.gate_up_proj [E,H,2I] (concatenated), down_proj [E,I,H]',
  source: 'transformers modeling_llama4.py',
  families: ['llama4'],
  prefix: '{root}layers.{n}.feed_forward.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [
    { name: 'router.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'experts.gate_up_proj', scope: 'stacked', slab: (d) => [d.H, fusedWidth(d)], parts: (d, o) => fusedGateUp(d, o, 1, true) },
    { name: 'experts.down_proj', scope: 'stacked', slab: (d) => [d.I, d.H], parts: () => ({ down: T }) },
    { name: 'shared_expert.gate_proj.weight', scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: 'shared_expert.up_proj.weight', scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: 'shared_expert.down_proj.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
  ],
  cannotHold: 'expert biases, router bias, score-correction bias, shared-expert gate',
};
