/**
 * MiniMax-M3's text model (minimax_m3_vl) as transformers 5.17 would save it (conversion_mapping.py "minimax_m3_vl",
 * reversed on save: model.language_model. → language_model.model., .mlp. → .block_sparse_moe., gate_up_proj →
 * experts.<e>.w1 / w3, down_proj → w2, gate.e_score_correction_bias → e_score_correction_bias, the fused shared
 * gate_up_proj → gate_proj / up_proj): MiniMax-M2's names under language_model.model.layers.<n>.block_sparse_moe.
 * (router gate.weight [E,H], selection bias e_score_correction_bias [E] on the block, per-expert w1 (gate) / w3 (up)
 * [I,H], w2 (down) [H,I]) plus one ungated shared expert shared_experts.{gate,up,down}_proj (shared_intermediate_size).
 * Sources: transformers models/minimax_m3_vl/modeling_minimax_m3_vl.py (MiniMaxM3VLTopKRouter,
 * MiniMaxM3VLSparseMoeBlock), conversion_mapping.py; names derived in fixtures/hf/families3-notes-b.md and
 * confirmed by transformers' save (fixtures/hf/minimax_m3_vl).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { spec as mixtral } from './hf-mixtral.js';

export const spec: LayoutSpec = {
  id: 'hf-minimax-m3',
  description: 'HF MiniMax-M3 text model: block_sparse_moe.experts.<e>.w1/w3/w2, e_score_correction_bias, block_sparse_moe.shared_experts',
  source: 'transformers modeling_minimax_m3_vl.py',
  families: ['minimax_m3_vl'],
  prefix: mixtral.prefix,
  root: 'hf',
  rules: [
    ...mixtral.rules,
    { name: 'shared_experts.gate_proj.weight', scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: 'shared_experts.up_proj.weight', scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: 'shared_experts.down_proj.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
