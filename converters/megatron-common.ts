/**
 * Router and shared-expert rules shared by the Megatron-Core layouts (te, megatron, megatron-grouped),
 * all under decoder.layers.<n>.mlp.
 * Sources: Megatron-LM megatron/core/transformer/moe/router.py (TopKRouter.weight [E,H]; expert_bias
 * [E] buffer with --moe-router-enable-expert-bias, kept in f32 by Megatron; moekit writes the dtype it
 * reads) and moe/shared_experts.py (SharedExpertMLP: linear_fc1 [2·Is,H] = [gate; up], linear_fc2
 * [H,Is], gate_weight [1,H] when --moe-shared-expert-gate).
 * Assumption: a router bias (GPT-OSS) is stored as mlp.router.bias, as a Linear bias would be.
 */
import type { TensorRule } from '../src/engine/layout.js';
import { fusedGateUp, id } from '../src/engine/layout.js';

export const megatronRouterAndShared: TensorRule[] = [
  { name: 'router.weight', scope: 'layer', parts: () => ({ router: id }) },
  { name: 'router.bias', scope: 'layer', parts: () => ({ router_bias: id }) },
  { name: 'router.expert_bias', scope: 'layer', parts: () => ({ score_bias: id }) },
  {
    name: 'shared_experts.linear_fc1.weight',
    scope: 'layer',
    slab: (d) => [2 * d.Is, d.H],
    // shared experts are always gated in the families moekit knows; Megatron's fc1 is [gate; up]
    parts: (d) => fusedGateUp({ ...d, gated: true }, { gateUp: 'concat' }, 0, false, d.Is, { gate: 'shared_gate_proj', up: 'shared_up' }),
  },
  { name: 'shared_experts.linear_fc2.weight', scope: 'layer', parts: () => ({ shared_down: id }) },
  { name: 'shared_experts.gate_weight', scope: 'layer', parts: () => ({ shared_gate: id }) },
];
