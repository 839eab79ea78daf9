/**
 * Layout specs: the declarative description of how one framework stores a MoE layer.
 *
 * A spec is a list of tensor rules. Each rule names a tensor (after the layer prefix), says
 * whether there is one per expert (`expert`), one holding all experts along a leading dim
 * (`stacked`), or one per layer (`layer`), gives the shape of one slab (one expert's part of the
 * tensor, or the whole layer tensor), and lists the IR fields held in a slab, each located by a
 * chain of view ops on the slab (slice / interleave / transpose). The same chain serves both ways:
 * reading applies it to the source tensor's view to get a canonical IR view; writing applies it
 * to an empty slab buffer to get the strided destination an IR view is copied into.
 */
import type { Dims, ExpertField, LayerField } from './ir.js';
import { MoekitError } from '../errors.js';
import type { View } from './ir.js';

export type GateUpOrder = 'concat' | 'interleaved';
export type Field = ExpertField | LayerField;

export interface SpecOptions {
  /** order of gate and up inside a fused gate/up tensor */
  gateUp: GateUpOrder;
}

export type Locate = (slab: View) => View;

export interface TensorRule {
  /** tensor name after the layer prefix; `{e}` stands for the (local) expert index */
  name: string;
  scope: 'expert' | 'stacked' | 'layer';
  /** shape of one slab; default: the canonical shape of the rule's single field */
  slab?: (d: Dims) => number[];
  /** declared shape of a stacked tensor when it is not [E, ...slab] (raw memory of [E, ...slab]) */
  shape?: (d: Dims) => number[];
  /** IR fields of one slab and where each sits in it (canonical orientation out) */
  parts: (d: Dims, o: SpecOptions) => Partial<Record<Field, Locate>>;
  /**
   * The part of a layer slab that holds no IR field (ERNIE-4.5-VL's bias row 1, the vision experts'): read, the whole
   * tensor also passes through under its own name; written, this part comes from that pass-through tensor, which is
   * then not written on its own. Layouts without the rule keep the pass-through tensor as it is.
   */
  rest?: Locate;
}

export interface LayoutSpec {
  id: string;
  description: string;
  /** where the names, shapes and orders come from */
  source: string;
  /** HF layouts: the model families whose own HF layout this is (`--to hf` picks it) */
  families?: readonly string[];
  /** before every rule name: `{root}` = name root, `{n}` = layer index */
  prefix: string;
  /** root of the names written: 'hf' keeps the model's own HF root (model., language_model.model., ...) */
  root: 'hf' | string;
  /** fused gate/up: the order written by default and the ones the framework can read */
  gateUp?: { default: GateUpOrder; allowed: readonly GateUpOrder[] };
  rules: TensorRule[];
  /** shared experts are stored as extra expert slots after the routed ones (Fast-LLM; engine/shared-slots.ts) */
  sharedSlots?: boolean;
  /**
   * Expert ids at or past the router's expert count are not this layout's experts but pass through (ERNIE-4.5-VL's
   * vision experts E..2E−1 under the text experts' names).
   */
  routedOnly?: boolean;
  /** things this layout cannot hold, for --help and docs (the engine checks coverage itself) */
  cannotHold?: string;
}

/** Canonical shape of an IR field. */
export function canonicalShape(f: Field, d: Dims): number[] {
  switch (f) {
    case 'gate':
    case 'up':
      return [d.I, d.H];
    case 'down':
      return [d.H, d.I];
    case 'gate_bias':
    case 'up_bias':
      return [d.I];
    case 'down_bias':
    case 'out_bias':
    case 'router_scale':
    case 'pre_norm':
    case 'post_norm':
      return [d.H];
    case 'expert_scale':
      return [d.Er];
    case 'router':
      return [d.Er, d.H];
    case 'router_bias':
    case 'score_bias':
      return [d.Er];
    case 'shared_gate_proj':
    case 'shared_up':
      return [d.Is, d.H];
    case 'shared_down':
      return [d.H, d.Is];
    case 'shared_gate':
      return [1, d.H];
  }
}

