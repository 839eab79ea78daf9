/**
 * The plan: what a writing command will write, as data. An IR (read.ts) and a target layout spec
 * become TensorPlans — for each output tensor its name, dtype, shape and the slabs its bytes are
 * made of (a byte range of a source tensor, or a buffer assembled from strided IR views) and the
 * per-tensor transforms (transforms.ts) applied on the way. `splitFiles` cuts them into output
 * files; `describePlan` prints it (`--dry-run`); `execute.ts` runs any plan.
 *
 * Expert selection (EP shards) and intermediate slicing (expert TP) are IR transforms
 * (`selectExperts`, `sliceIntermediate` in ir.ts) applied before `planTensors`.
 */
import { expectedPeak } from './execute.js';
import type { TensorStore, TensorInfo } from '../store/types.js';
import { type Dtype, type FloatDtype, FLOAT_DTYPES, byteSize } from '../store/dtypes.js';
import { writerFor } from '../store/writers.js';
import { MoekitError } from '../errors.js';
import { View, layerDims, EXPERT_FIELDS, LAYER_FIELDS, type Dims, type ExpertField, type LayerIR, type ModelIR, type LayerField } from './ir.js';
import {
  canonicalShape,
  declaredShape,
  fieldsOf,
  ruleName,
  slabShape,
  type Field,
  type GateUpOrder,
  type LayoutSpec,
  type SpecOptions,
  type TensorRule,
} from './layout.js';
import { castTransform, type Transform } from './transforms.js';
import type { LayerReport } from './read.js';
import { LAYOUTS } from '../../converters/index.js';
import { foldSharedSlots } from './shared-slots.js';

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const fmt = (s: readonly number[]) => `[${s.join(',')}]`;

/** One slab of an output tensor: a byte range of a source tensor, or a buffer assembled from views. */
export type SlabPlan =
  | { kind: 'range'; store: TensorStore; info: TensorInfo; start: number; end: number }
  | {
      kind: 'assemble';
      dtype: Dtype;
      shape: number[];
      /** each IR view and where it goes in the slab (a view over an empty buffer: geometry only) */
      parts: { src: View; dst: View }[];
    };

export type TensorAction = 'copy' | 'rename' | 'restack' | 'transpose';

export interface TensorPlan {
  name: string;
  /** dtype written (after transforms) */
  dtype: Dtype;
  /** dtype of the slabs as read */
  sourceDtype: Dtype;
  shape: number[];
  nbytes: number;
  action: TensorAction;
  /** source tensors it is made from */
  sources: string[];
  slabs: SlabPlan[];
  transforms: Transform[];
}

export interface FilePlan {
  name: string;
  tensors: TensorPlan[];
  bytes: number;
}

/** A side file of an output checkpoint: JSON written by moekit, or a file copied from the source. */
/** `json` may be a function, called after the tensors are written (files that hold their checksums). */
export type SideFile =
  | { name: string; json: unknown }
  | { name: string; text: string }
  | { name: string; copyFrom: string }
  /** fetched when written (a side file of a model streamed from the Hub) */
  | { name: string; load: () => Promise<Buffer> };

/** One checkpoint folder to write (convert/merge: the output itself; shard: one rank). */
export interface CheckpointPlan {
  /** folder relative to the output root ('' = the root) */
  dir: string;
  /** container format of the weight files (a key of src/store/writers.ts; default safetensors) */
  format?: string;
  files: FilePlan[];
  /** name of the index file, when there are several weight files */
  index?: string;
  metadata?: Record<string, string>;
  sideFiles: SideFile[];
}

export interface Plan {
  outputs: CheckpointPlan[];
  /** slabs assembled concurrently */
  jobs: number;
}

export interface PlanOptions {
  gateUp?: GateUpOrder;
  dtype?: FloatDtype;
  /** transforms applied to every tensor that holds exactly this IR field, before any cast (upcycling's scales) */
  fieldTransforms?: Partial<Record<Field, (dtype: FloatDtype) => Transform>>;
}

export interface TensorsPlan {
  tensors: TensorPlan[];
  layers: LayerReport[];
  gateUp: GateUpOrder | 'separate';
  target: LayoutSpec;
}

