/**
 * Shared experts kept as extra expert slots after the routed ones, as Fast-LLM stores them
 * (ServiceNow/Fast-LLM fast_llm/layers/decoder/mlp/mixture_of_experts.py at 7d61a1b: the router has
 * `unshared_experts` = experts − shared_experts rows; `_add_shared_experts` appends slots
 * unshared_experts … experts − 1 to every token's top-k with score 1; config.py MoEMLPConfig).
 *
 * The IR holds one shared MLP of width Is (DeepSeek fuses its n_shared_experts into one MLP of width
 * n·I). Written to such a layout it becomes S = Is / I slots of width I: a gated MLP's output is a
 * sum over its intermediate channels, so slot s (channels s·I … (s+1)·I − 1 of gate/up rows and down
 * columns) summed with score 1 computes exactly the wide MLP. Read back, the slots join into one
 * shared MLP again, byte for byte.
 */
import { MoekitError } from '../errors.js';
import { concatView, layerDims, type ExpertIR, type LayerIR } from './ir.js';
import type { LayoutSpec } from './layout.js';

const refuse = (spec: LayoutSpec, l: LayerIR, why: string): never => {
  throw new MoekitError(
    'unsupported',
    `cannot convert to '${spec.id}': it keeps shared experts as expert slots weighted 1, and layer ${l.layer}'s shared expert ${why}`,
  );
};

/** The layer with its shared MLP moved into S = Is / I expert slots after the routed experts (unchanged without a shared MLP). */
export function foldSharedSlots(l: LayerIR, spec: LayoutSpec): LayerIR {
  const { shared_gate_proj: gate, shared_up: up, shared_down: down, ...rest } = l;
  if (!up || !down) return l;
  const e0 = l.experts[0]!;
  // experts with biases cannot be matched by bias-free slots: the target's coverage check names the biases
  if (e0.gate_bias || e0.up_bias || e0.down_bias) return l;
  const { I, Is, gated } = layerDims(l);
  if (l.shared_gate) refuse(spec, l, 'has a sigmoid gate (shared_expert_gate) that no slot can hold');
  if (l.expert_scale) refuse(spec, l, 'would need its own entries in the per-expert routing scale, which the IR sizes to the routed experts');
  if (Is % I !== 0) refuse(spec, l, `has intermediate size ${Is}, not a multiple of the routed experts' ${I}`);
  if (!gate !== !gated) refuse(spec, l, `is ${gate ? '' : 'not '}gated and the routed experts are ${gated ? '' : 'not'}`);
  const slots: ExpertIR[] = [];
  for (let s = 0; s < Is / I; s++) {
    const slot: ExpertIR = { up: up.slice(0, s * I, (s + 1) * I), down: down.slice(1, s * I, (s + 1) * I) };
    if (gate) slot.gate = gate.slice(0, s * I, (s + 1) * I);
    slots.push(slot);
  }
  return { ...rest, experts: [...l.experts, ...slots] };
}

/** The inverse of foldSharedSlots: the last `S` of the layer's experts joined into one shared MLP (globalIds: the routed experts'). */
export function unfoldSharedSlots(l: LayerIR, S: number): LayerIR {
  if (S === 0) return l;
  const E = l.experts.length - S;
  const slots = l.experts.slice(E);
  const out: LayerIR = { ...l, experts: l.experts.slice(0, E) };
  out.shared_up = concatView(
    slots.map((s) => s.up),
    0,
  );
  out.shared_down = concatView(
    slots.map((s) => s.down),
    1,
  );
  if (slots[0]!.gate)
    out.shared_gate_proj = concatView(
      slots.map((s) => s.gate!),
      0,
    );
  return out;
}
