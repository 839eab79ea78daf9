/**
 * Hunyuan-MoE (hunyuan_v1_moe) as transformers 5.17 saves it: per-expert
 * mlp.experts.<e>.{gate,up,down}_proj, router mlp.gate.wg.weight [E, H], one shared MLP
 * mlp.shared_mlp.{gate,up,down}_proj on every token (sized by intermediate_size, like the experts).
 * Sources: transformers models/hunyuan_v1_moe/modeling_hunyuan_v1_moe.py (HunYuanMoEV1Gate,
 * HunYuanMoEV1Moe); fixtures/hf/hunyuan_v1_moe.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-hunyuan',
  description: 'HF Hunyuan-MoE: per-expert gate_proj/up_proj/down_proj, router mlp.gate.wg, shared mlp.shared_mlp',
  source: 'transformers modeling_hunyuan_v1_moe.py',
  families: ['hunyuan_v1_moe'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  rules: [{ name: 'gate.wg.weight', scope: 'layer', parts: () => ({ router: id }) }, ...perExpertRules('shared_mlp')],
  cannotHold: 'expert biases, router bias, score-correction bias, shared-expert gate',
};