/** Per layer dims, checking that every expert has the same shapes and dtypes. */
function checkedDims(l: LayerIR): Dims {
  const d = layerDims(l);
  const e0 = l.experts[0]!;
  l.experts.forEach((e, i) => {
    for (const f of EXPERT_FIELDS) {
      const v = e[f];
      const v0 = e0[f];
      if (!v !== !v0)
        throw new MoekitError('unsupported', `mixed experts in layer ${l.layer}: expert ${i} ${v ? 'has' : 'lacks'} ${f}, expert 0 ${v0 ? 'has' : 'lacks'} it`);
      if (!v || !v0) continue;
      const want = canonicalShape(f, d);
      if (!v.sameShape(v0) || want.some((s, k) => s !== v.shape[k])) {
        throw new MoekitError(
          'unsupported',
          `mixed expert shapes in layer ${l.layer}: expert ${i} ${f} is ${fmt(v.shape)}, expected ${fmt(want)} like expert 0; layouts that stack experts need equal shapes`,
        );
      }
      if (v.dtype !== v0.dtype)
        throw new MoekitError(
          'unsupported',
          `mixed expert dtypes in layer ${l.layer}: expert ${i} ${f} is ${v.dtype}, expert 0 is ${v0.dtype}; convert with --dtype`,
        );
    }
  });
  return d;
}

/** The IR fields a layer holds. */
function layerPresent(l: LayerIR): Set<Field> {
  const s = new Set<Field>();
  for (const f of LAYER_FIELDS) if (l[f]) s.add(f);
  for (const f of EXPERT_FIELDS) if (l.experts[0]?.[f]) s.add(f);
  return s;
}

/** Fields of `present` that `spec` has no place for. */
function uncovered(spec: LayoutSpec, d: Dims, o: SpecOptions, present: Set<Field>): Field[] {
  const cov = new Set<Field>();
  for (const r of spec.rules) for (const f of fieldsOf(r, d, o)) cov.add(f);
  return [...present].filter((f) => !cov.has(f));
}

const FIELD_WORDS: Record<Field, string> = {
  gate: 'expert gate projections',
  up: 'expert up projections',
  down: 'expert down projections',
  gate_bias: 'expert gate biases',
  up_bias: 'expert up biases',
  down_bias: 'expert down biases',
  router: 'router weight',
  router_bias: 'router bias',
  score_bias: 'score-correction bias',
  shared_gate_proj: 'shared-expert gate projection',
  shared_up: 'shared-expert up projection',
  shared_down: 'shared-expert down projection',
  shared_gate: 'shared-expert gate',
  out_bias: 'block output bias',
  router_scale: 'router input scale',
  expert_scale: 'per-expert routing scale',
  pre_norm: 'expert input norm',
  post_norm: 'block output norm',
};

/** A contiguous part read straight from its tensor's bytes. */
const rangeOf = (src: View, dtype: Dtype): SlabPlan | undefined => {
  if (!src.isContiguous() || src.storage.kind !== 'tensor') return undefined;
  const es = byteSize(dtype, [1]);
  return { kind: 'range', store: src.storage.store, info: src.storage.info, start: src.offset * es, end: (src.offset + src.numel) * es };
};

/**
 * A part whose source and destination both run through memory in the same order of their dims, as
 * contiguous views: a transpose of a transpose (GPT-OSS's or Llama4's down_proj [E,I,H] into nemo's
 * down_projs [E,I,H], both seen as the canonical [H,I] transposed) is a plain run of bytes, not a
 * strided copy. Any other part is returned as it is.
 */
function inMemoryOrder(src: View, dst: View): { src: View; dst: View } {
  if (src.isContiguous() && dst.isContiguous()) return { src, dst };
  const order = dst.shape.map((_, k) => k).sort((a, b) => dst.strides[b]! - dst.strides[a]!);
  const s = src.permute(order);
  const d = dst.permute(order);
  return s.isContiguous() && d.isContiguous() ? { src: s, dst: d } : { src, dst };
}

/**
 * How a slab's bytes are produced from its parts: straight byte ranges when every part is a
 * contiguous run of its source tensor and the parts lie end to end in the slab (e.g. gate and up
 * concatenated), so they stream chunk by chunk; otherwise one slab assembled in memory.
 */
function slabOf(shape: number[], dtype: Dtype, parts: { src: View; loc: (v: View) => View }[]): SlabPlan[] {
  const probe = View.ofBuffer(Buffer.alloc(0), dtype, shape);
  const placed = parts.map((p) => inMemoryOrder(p.src, p.loc(probe)));
  let covered = 0;
  for (const p of placed) covered += p.dst.numel;
  if (covered !== numel(shape)) throw new MoekitError('internal', `internal: slab parts cover ${covered} of ${numel(shape)} elements`);
  const inOrder = placed.filter((p) => p.dst.numel > 0).sort((a, b) => a.dst.offset - b.dst.offset);
  const ranges: SlabPlan[] = [];
  let at = 0;
  for (const p of inOrder) {
    const r = p.dst.offset === at && p.dst.isContiguous() ? rangeOf(p.src, dtype) : undefined;
    if (!r) return [{ kind: 'assemble', dtype, shape, parts: placed }];
    ranges.push(r);
    at += p.dst.numel;
  }
  return ranges;
}

