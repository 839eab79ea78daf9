/**
 * HF GPT-OSS: mlp.experts.gate_up_proj [E,H,2I] with gate and up INTERLEAVED along the last dim
 * (gate = columns 0,2,4,…, up = 1,3,5,…) + gate_up_proj_bias [E,2I] (same interleave),
 * mlp.experts.down_proj [E,I,H] + down_proj_bias [E,H], router mlp.router.weight [E,H] + bias [E].
 * Source: transformers models/gpt_oss/modeling_gpt_oss.py (GptOssExperts: gate_up[..., ::2],
 * gate_up[..., 1::2]; x @ gate_up_proj so weights are [in, out]); fixture fixtures/hf/gpt_oss.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedBias, fusedGateUp, fusedWidth, id, T } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'hf-gpt-oss',
  description: 'HF GPT-OSS fused mlp.experts.gate_up_proj [E,H,2I] (interleaved) + biases, down_proj [E,I,H]',
  source: 'transformers modeling_gpt_oss.py',
  families: ['gpt_oss'],
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  gateUp: { default: 'interleaved', allowed: ['interleaved'] },
  rules: [
    { name: 'router.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'router.bias', scope: 'layer', parts: () => ({ router_bias: id }) },
    { name: 'experts.gate_up_proj', scope: 'stacked', slab: (d) => [d.H, fusedWidth(d)], parts: (d, o) => fusedGateUp(d, o, 1, true) },
    { name: 'experts.gate_up_proj_bias', scope: 'stacked', slab: (d) => [fusedWidth(d)], parts: (d, o) => fusedBias(d, o) },
    { name: 'experts.down_proj', scope: 'stacked', slab: (d) => [d.I, d.H], parts: () => ({ down: T }) },
    { name: 'experts.down_proj_bias', scope: 'stacked', slab: (d) => [d.H], parts: () => ({ down_bias: id }) },
  ],
  cannotHold: 'score-correction bias, shared experts',
};
