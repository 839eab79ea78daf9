/**
 * HF per-expert, Mixtral style: block_sparse_moe.experts.<e>.w1 (gate) / w3 (up) [I,H], w2 (down) [H,I],
 * router block_sparse_moe.gate [E,H]; MiniMax-M2 also block_sparse_moe.e_score_correction_bias [E]
 * (on the block, not on the gate).
 * Sources: transformers models/mixtral/modeling_mixtral.py (MixtralBlockSparseTop2MLP: w1, w3, w2;
 * fixture fixtures/hf/mixtral written by transformers 5.17), models/phimoe/modeling_phimoe.py (same
 * names), MiniMax-M2: GPTQModel models/definitions/minimax_m2.py module tree (block_sparse_moe.gate,
 * block_sparse_moe.e_score_correction_bias, experts.# w1/w3/w2); MiniMax-Text-01: models/minimax/modeling_minimax.py
 * (MiniMaxSparseMoeBlock(MixtralSparseMoeBlock); conversion_mapping.py saves it under block_sparse_moe like Mixtral).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'hf-mixtral',
  description: 'HF per-expert block_sparse_moe.experts.<e>.w1/w3/w2 (Mixtral, PhiMoE, MiniMax-M2, MiniMax-Text-01)',
  source: 'transformers modeling_mixtral.py / modeling_phimoe.py; MiniMax-M2 module tree',
  families: ['mixtral', 'phimoe', 'minimax_m2', 'minimax'],
  prefix: '{root}layers.{n}.block_sparse_moe.',
  root: 'hf',
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    { name: 'experts.{e}.w1.weight', scope: 'expert', parts: () => ({ gate: id }) },
    { name: 'experts.{e}.w3.weight', scope: 'expert', parts: () => ({ up: id }) },
    { name: 'experts.{e}.w2.weight', scope: 'expert', parts: () => ({ down: id }) },
  ],
  cannotHold: 'expert biases, router bias, shared experts',
};
