/**
 * LFM2-MoE (lfm2_moe, Liquid LFM2-8B-A1B) as transformers 5.17 saves it: the MoE block is the decoder layer's
 * feed_forward; per-expert feed_forward.experts.<e>.w1 (gate) / w3 (up) [I, H], w2 (down) [H, I], router
 * feed_forward.gate.weight [E, H], the selection bias feed_forward.expert_bias [E] (a persistent buffer, there
 * when use_expert_bias); no shared experts. The first num_dense_layers layers keep a dense
 * feed_forward.w1/w3/w2; the short-conv and attention operators pass through.
 * Sources: transformers models/lfm2_moe/modeling_lfm2_moe.py (Lfm2MoeSparseMoeBlock, Lfm2MoeExperts,
 * Lfm2MoeDecoderLayer `feed_forward`), conversion_mapping.py ("lfm2_moe": feed_forward.experts.*.w1/w3 ↔
 * gate_up_proj, w2 ↔ down_proj, so saved per expert); fixtures/hf/lfm2_moe.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'hf-lfm2-moe',
  description: 'HF LFM2-MoE: per-expert feed_forward.experts.<e>.w1/w3/w2, router feed_forward.gate, selection bias feed_forward.expert_bias',
  source: 'transformers modeling_lfm2_moe.py',
  families: ['lfm2_moe'],
  prefix: '{root}layers.{n}.feed_forward.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'expert_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    { name: 'experts.{e}.w1.weight', scope: 'expert', parts: () => ({ gate: id }) },
    { name: 'experts.{e}.w3.weight', scope: 'expert', parts: () => ({ up: id }) },
    { name: 'experts.{e}.w2.weight', scope: 'expert', parts: () => ({ down: id }) },
  ],
  cannotHold: 'expert biases, router bias, shared experts',
};
