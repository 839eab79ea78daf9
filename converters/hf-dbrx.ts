/**
 * DBRX as transformers 5.17 saves it (no conversion mapping): under transformer.blocks.<n>.ffn.,
 * experts.mlp.w1 (gate) and experts.mlp.v1 (up), each [E·I, H] = per expert [I, H] stacked, and
 * experts.mlp.w2 [E·I, H] = per expert the down projection TRANSPOSED (applied as x_e @ w2[e], so
 * down [H, I] = w2[e]ᵀ); no `.weight` suffix on the three. Router ffn.router.layer.weight [E, H].
 * Sources: transformers models/dbrx/modeling_dbrx.py (DbrxExpertGLU: w1/v1/w2 views [E, I, H],
 * DbrxRouter); fixtures/hf/dbrx.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { T, id } from '../src/engine/layout.js';

const flat = (d: { E: number; I: number; H: number }) => [d.E * d.I, d.H];

export const spec: LayoutSpec = {
  id: 'hf-dbrx',
  description: 'HF DBRX transformer.blocks.<n>.ffn.experts.mlp.w1/v1/w2 [E·I,H] (w2 = downᵀ), router ffn.router.layer',
  source: 'transformers modeling_dbrx.py',
  families: ['dbrx'],
  prefix: '{root}blocks.{n}.ffn.',
  root: 'hf',
  rules: [
    { name: 'router.layer.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'experts.mlp.w1', scope: 'stacked', shape: flat, slab: (d) => [d.I, d.H], parts: () => ({ gate: id }) },
    { name: 'experts.mlp.v1', scope: 'stacked', shape: flat, slab: (d) => [d.I, d.H], parts: () => ({ up: id }) },
    { name: 'experts.mlp.w2', scope: 'stacked', shape: flat, slab: (d) => [d.I, d.H], parts: () => ({ down: T }) },
  ],
  cannotHold: 'expert biases, router bias, score-correction bias, shared experts',
};
