/**
 * Jamba as transformers 5.17 saves it: the MoE block is the decoder layer's feed_forward (dense layers
 * keep feed_forward.{gate,up,down}_proj): per-expert feed_forward.experts.<e>.{gate,up,down}_proj,
 * router feed_forward.router.weight [E, H]; no shared experts. Mamba and attention layers pass through.
 * Sources: transformers models/jamba/modeling_jamba.py (JambaSparseMoeBlock, JambaDecoderLayer /
 * JambaMambaDecoderLayer `feed_forward`), conversion_mapping.py (saved per expert); fixtures/hf/jamba.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-jamba',
  description: 'HF Jamba: per-expert feed_forward.experts.<e>.gate_proj/up_proj/down_proj, router feed_forward.router',
  source: 'transformers modeling_jamba.py',
  families: ['jamba'],
  prefix: '{root}layers.{n}.feed_forward.',
  root: 'hf',
  rules: [{ name: 'router.weight', scope: 'layer', parts: () => ({ router: id }) }, ...perExpertRules()],
  cannotHold: 'expert biases, router bias, score-correction bias, shared experts',
};
