/**
 * Megatron legacy GroupedMLP (`--to megatron-grouped`): mlp.experts.weight1 [H, E·2I] is the raw
 * memory of [E, H, 2I] — per expert [gate; up]ᵀ — viewed as [H, E·2I] (NOT a column concat of the
 * experts; Megatron-LM issue #909), mlp.experts.weight2 [E·I, H] = stack of downᵀ [E, I, H].
 * GroupedMLP has no expert biases. Layer prefix decoder.layers.<n>.
 * Source: Megatron-LM megatron/core/transformer/moe/experts.py before GroupedMLP's removal
 * (forward: w1 = self.weight1.view(num_local_experts, hidden_size, -1), w2 =
 * self.weight2.view(num_local_experts, -1, hidden_size); gg.ops.gmm(x, w1) so w1 is [in, out]);
 * ../shared/reference/moe-layouts.md.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, T } from '../src/engine/layout.js';
import { megatronRouterAndShared } from './megatron-common.js';

export const spec: LayoutSpec = {
  id: 'megatron-grouped',
  description: 'Megatron legacy GroupedMLP experts.weight1 [H,E·2I] / weight2 [E·I,H] (raw [E,H,2I] / [E,I,H] memory)',
  source: 'Megatron-LM core/transformer/moe/experts.py (GroupedMLP, pre-removal)',
  prefix: '{root}layers.{n}.mlp.',
  root: 'decoder.',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [
    ...megatronRouterAndShared,
    {
      name: 'experts.weight1',
      scope: 'stacked',
      slab: (d) => [d.H, fusedWidth(d)],
      shape: (d) => [d.H, d.E * fusedWidth(d)],
      parts: (d, o) => fusedGateUp(d, o, 1, true),
    },
    { name: 'experts.weight2', scope: 'stacked', slab: (d) => [d.I, d.H], shape: (d) => [d.E * d.I, d.H], parts: () => ({ down: T }) },
  ],
  cannotHold: 'expert biases',
};
