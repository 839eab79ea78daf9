/**
 * HF Granite-MoE: block_sparse_moe.input_linear.weight [E,2I,H] ([gate; up] rows, gate first),
 * block_sparse_moe.output_linear.weight [E,H,I], router block_sparse_moe.router.layer.weight [E,H].
 * Source: transformers models/granitemoe/modeling_granitemoe.py (GraniteMoeParallelExperts weight
 * [num_experts, output_size, input_size]; GraniteMoeMoE: input_linear(…, 2·intermediate),
 * chunk(2, dim=-1) → act(first) · second; GraniteMoeTopKGating.layer).
 */
import type { LayoutSpec, TensorRule } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, id } from '../src/engine/layout.js';

/** Granite's router and stacked experts, names after `at` (Granite-MoE-Shared: 'block_sparse_moe.'); JetMoE's MLP has the same. */
export const graniteRules = (at = ''): TensorRule[] => [
  { name: `${at}router.layer.weight`, scope: 'layer', parts: () => ({ router: id }) },
  { name: `${at}input_linear.weight`, scope: 'stacked', slab: (d) => [fusedWidth(d), d.H], parts: (d, o) => fusedGateUp(d, o, 0, false) },
  { name: `${at}output_linear.weight`, scope: 'stacked', slab: (d) => [d.H, d.I], parts: () => ({ down: id }) },
];

export const spec: LayoutSpec = {
  id: 'hf-granite',
  description: 'HF Granite-MoE block_sparse_moe.input_linear [E,2I,H], output_linear [E,H,I]',
  source: 'transformers modeling_granitemoe.py',
  families: ['granitemoe'],
  prefix: '{root}layers.{n}.block_sparse_moe.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: graniteRules(),
  cannotHold: 'expert biases, router bias, score-correction bias, shared experts',
};
