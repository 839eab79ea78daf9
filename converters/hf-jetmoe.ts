/**
 * JetMoE's MLP experts as transformers 5.17 saves them (no conversion mapping: the module's own names):
 * mlp.input_linear.weight [E, 2I, H] ([gate; up] rows per expert, gate first: chunk(2, dim=-1)),
 * mlp.output_linear.weight [E, H, I], router mlp.router.layer.weight [E, H], and mlp.bias [H] added to the
 * block's output once per token. The attention experts (self_attention.experts.*) pass through untouched.
 * Sources: transformers models/jetmoe/modeling_jetmoe.py (JetMoeParallelExperts, JetMoeTopKGating,
 * JetMoeMoE); fixtures/hf/jetmoe.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { graniteRules } from './hf-granite.js';

export const spec: LayoutSpec = {
  id: 'hf-jetmoe',
  description: 'HF JetMoE mlp.input_linear [E,2I,H], mlp.output_linear [E,H,I], router mlp.router.layer, output bias mlp.bias',
  source: 'transformers modeling_jetmoe.py',
  families: ['jetmoe'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [...graniteRules(), { name: 'bias', scope: 'layer', parts: () => ({ out_bias: id }) }],
  cannotHold: 'expert biases, router bias, score-correction bias, shared experts',
};
