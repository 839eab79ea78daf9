/**
 * Granite-MoE-Shared (granitemoeshared): Granite-MoE's block_sparse_moe (input_linear [E,2I,H] with
 * [gate; up] rows, output_linear [E,H,I], router.layer [E,H]) plus a shared MLP on the decoder layer
 * beside it, shared_mlp.input_linear.weight [2·Is, H] ([gate; up], gate first) and
 * shared_mlp.output_linear.weight [H, Is], added unweighted. The prefix is the decoder layer because
 * the shared MLP is not inside block_sparse_moe.
 * Granite-4.0-H (granitemoehybrid) has the same block on its mamba and attention layers.
 * Sources: transformers models/granitemoeshared/modeling_granitemoeshared.py (GraniteMoeSharedMLP,
 * GraniteMoeSharedDecoderLayer: moe_hidden_states + shared_mlp(hidden_states)), models/granitemoehybrid/
 * modeling_granitemoehybrid.py (GraniteMoeHybridDecoderLayer, GraniteMoeHybridMoE(GraniteMoeSharedMoE); no
 * conversion mapping: saved as in memory); fixtures/hf/granitemoeshared, granitemoehybrid.
 */
import type { LayoutSpec, TensorRule } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, id } from '../src/engine/layout.js';
import { graniteRules } from './hf-granite.js';

const sharedMlpRules: TensorRule[] = [
  {
    name: 'shared_mlp.input_linear.weight',
    scope: 'layer',
    slab: (d) => [fusedWidth(d, d.Is), d.H],
    parts: (d, o) => fusedGateUp(d, o, 0, false, d.Is, { gate: 'shared_gate_proj', up: 'shared_up' }),
  },
  { name: 'shared_mlp.output_linear.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
];

export const spec: LayoutSpec = {
  id: 'hf-granite-shared',
  description: 'HF Granite-MoE-Shared block_sparse_moe.input_linear/output_linear + shared_mlp.input_linear/output_linear',
  source: 'transformers modeling_granitemoeshared.py',
  families: ['granitemoeshared', 'granitemoehybrid'],
  prefix: '{root}layers.{n}.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [...graniteRules('block_sparse_moe.'), ...sharedMlpRules],
  cannotHold: 'expert biases, router bias, score-correction bias, shared-expert gate',
};

/**
 * Granite-MoE-SWA (granitemoe_swa): the same block with transformers v5's fused expert names, saved as held in
 * memory (no conversion mapping): block_sparse_moe.router.weight [E,H], block_sparse_moe.experts.gate_up_proj
 * [E,2I,H] ([gate; up] rows), experts.down_proj [E,H,I]; the optional shared_mlp as above. Read from
 * modeling_granitemoe_swa.py (GraniteMoeSWATopKRouter, GraniteMoeSWAExperts); names derived in
 * fixtures/hf/families3-notes-a.md and confirmed by transformers' save (fixtures/hf/granitemoe_swa).
 */
export const swaSpec: LayoutSpec = {
  ...spec,
  id: 'hf-granite-swa',
  description: 'HF Granite-MoE-SWA block_sparse_moe.router.weight, experts.gate_up_proj [E,2I,H], experts.down_proj [E,H,I] + shared_mlp',
  source: 'transformers modeling_granitemoe_swa.py',
  families: ['granitemoe_swa'],
  rules: [
    { name: 'block_sparse_moe.router.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'block_sparse_moe.experts.gate_up_proj', scope: 'stacked', slab: (d) => [fusedWidth(d), d.H], parts: (d, o) => fusedGateUp(d, o, 0, false) },
    { name: 'block_sparse_moe.experts.down_proj', scope: 'stacked', slab: (d) => [d.H, d.I], parts: () => ({ down: id }) },
    ...sharedMlpRules,
  ],
};
