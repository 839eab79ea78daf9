/**
 * HF transformers v5 fused experts (`--to hf-fused`), what save_pretrained(save_original_format=False)
 * and mergekit-moe write for per-expert families: mlp.experts.gate_up_proj [E, 2I, H] = per expert
 * cat(gate, up) along the output rows, mlp.experts.down_proj [E, H, I], router mlp.gate.weight [E,H]
 * (+ mlp.gate.e_score_correction_bias), shared experts mlp.shared_experts.{gate,up,down}_proj.
 * Sources: transformers conversion_mapping.py / core_model_loading.py (MergeModulelist + Concatenate
 * of w1/w3 or gate_proj/up_proj into gate_up_proj, dim=1 of the stacked [E, out, in]);
 * ../shared/reference/moe-layouts.md. Assumption: families whose v5 router keeps the HF name mlp.gate.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, id } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'hf-fused',
  description: 'HF transformers v5 fused mlp.experts.gate_up_proj [E,2I,H] (concatenated), down_proj [E,H,I]',
  source: 'transformers conversion_mapping.py / core_model_loading.py',
  prefix: '{root}layers.{n}.mlp.',
  root: 'hf',
  gateUp: { default: 'concat', allowed: ['concat'] },
  rules: [
    { name: 'gate.weight', scope: 'layer', parts: () => ({ router: id }) },
    { name: 'gate.e_score_correction_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
    { name: 'experts.gate_up_proj', scope: 'stacked', slab: (d) => [fusedWidth(d), d.H], parts: (d, o) => fusedGateUp(d, o, 0, false) },
    { name: 'experts.down_proj', scope: 'stacked', slab: (d) => [d.H, d.I], parts: () => ({ down: id }) },
    { name: 'shared_experts.gate_proj.weight', scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: 'shared_experts.up_proj.weight', scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: 'shared_experts.down_proj.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
  ],
  cannotHold: 'expert biases, router bias, shared-expert gate',
};

/**
 * Mistral-4 (mistral4): the same names as its module holds them (no conversion mapping, so save_pretrained
 * writes them as they are): router mlp.gate.weight [E,H], mlp.experts.gate_up_proj [E,2I,H] ([gate; up] rows),
 * mlp.experts.down_proj [E,H,I], ungated mlp.shared_experts.*; no score-correction bias. Read from
 * transformers models/mistral4/modeling_mistral4.py (Mistral4TopkRouter, Mistral4Experts, Mistral4MoE); names
 * derived in fixtures/hf/families3-notes-a.md and confirmed by transformers' save (fixtures/hf/mistral4).
 */
export const mistral4Spec: LayoutSpec = {
  ...spec,
  id: 'hf-mistral4',
  description: 'HF Mistral-4 mlp.gate.weight, mlp.experts.gate_up_proj [E,2I,H], down_proj [E,H,I], mlp.shared_experts',
  source: 'transformers modeling_mistral4.py',
  families: ['mistral4'],
  rules: spec.rules.filter((r) => r.name !== 'gate.e_score_correction_bias'),
  cannotHold: 'expert biases, router bias, score-correction bias, shared-expert gate',
};