// ---- named ops for specs -------------------------------------------------------------------

export const id: Locate = (v) => v;
export const T: Locate = (v) => v.T;

/**
 * Half `which` (0 = gate, 1 = up) of a fused gate/up dim of size 2n along `dim`:
 * concat → [gate | up], interleaved → gate at even, up at odd positions.
 */
function half(v: View, dim: number, which: 0 | 1, n: number, order: GateUpOrder): View {
  return order === 'concat' ? v.slice(dim, which * n, (which + 1) * n) : v.slice(dim, which, 2 * n, 2);
}

/**
 * gate and up fused along `dim` of the slab (size 2n when gated, n = up only when not), each
 * transposed afterwards when the framework stores [in, out] (`t`).
 */
export function fusedGateUp(
  d: Dims,
  o: SpecOptions,
  dim: number,
  t: boolean,
  n: number = d.I,
  names: { gate: Field; up: Field } = { gate: 'gate', up: 'up' },
): Partial<Record<Field, Locate>> {
  const post = (v: View) => (t ? v.T : v);
  if (!d.gated) return { [names.up]: (s: View) => post(s) };
  return { [names.gate]: (s: View) => post(half(s, dim, 0, n, o.gateUp)), [names.up]: (s: View) => post(half(s, dim, 1, n, o.gateUp)) };
}

/** Fused gate/up bias [2I] (or [I] up-only when not gated). */
export function fusedBias(d: Dims, o: SpecOptions): Partial<Record<Field, Locate>> {
  if (!d.gated) return { up_bias: id };
  return { gate_bias: (s) => half(s, 0, 0, d.I, o.gateUp), up_bias: (s) => half(s, 0, 1, d.I, o.gateUp) };
}

/** Width of a fused gate/up dim. */
export const fusedWidth = (d: Dims, n: number = d.I): number => (d.gated ? 2 * n : n);

/** Regex for a rule's full name: groups root, n (layer) and e (expert). */
export function ruleRegex(spec: LayoutSpec, rule: TensorRule): RegExp {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const tpl = spec.prefix + rule.name;
  // a prefix without {n} holds one MoE block: layer 0 (an empty group, read as Number('') = 0)
  let re = tpl.includes('{n}') ? '' : '(?<n>)';
  for (const part of tpl.split(/(\{root\}|\{n\}|\{e\})/)) {
    if (part === '{root}') re += '(?<root>(?:[A-Za-z0-9_\\-]+\\.)*?)';
    else if (part === '{n}') re += '(?<n>\\d+)';
    else if (part === '{e}') re += '(?<e>\\d+)';
    else re += esc(part);
  }
  return new RegExp(`^${re}$`);
}

/** Full name of a rule's tensor. */
export function ruleName(spec: LayoutSpec, rule: TensorRule, root: string, layer: number, expert?: number): string {
  return (spec.prefix + rule.name)
    .replace('{root}', root)
    .replace('{n}', String(layer))
    .replace('{e}', expert === undefined ? '{e}' : String(expert));
}

/** IR fields a rule holds under dims `d`. */
export function fieldsOf(rule: TensorRule, d: Dims, o: SpecOptions): Field[] {
  return Object.keys(rule.parts(d, o)) as Field[];
}

/** Shape of one slab of a rule. */
export function slabShape(rule: TensorRule, d: Dims, o: SpecOptions): number[] {
  if (rule.slab) return rule.slab(d);
  const f = fieldsOf(rule, d, o);
  if (f.length !== 1) throw new MoekitError('internal', `internal: rule '${rule.name}' holds ${f.length} fields but has no slab shape`);
  return canonicalShape(f[0]!, d);
}

/** Declared shape of a rule's tensor. */
export function declaredShape(rule: TensorRule, d: Dims, o: SpecOptions): number[] {
  if (rule.scope !== 'stacked') return slabShape(rule, d, o);
  return rule.shape ? rule.shape(d) : [d.E, ...slabShape(rule, d, o)];
}
