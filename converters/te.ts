/**
 * Transformer Engine GroupedLinear / Megatron TEGroupedMLP (`--to te`): per local expert i,
 * mlp.experts.linear_fc1.weight<i> [2I,H] (gate rows then up rows: Megatron chunks the fc1 output in
 * two, first half through the activation), mlp.experts.linear_fc2.weight<i> [H,I], and bias<i>
 * ([2I] / [H]) when biases are enabled. Layer prefix decoder.layers.<n>.
 * Sources: Megatron-LM megatron/core/transformer/moe/experts.py (TEGroupedMLP, glu: torch.chunk(x, 2,
 * dim=-1)); TransformerEngine pytorch/module/grouped_linear.py (weight{i}, bias{i} parameters).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedBias, fusedGateUp, fusedWidth, id } from '../src/engine/layout.js';
import { megatronRouterAndShared } from './megatron-common.js';

export const spec: LayoutSpec = {
  id: 'te',
  description: 'Transformer Engine GroupedLinear experts.linear_fc1.weight<i> [2I,H], linear_fc2.weight<i> [H,I]',
  source: 'Megatron-LM core/transformer/moe/experts.py (TEGroupedMLP); TransformerEngine grouped_linear.py',
  prefix: '{root}layers.{n}.mlp.',
  root: 'decoder.',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [
    ...megatronRouterAndShared,
    { name: 'experts.linear_fc1.weight{e}', scope: 'expert', slab: (d) => [fusedWidth(d), d.H], parts: (d, o) => fusedGateUp(d, o, 0, false) },
    { name: 'experts.linear_fc1.bias{e}', scope: 'expert', slab: (d) => [fusedWidth(d)], parts: (d, o) => fusedBias(d, o) },
    { name: 'experts.linear_fc2.weight{e}', scope: 'expert', parts: () => ({ down: id }) },
    { name: 'experts.linear_fc2.bias{e}', scope: 'expert', parts: () => ({ down_bias: id }) },
  ],
};
