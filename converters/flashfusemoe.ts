/**
 * flashfusemoe MoELayer (`--to flashfusemoe`): router gate.weight [E,H], w_up [E, 2I, H]
 * (ffn_dim = 2I rows, first half gate, second half up), w_down [E, H, I]; shared expert
 * shared_expert.w_gate.weight / w_up.weight [Is,H], w_down.weight [H,Is]. EP-sharded files keep
 * these names with experts renumbered from 0.
 * Source: ../shared/reference/moe-layouts.md (flashfusemoe nn.py: MoELayer, _GLUFFN). ASSUMPTIONS:
 * we could not read nn.py's parameter shapes ourselves, so the [out, in] orientation of w_up / w_down
 * is taken from the field guide; MoELayer is a drop-in for an FFN block, so its tensors are placed
 * under the HF layer's mlp. (model.layers.<n>.mlp.w_up).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, id } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'flashfusemoe',
  description: 'flashfusemoe MoELayer mlp.w_up [E,2I,H] (gate first), mlp.w_down [E,H,I], mlp.gate.weight',
  source: 'flashfusemoe nn.py (MoELayer) via moe-layouts.md',
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'w_up', scope: 'stacked', slab: (d) => [fusedWidth(d), d.H], parts: (d, o) => fusedGateUp(d, o, 0, false) },
    { name: 'w_down', scope: 'stacked', slab: (d) => [d.H, d.I], parts: () => ({ down: id }) },
    { name: 'shared_expert.w_gate.weight', scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: 'shared_expert.w_up.weight', scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: 'shared_expert.w_down.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
  ],
  cannotHold: 'expert biases, router bias, score-correction bias, shared-expert gate',
};
