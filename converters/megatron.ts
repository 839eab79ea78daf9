/**
 * Megatron-Core SequentialMLP (`--to megatron`): mlp.experts.local_experts.<i>.linear_fc1.weight
 * [2I,H] ([gate; up] rows), .linear_fc2.weight [H,I], .linear_fc1.bias / .linear_fc2.bias unless
 * --disable-bias-linear. Layer prefix decoder.layers.<n>.
 * Source: Megatron-LM megatron/core/transformer/moe/experts.py (SequentialMLP: local_experts =
 * ModuleList of MLP; mlp.py: linear_fc1 / linear_fc2, gated_linear_unit chunks fc1 output in two).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedBias, fusedGateUp, fusedWidth, id } from '../src/engine/layout.js';
import { megatronRouterAndShared } from './megatron-common.js';

export const spec: LayoutSpec = {
  id: 'megatron',
  description: 'Megatron SequentialMLP experts.local_experts.<i>.linear_fc1 [2I,H] / linear_fc2 [H,I]',
  source: 'Megatron-LM core/transformer/moe/experts.py (SequentialMLP)',
  prefix: '{root}layers.{n}.mlp.',
  root: 'decoder.',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [
    ...megatronRouterAndShared,
    { name: 'experts.local_experts.{e}.linear_fc1.weight', scope: 'expert', slab: (d) => [fusedWidth(d), d.H], parts: (d, o) => fusedGateUp(d, o, 0, false) },
    { name: 'experts.local_experts.{e}.linear_fc1.bias', scope: 'expert', slab: (d) => [fusedWidth(d)], parts: (d, o) => fusedBias(d, o) },
    { name: 'experts.local_experts.{e}.linear_fc2.weight', scope: 'expert', parts: () => ({ down: id }) },
    { name: 'experts.local_experts.{e}.linear_fc2.bias', scope: 'expert', parts: () => ({ down_bias: id }) },
  ],
};