const sourceNames = (slabs: SlabPlan[]): string[] => {
  const s = new Set<string>();
  for (const sl of slabs) {
    if (sl.kind === 'range') s.add(sl.info.name);
    else for (const p of sl.parts) s.add(p.src.label);
  }
  return [...s];
};

function actionOf(name: string, slabs: SlabPlan[]): TensorAction {
  const r = slabs[0];
  if (slabs.length === 1 && r?.kind === 'range' && r.start === 0 && r.end === r.info.nbytes) return r.info.name === name ? 'copy' : 'rename';
  const strided = slabs.some((sl) => sl.kind === 'assemble' && sl.parts.some((p) => !p.src.isContiguous() || !p.dst.isContiguous()));
  return strided ? 'transpose' : 'restack';
}

/** A TensorPlan from its slabs, with a cast when `dtype` asks for one. */
function tensorPlan(name: string, shape: number[], dtype: Dtype, slabs: SlabPlan[], cast?: FloatDtype, pre: Transform[] = []): TensorPlan {
  const transforms: Transform[] = [...pre];
  let out = dtype;
  if (cast && cast !== dtype && (FLOAT_DTYPES as readonly string[]).includes(dtype)) {
    transforms.push(castTransform(dtype as FloatDtype, cast));
    out = cast;
  }
  return {
    name,
    dtype: out,
    sourceDtype: dtype,
    shape,
    nbytes: byteSize(out, shape),
    action: actionOf(name, slabs),
    sources: sourceNames(slabs),
    slabs,
    transforms,
  };
}

/** Every output tensor of `ir` written in layout `target`; non-expert tensors pass through under their own names. */
export function planTensors(ir: ModelIR, target: LayoutSpec, opts: PlanOptions = {}): TensorsPlan {
  if (opts.gateUp && !target.gateUp) throw new MoekitError('unsupported', `--gate-up: layout '${target.id}' stores gate and up as separate tensors`);
  if (opts.gateUp && !target.gateUp!.allowed.includes(opts.gateUp)) {
    throw new MoekitError('unsupported', `--gate-up ${opts.gateUp}: layout '${target.id}' only reads ${target.gateUp!.allowed.join('/')} gate/up`);
  }
  if (!target.prefix.includes('{n}') && ir.layers.length > 1)
    throw new MoekitError(
      'unsupported',
      `block prefix '${target.prefix}' has no {n}, so it holds one MoE block; the model has ${ir.layers.length} (layers ${ir.layers.map((l) => l.layer).join(', ')}): give the prefix a {n}`,
    );
  const o: SpecOptions = { gateUp: opts.gateUp ?? target.gateUp?.default ?? 'concat' };
  const root = target.root === 'hf' ? ir.hfRoot : target.root;
  const tensors: TensorPlan[] = [];
  const layers: LayerReport[] = [];
  const carried = { byName: new Map(ir.passthrough.map((p) => [p.info.name, p])), used: new Set<string>() };
  for (const l of ir.layers) {
    const { plans, report } = planLayer(l, target, o, root, opts, carried);
    tensors.push(...plans);
    layers.push(report);
  }
  for (const { store, info } of ir.passthrough) {
    if (carried.used.has(info.name)) continue;
    tensors.push(tensorPlan(info.name, info.shape, info.dtype, [{ kind: 'range', store, info, start: 0, end: info.nbytes }], opts.dtype));
  }
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name))
      throw new MoekitError(
        'unsupported',
        `'${t.name}' would be written twice: a non-expert tensor of the source has the name layout '${target.id}' gives an expert tensor`,
      );
    names.add(t.name);
  }
  tensors.sort((a, b) => naturalCompare(a.name, b.name));
  return { tensors, layers, gateUp: target.gateUp ? o.gateUp : 'separate', target };
}

