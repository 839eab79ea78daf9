/**
 * Gemma-4 text (gemma4_text; gemma4 under model.language_model.) as transformers 5.17 saves it (no
 * conversion mapping: the module's own names). The router and the experts are children of the decoder
 * layer, beside its dense mlp: router.proj.weight [E, H], router.scale [H], router.per_expert_scale [E],
 * experts.gate_up_proj [E, 2I, H] ([gate; up] rows, gate first), experts.down_proj [E, H, I]; the experts
 * read pre_feedforward_layernorm_2(x) and their sum goes through post_feedforward_layernorm_2, so both
 * norm weights belong to the block here. The dense mlp and the other norms pass through.
 * Sources: transformers models/gemma4/modeling_gemma4.py (Gemma4TextRouter, Gemma4TextExperts,
 * Gemma4TextDecoderLayer); fixtures/hf/gemma4_text.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, id } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'hf-gemma4',
  description: 'HF Gemma-4 router.proj/scale/per_expert_scale, experts.gate_up_proj [E,2I,H], down_proj [E,H,I], pre/post_feedforward_layernorm_2',
  source: 'transformers modeling_gemma4.py',
  families: ['gemma4'],
  prefix: '{root}layers.{n}.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [
    { name: 'router.proj.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'router.scale', scope: 'layer', parts: () => ({ router_scale: id }) },
    { name: 'router.per_expert_scale', scope: 'layer', parts: () => ({ expert_scale: id }) },
    { name: 'experts.gate_up_proj', scope: 'stacked', slab: (d) => [fusedWidth(d), d.H], parts: (d, o) => fusedGateUp(d, o, 0, false) },
    { name: 'experts.down_proj', scope: 'stacked', slab: (d) => [d.H, d.I], parts: () => ({ down: id }) },
    { name: 'pre_feedforward_layernorm_2.weight', scope: 'layer', parts: () => ({ pre_norm: id }) },
    { name: 'post_feedforward_layernorm_2.weight', scope: 'layer', parts: () => ({ post_norm: id }) },
  ],
  cannotHold: 'expert biases, router bias, score-correction bias, shared experts',
};
