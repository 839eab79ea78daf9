/**
 * Fast-LLM's MoE MLP (`--to fast-llm`; ServiceNow/Fast-LLM fast_llm/layers/decoder/mlp/mixture_of_experts.py
 * MixtureOfExpertMLP, mlp.py, config.py MoEMLPConfig at 7d61a1b, v0.4.0), under decoder.<n>.mlp.:
 *  - router.weight [E, H] (no bias: Fast-LLM's MoE asserts add_linear_biases is off)
 *  - layer_1.weight [E·2I, H]: per expert [gate; up] rows, gate first (the Mixtral converter builds it as
 *    cat(w1_0, w3_0, w1_1, w3_1, …); torch_mlp_activation chunks gate first); [E·I, H] when not gated
 *  - layer_2.weight [E·I, H]: per expert the down projection transposed (cat(w2_e, dim=-1).t())
 *  - router_scale [H], router_per_expert_scale [E], pre_norm.weight / post_norm.weight [H] (optional):
 *    the Gemma-4 router and block norms, which Fast-LLM's Gemma-4 converter maps to these names
 * Shared experts: Fast-LLM stores them as the last S slots of layer_1 / layer_2 (router rows E − S,
 * score 1; mixture_of_experts.py _add_shared_experts). moekit writes an HF shared MLP of width S·I as
 * those S slots and reads them back as one (src/engine/shared-slots.ts); how many slots are shared
 * comes from moekit.json or config.json (the tensors alone cannot tell S slots from a larger I).
 * Non-expert tensors keep their HF names: this is the expert layout, not a whole Fast-LLM checkpoint.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { fusedGateUp, fusedWidth, id, T } from '../src/engine/layout.js';

export const spec: LayoutSpec = {
  id: 'fast-llm',
  description: 'Fast-LLM decoder.<n>.mlp.router.weight, layer_1.weight [E·2I,H] (per expert [gate; up]), layer_2.weight [E·I,H] (downᵀ)',
  source: 'ServiceNow/Fast-LLM fast_llm/layers/decoder/mlp/mixture_of_experts.py, models/gpt/conversion/mixtral.py',
  prefix: '{root}{n}.mlp.',
  root: 'decoder.',
  gateUp: { default: 'concat', allowed: ['concat'] },
  sharedSlots: true,
  rules: [
    { name: 'router.weight', scope: 'layer', parts: () => ({ router: id }) },
    {
      name: 'layer_1.weight',
      scope: 'stacked',
      slab: (d) => [fusedWidth(d), d.H],
      shape: (d) => [d.E * fusedWidth(d), d.H],
      parts: (d, o) => fusedGateUp(d, o, 0, false),
    },
    { name: 'layer_2.weight', scope: 'stacked', slab: (d) => [d.I, d.H], shape: (d) => [d.E * d.I, d.H], parts: () => ({ down: T }) },
    { name: 'router_scale', scope: 'layer', parts: () => ({ router_scale: id }) },
    { name: 'router_per_expert_scale', scope: 'layer', parts: () => ({ expert_scale: id }) },
    { name: 'pre_norm.weight', scope: 'layer', parts: () => ({ pre_norm: id }) },
    { name: 'post_norm.weight', scope: 'layer', parts: () => ({ post_norm: id }) },
  ],
  cannotHold: "expert biases, router bias, score-correction bias, shared-expert gate, a shared expert whose size is not a multiple of the experts'",
};