/** Refuse a layer the target cannot hold losslessly. */
function checkCoverage(l: LayerIR, d: Dims, target: LayoutSpec, o: SpecOptions, present: Set<Field>): void {
  const missing = uncovered(target, d, o, present);
  if (!missing.length) return;
  const alt = LAYOUTS.filter((s) => !s.families && s !== target && uncovered(s, d, { gateUp: s.gateUp?.default ?? 'concat' }, present).length === 0).map(
    (s) => s.id,
  );
  throw new MoekitError(
    'unsupported',
    `cannot convert losslessly to '${target.id}': it has no place for the ${missing.map((f) => FIELD_WORDS[f]).join(', ')} of layer ${l.layer}` +
      (alt.length ? ` (layouts that hold everything: ${alt.join(', ')})` : ''),
  );
}

interface LayerCtx {
  l: LayerIR;
  d: Dims;
  o: SpecOptions;
  target: LayoutSpec;
  root: string;
  present: Set<Field>;
  opts: PlanOptions;
  /** pass-through tensors by name, and those a rule's `rest` took its part from (not written on their own) */
  carried: Carried;
}

interface Carried {
  byName: Map<string, ModelIR['passthrough'][number]>;
  used: Set<string>;
}

/** The part of a layer slab no IR field holds, from the pass-through tensor of the same name (layout.ts TensorRule.rest). */
function restOf(c: LayerCtx, rule: TensorRule, name: string, dt: Dtype): { src: View; loc: (v: View) => View }[] {
  if (!rule.rest) return [];
  const p = c.carried.byName.get(name);
  const want = slabShape(rule, c.d, c.o);
  if (!p || p.info.shape.length !== want.length || p.info.shape.some((s, i) => s !== want[i]) || p.info.dtype !== dt)
    throw new MoekitError(
      'unsupported',
      `cannot write '${name}' in layout '${c.target.id}': part of it holds no field moekit reads (it passes through), and the source has ` +
        (p ? `it as ${p.info.dtype} ${fmt(p.info.shape)}, not ${dt} ${fmt(want)}` : 'no tensor of that name to take it from'),
    );
  c.carried.used.add(name);
  return [{ src: rule.rest(View.ofTensor(p.store, p.info)), loc: rule.rest }];
}

/** The output tensors of one rule of the target spec for one layer (none when the layer lacks its fields). */
function planRule(c: LayerCtx, rule: TensorRule): TensorPlan[] {
  const { l, d, o, target, root, present, opts } = c;
  const parts = rule.parts(d, o);
  const fields = Object.keys(parts) as Field[];
  const have = fields.filter((f) => present.has(f));
  if (have.length === 0) return [];
  if (have.length !== fields.length) {
    throw new MoekitError(
      'unsupported',
      `cannot convert to '${target.id}': its tensor ${rule.name.replace('{e}', '<e>')} holds ${fields.map((f) => FIELD_WORDS[f]).join(' and ')} together, but layer ${l.layer} has only the ${have.map((f) => FIELD_WORDS[f]).join(', ')}`,
    );
  }
  const slab = slabShape(rule, d, o);
  const srcOf = (f: Field, e?: number): View => (e === undefined ? l[f as LayerField]! : l.experts[e]![f as ExpertField]!);
  const dtypeOf = (e?: number): Dtype => {
    const dts = new Set(fields.map((f) => srcOf(f, e).dtype));
    if (dts.size > 1) {
      throw new MoekitError(
        'unsupported',
        `cannot fuse ${fields.join('+')} of layer ${l.layer} into ${rule.name}: their dtypes differ (${[...dts].join(', ')}); convert with --dtype`,
      );
    }
    return [...dts][0]!;
  };
  const slabFor = (dt: Dtype, e?: number, rest: { src: View; loc: (v: View) => View }[] = []): SlabPlan[] =>
    slabOf(slab, dt, [...fields.map((f) => ({ src: srcOf(f, e), loc: parts[f]! })), ...rest]);
  const fx = fields.length === 1 ? opts.fieldTransforms?.[fields[0]!] : undefined;
  const plan = (name: string, shape: number[], dt: Dtype, slabs: SlabPlan[]) =>
    tensorPlan(name, shape, dt, slabs, opts.dtype, fx && (FLOAT_DTYPES as readonly string[]).includes(dt) ? [fx(dt as FloatDtype)] : []);
  if (rule.scope === 'layer') {
    const dt = dtypeOf();
    const name = ruleName(target, rule, root, l.layer);
    return [plan(name, slab, dt, slabFor(dt, undefined, restOf(c, rule, name, dt)))];
  }
  if (rule.scope === 'expert') {
    return Array.from({ length: d.E }, (_, e) => plan(ruleName(target, rule, root, l.layer, e), slab, dtypeOf(e), slabFor(dtypeOf(e), e)));
  }
  const dt = dtypeOf(0);
  return [
    plan(
      ruleName(target, rule, root, l.layer),
      declaredShape(rule, d, o),
      dt,
      l.experts.flatMap((_, e) => slabFor(dt, e)),
    ),
  ];
}

