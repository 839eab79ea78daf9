/**
 * Dense (non-MoE) MLP blocks, for verify and for upcycling sources: the names transformers uses for
 * a gated MLP `down(act(gate(x)) · up(x))` — `mlp.{gate,up,down}_proj` (Llama, Mistral, Qwen2/3,
 * Gemma, DeepSeek's first_k_dense_replace layers, GLM4-MoE) and `feed_forward.{gate,up,down}_proj`
 * (Llama4's dense layers), and `block_sparse_moe.{gate,up,down}_proj` (MiniMax-M3's dense layers as saved:
 * its conversion mapping's `.mlp.` ↔ `.block_sparse_moe.` rename covers them; confirmed by fixtures/hf/minimax_m3_vl). Sources:
 * transformers models/llama/modeling_llama.py (LlamaMLP), models/llama4/modeling_llama4.py (Llama4TextMLP),
 * models/minimax_m3_vl/modeling_minimax_m3_vl.py, conversion_mapping.py. Conversions pass these through untouched.
 * Read into the IR's shared-expert fields (a dense MLP is one always-on expert).
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { id } from '../src/engine/layout.js';

const rules = (block: string): LayoutSpec => ({
  id: `dense-${block.replaceAll('_', '-')}`,
  description: `dense MLP ${block}.{gate,up,down}_proj`,
  source: 'transformers modeling_llama.py LlamaMLP / modeling_llama4.py Llama4TextMLP',
  prefix: `{root}layers.{n}.${block}.`,
  root: 'hf',
  rules: [
    { name: 'gate_proj.weight', scope: 'layer', parts: () => ({ shared_gate_proj: id }) },
    { name: 'up_proj.weight', scope: 'layer', parts: () => ({ shared_up: id }) },
    { name: 'down_proj.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
  ],
});

export const DENSE_MLP_SPECS: readonly LayoutSpec[] = [rules('mlp'), rules('feed_forward'), rules('block_sparse_moe')];
