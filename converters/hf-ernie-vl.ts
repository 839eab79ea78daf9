/**
 * ERNIE-4.5-VL's text MoE as transformers 5.17 would save it (conversion_mapping.py "ernie4_5_vl_moe", reversed on save:
 * model.language_model.layers. → model.layers., text_moe/vision_moe gates Transpose(0, 1), the two statics rows
 * Chunk(0) → one tensor, ErnieFuseAndSplit → one per-expert list): per MoE layer under model.layers.<n>.mlp.
 *  - gate.weight [H, E], the text router saved transposed (read as the IR's [E, H] router);
 *  - moe_statics.e_score_correction_bias [2, E]: row 0 the text tokens' selection bias (the IR's score_bias), row 1
 *    the vision tokens' (`rest`: it passes through, and is written back beside row 0);
 *  - experts.<j>.{gate,up,down}_proj.weight, j < E the text experts (moe_intermediate_size[0]); j = E..2E−1 the vision
 *    experts (moe_intermediate_size[1]) and gate.weight_1 [H, E], the vision router, pass through (`routedOnly`);
 *  - shared_experts.{gate,up,down}_proj.weight (moe_num_shared_experts · moe_intermediate_size[0]).
 * moekit routes text tokens only: vision tokens (token type ≠ 0) go to the vision experts, which it does not read.
 * Sources: transformers models/ernie4_5_vl_moe/modeling_ernie4_5_vl_moe.py (Ernie4_5_VLMoeMoeBlock, its text_moe /
 * vision_moe, Ernie4_5_VLMoeMoeStatics), conversion_mapping.py; names derived in
 * fixtures/hf/families3-notes-b.md section 10 and confirmed by transformers' save (fixtures/hf/ernie4_5_vl_moe).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { T } from '../src/engine/layout.js';
import { perExpertRules } from './hf-per-expert.js';

export const spec: LayoutSpec = {
  id: 'hf-ernie-vl',
  description:
    'HF ERNIE-4.5-VL text MoE: per-expert gate_proj/up_proj/down_proj 0..E−1, router mlp.gate.weight [H,E], bias row 0 of moe_statics [2,E]; vision experts E..2E−1, gate.weight_1 and bias row 1 pass through',
  source: 'transformers modeling_ernie4_5_vl_moe.py',
  families: ['ernie4_5_vl_moe'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  routedOnly: true,
  rules: [
    { name: 'gate.weight', scope: 'layer', slab: (d) => [d.H, d.Er], parts: () => ({ router: T }) },
    {
      name: 'moe_statics.e_score_correction_bias',
      scope: 'layer',
      slab: (d) => [2, d.Er],
      parts: () => ({ score_bias: (v) => v.select(0, 0) }),
      rest: (v) => v.select(0, 1),
    },
    ...perExpertRules('shared_experts'),
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};