/** The output tensors of one MoE layer in layout `target`. */
function planLayer(
  l: LayerIR,
  target: LayoutSpec,
  o: SpecOptions,
  root: string,
  opts: PlanOptions,
  carried: Carried,
): { plans: TensorPlan[]; report: LayerReport } {
  // the report (moekit.json) describes the layer as the IR holds it; the tensors, the slots a layout stores
  const d = checkedDims(l);
  const lw = target.sharedSlots ? foldSharedSlots(l, target) : l;
  const dw = lw === l ? d : checkedDims(lw);
  const present = layerPresent(lw);
  checkCoverage(lw, dw, target, o, present);
  const plans = target.rules.flatMap((rule) => planRule({ l: lw, d: dw, o, target, root, present, opts, carried }, rule));
  const ident = l.globalIds.every((g, i) => g === i) && l.globalIds.length === d.Er;
  const report: LayerReport = {
    layer: l.layer,
    experts: d.E,
    routerExperts: d.Er,
    intermediate: d.I,
    sharedIntermediate: d.Is,
    gated: d.gated,
    fields: [...layerPresent(l)].sort(),
    ...(ident ? {} : { globalExperts: [...l.globalIds] }),
  };
  return { plans, report };
}

/** Identity plan: every tensor of a store passes through unchanged (a layout converted to itself). */
export function passthroughTensors(store: TensorStore): TensorPlan[] {
  return [...store.tensors.values()]
    .map((info) => tensorPlan(info.name, info.shape, info.dtype, [{ kind: 'range', store, info, start: 0, end: info.nbytes }]))
    .sort((a, b) => naturalCompare(a.name, b.name));
}

/** Cut tensors (in order) into weight files of at most `maxShardSize` bytes, named as the format's writer names them. */
export function splitFiles(tensors: TensorPlan[], maxShardSize?: number, format = 'safetensors', stem = 'model'): { files: FilePlan[]; index?: string } {
  const w = writerFor(format);
  const groups = w.split(tensors, maxShardSize);
  const files = groups.map((g, i) => ({ name: w.fileName(stem, i, groups.length), tensors: g, bytes: g.reduce((a, t) => a + t.nbytes, 0) }));
  return { files, index: w.indexName(stem, files.length) };
}

/** Compare names with digit runs as numbers (layers.2 before layers.10). */
export function naturalCompare(a: string, b: string): number {
  const ra = a.split(/(\d+)/);
  const rb = b.split(/(\d+)/);
  for (let i = 0; i < Math.min(ra.length, rb.length); i++) {
    const x = ra[i]!;
    const y = rb[i]!;
    if (x === y) continue;
    if (i % 2 === 1) return Number(x) - Number(y) || x.length - y.length;
    return x < y ? -1 : 1;
  }
  return ra.length - rb.length;
}

export const planBytes = (p: Plan): number => p.outputs.reduce((a, o) => a + o.files.reduce((b, f) => b + f.bytes, 0), 0);

/** Expected peak memory of running the plan, as the executor will fit it into the default budget (execute.ts fitMemory). */
function expectedPeakMB(p: Plan): number {
  return Math.round(
    Math.max(
      ...p.outputs.map((o) =>
        expectedPeak(
          o.files.flatMap((f) => f.tensors),
          p.jobs,
        ),
      ),
      0,
    ) /
      2 ** 20,
  );
}

/** The plan as JSON for `--dry-run --json`: per output file its tensors, what happens to each, and bytes. */
export function describePlan(p: Plan): unknown {
  return {
    expectedPeakMB: expectedPeakMB(p),
    outputs: p.outputs.map((o) => ({
      dir: o.dir,
      files: o.files.map((f) => ({
        name: f.name,
        bytes: f.bytes,
        tensors: f.tensors.map((t) => ({
          name: t.name,
          dtype: t.dtype,
          shape: t.shape,
          bytes: t.nbytes,
          action: t.action,
          sources: t.sources,
          transforms: t.transforms.map((x) => x.name),
        })),
      })),
      index: o.index ?? null,
      sideFiles: o.sideFiles.map((s) => s.name),
    })),
  };
}
