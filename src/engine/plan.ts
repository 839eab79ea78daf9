/**
 * The generic streaming planner: checkpoint + detected source spec → IR → target spec → WriteEntry[].
 *
 * - Non-expert tensors pass through byte-for-byte (streamed in pooled chunks).
 * - Target tensors are produced slab by slab (one expert's part of a stacked tensor, one per-expert
 *   tensor, or one layer tensor); a stacked [E, ...] tensor is never materialised whole.
 * - A slab that is a plain contiguous range of one source tensor streams straight from it; other
 *   slabs are assembled in a pooled buffer by copying each IR view into its strided place.
 * - Slabs are prepared ahead in write order (across tensors), at most `jobs` at a time (p-limit), so memory stays at
 *   about (jobs + 2) × the largest slab.
 *
 * Expert selection (EP shards) and intermediate slicing (expert TP) are IR transforms
 * (`selectExperts`, `sliceIntermediate` in ir.ts) applied between `readIR` and `planWrite`.
 */
import { join } from 'node:path';
import pLimit from 'p-limit';
import type { TensorStore, TensorInfo } from '../store/types.js';
import { readJsonIfExists } from '../store/safetensors/reader.js';
import type { WriteEntry } from '../store/safetensors/writer.js';
import type { Chunk } from '../store/pool.js';
import { sharedPool } from '../store/pool.js';
import { type Dtype, type FloatDtype, FLOAT_DTYPES, dtypeSize } from '../store/dtypes.js';
import { castFloat } from './cast.js';
import { MoekitError } from '../errors.js';
import { familyFacts, type Routing, type Activation } from '../families/index.js';
import {
  View,
  allocAligned,
  copyView,
  layerDims,
  EXPERT_FIELDS,
  LAYER_FIELDS,
  type Dims,
  type ExpertIR,
  type LayerIR,
  type ModelIR,
  type ExpertField,
  type LayerField,
} from './ir.js';
import { canonicalShape, ruleName, ruleRegex, type Field, type GateUpOrder, type LayoutSpec, type SpecOptions, type TensorRule } from './layout.js';
import { LAYOUTS, hfLayoutFor, layoutById, TARGET_NAMES } from '../../converters/index.js';

const isExpertField = (f: string): f is ExpertField => (EXPERT_FIELDS as readonly string[]).includes(f);

// ---- metadata --------------------------------------------------------------------------------

/** moekit.json: what a converted checkpoint is, so reading it back needs nothing else. */
export interface MoekitJson {
  format: 'moekit';
  version: 1;
  family: string;
  modelType: string;
  layout: string;
  gateUp: GateUpOrder | 'separate';
  gated: boolean;
  hfRoot: string;
  dims: { hiddenSize: number; numExperts: number; moeIntermediateSize: number; sharedIntermediateSize: number };
  routing: Routing | null;
  activation: Activation | null;
  layers: LayerReport[];
  source: { layout: string };
}

export interface LayerReport {
  layer: number;
  experts: number;
  routerExperts: number;
  intermediate: number;
  sharedIntermediate: number;
  gated: boolean;
  fields: string[];
  /** global expert ids when the file holds a subset (EP shard) */
  globalExperts?: number[];
}

export interface ModelMeta {
  family: string;
  modelType: string;
  routing: Routing | null;
  activation: Activation | null;
  config?: Record<string, unknown>;
  moekit?: MoekitJson;
}

export async function loadMeta(ck: TensorStore): Promise<ModelMeta> {
  const config = await ck.config();
  const mk = (await readJsonIfExists(join(ck.dir, 'moekit.json'))) as MoekitJson | undefined;
  if (mk && (mk.format !== 'moekit' || typeof mk.layout !== 'string' || typeof mk.family !== 'string')) {
    throw new MoekitError('unsupported', `${join(ck.dir, 'moekit.json')}: not a moekit.json (format/layout/family missing)`);
  }
  if (mk) return { family: mk.family, modelType: mk.modelType, routing: mk.routing, activation: mk.activation, config, moekit: mk };
  if (config) {
    const f = familyFacts(config);
    return { family: f.family, modelType: f.modelType, routing: f.known ? f.routing : null, activation: f.activation, config };
  }
  return { family: 'unknown', modelType: '', routing: null, activation: null };
}

// ---- detection -------------------------------------------------------------------------------

interface Compiled {
  rule: TensorRule;
  re: RegExp;
}
const compiledCache = new Map<LayoutSpec, Compiled[]>();
function compiled(spec: LayoutSpec): Compiled[] {
  let c = compiledCache.get(spec);
  if (!c) compiledCache.set(spec, (c = spec.rules.map((rule) => ({ rule, re: ruleRegex(spec, rule) }))));
  return c;
}

/** How many tensors of the checkpoint a spec's expert rules (and all its rules) claim. */
function claims(spec: LayoutSpec, names: string[]): { experts: number; all: number } {
  let experts = 0;
  let all = 0;
  for (const n of names) {
    for (const c of compiled(spec)) {
      if (c.re.test(n)) {
        all++;
        if (c.rule.scope !== 'layer') experts++;
        break;
      }
    }
  }
  return { experts, all };
}

/** The layout a checkpoint's tensors are in (moekit.json's word first), or undefined if no spec claims any expert tensor. */
export function detectLayout(names: string[], meta: ModelMeta): LayoutSpec | undefined {
  if (meta.moekit) {
    const s = layoutById(meta.moekit.layout);
    if (s && claims(s, names).experts > 0) return s;
  }
  let best: { spec: LayoutSpec; experts: number; all: number } | undefined;
  for (const spec of LAYOUTS) {
    if (spec.families && meta.family !== 'unknown' && !spec.families.includes(meta.family) && hfLayoutFor(meta.family)) continue;
    const c = claims(spec, names);
    if (c.experts === 0) continue;
    if (!best || c.experts > best.experts || (c.experts === best.experts && c.all > best.all)) best = { spec, ...c };
  }
  return best?.spec;
}

/**
 * Experts per layer counted from names alone (per-expert ids, or a stacked tensor's leading dim),
 * for checkpoints whose experts cannot be read as plain tensors (quantized storage).
 */
export function claimedExperts(spec: LayoutSpec, tensors: TensorInfo[]): Map<number, number> {
  const ids = new Map<number, Set<number>>();
  const lead = new Map<number, number>();
  for (const t of tensors) {
    for (const c of compiled(spec)) {
      const m = c.re.exec(t.name);
      if (!m) continue;
      const n = Number(m.groups!.n);
      if (m.groups!.e !== undefined) {
        let s = ids.get(n);
        if (!s) ids.set(n, (s = new Set()));
        s.add(Number(m.groups!.e));
      } else if (c.rule.scope === 'stacked' && !c.rule.shape) lead.set(n, t.shape[0]!);
      break;
    }
  }
  const out = new Map<number, number>(lead);
  for (const [n, s] of ids) out.set(n, s.size);
  return out;
}

/** Resolve `--to`: 'hf' = the family's own HF layout. */
export function resolveTarget(name: string, meta: ModelMeta, source: LayoutSpec | undefined): LayoutSpec {
  if (name === 'hf') {
    const s = hfLayoutFor(meta.family) ?? (source?.families ? source : undefined);
    if (!s) {
      throw new MoekitError(
        'unsupported',
        meta.family === 'unknown'
          ? 'cannot tell the model family (no config.json or moekit.json next to the checkpoint), so --to hf has no layout; add the HF config.json'
          : `family '${meta.family}' has no HF MoE layout moekit knows (known: ${LAYOUTS.flatMap((l) => l.families ?? []).join(', ')})`,
      );
    }
    return s;
  }
  const s = layoutById(name);
  if (!s || s.families) throw new MoekitError('unsupported', `unknown layout '${name}' (known: ${TARGET_NAMES.join(', ')})`);
  return s;
}

/** Quantized storage that moekit can pass through but not re-layout. */
export function quantizedTensors(ck: TensorStore): string | undefined {
  const ts = [...ck.tensors.values()];
  const f8 = ts.find((t) => t.dtype.startsWith('F8_'));
  if (f8) return `FP8: ${f8.name} is ${f8.dtype}`;
  const checks: [RegExp, string][] = [
    [/_blocks$/, 'MXFP4'],
    [/_scale_inv$|weight_scale$/, 'block-scaled'],
    [/weight_packed$/, 'packed int4'],
  ];
  for (const [re, what] of checks) {
    const t = ts.find((x) => re.test(x.name));
    if (t) return `${what}: ${t.name}`;
  }
  return undefined;
}

// ---- reading a spec into the IR --------------------------------------------------------------

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const fmt = (s: readonly number[]) => `[${s.join(',')}]`;

function fieldsOf(rule: TensorRule, d: Dims, o: SpecOptions): Field[] {
  return Object.keys(rule.parts(d, o)) as Field[];
}

function slabShape(rule: TensorRule, d: Dims, o: SpecOptions): number[] {
  if (rule.slab) return rule.slab(d);
  const f = fieldsOf(rule, d, o);
  if (f.length !== 1) throw new MoekitError('internal', `internal: rule '${rule.name}' holds ${f.length} fields but has no slab shape`);
  return canonicalShape(f[0]!, d);
}

function declaredShape(rule: TensorRule, d: Dims, o: SpecOptions): number[] {
  if (rule.scope !== 'stacked') return slabShape(rule, d, o);
  return rule.shape ? rule.shape(d) : [d.E, ...slabShape(rule, d, o)];
}

interface Match {
  rule: TensorRule;
  info: TensorInfo;
  e?: number;
}

export interface ReadOptions {
  /** order of fused gate/up in the source (default: moekit.json's, else the spec's default) */
  gateUp?: GateUpOrder;
}

/** Read the expert tensors of a checkpoint in layout `spec` into the canonical IR. */
export function readIR(ck: TensorStore, spec: LayoutSpec, meta: ModelMeta, ropts: ReadOptions = {}): ModelIR {
  const rules = compiled(spec);
  const layers = new Map<number, { root: string; matches: Match[] }>();
  const passthrough: TensorInfo[] = [];
  for (const info of ck.tensors.values()) {
    let hit = false;
    for (const c of rules) {
      const m = c.re.exec(info.name);
      if (!m) continue;
      const n = Number(m.groups!.n);
      let l = layers.get(n);
      if (!l) layers.set(n, (l = { root: m.groups!.root ?? '', matches: [] }));
      l.matches.push({ rule: c.rule, info, e: m.groups!.e === undefined ? undefined : Number(m.groups!.e) });
      hit = true;
      break;
    }
    if (!hit) passthrough.push(info);
  }
  const gateUp: GateUpOrder = ropts.gateUp ?? (meta.moekit?.layout === spec.id && meta.moekit.gateUp !== 'separate' ? meta.moekit.gateUp : (spec.gateUp?.default ?? 'concat'));
  const o: SpecOptions = { gateUp };
  const out: LayerIR[] = [];
  let hfRoot: string | undefined;
  for (const [n, l] of [...layers].sort((a, b) => a[0] - b[0])) {
    if (spec.root === 'hf') hfRoot ??= l.root;
    out.push(readLayer(ck, n, l.matches, spec, o, meta));
  }
  if (out.length === 0) throw new MoekitError('unsupported', `no tensors of layout '${spec.id}' found`);
  return {
    family: meta.family,
    modelType: meta.modelType,
    routing: meta.routing,
    activation: meta.activation,
    hfRoot: hfRoot ?? meta.moekit?.hfRoot ?? 'model.',
    layers: out,
    passthrough,
  };
}

function readLayer(ck: TensorStore, n: number, matches: Match[], spec: LayoutSpec, o: SpecOptions, meta: ModelMeta): LayerIR {
  const probe: Dims = { E: 1, Er: 1, H: 1, I: 1, Is: 1, gated: true };
  const has = (f: Field, d: Dims) => matches.some((m) => fieldsOf(m.rule, d, o).includes(f));
  const router = matches.find((m) => has('router', probe) && fieldsOf(m.rule, probe, o).includes('router'));
  if (!router) throw new MoekitError('unsupported', `layer ${n}: expert tensors of layout '${spec.id}' but no router tensor (${ruleName(spec, spec.rules.find((r) => fieldsOf(r, probe, o).includes('router'))!, '…', n)})`);
  const [Er, H] = router.info.shape as [number, number];
  // gated or not: the hypothesis under which every matched expert rule holds something and a
  // standalone gate tensor is present exactly when gated
  const layerMeta = meta.moekit?.layers?.find((x) => x.layer === n);
  const prefer = layerMeta?.gated ?? meta.moekit?.gated ?? true;
  let gated: boolean | undefined;
  for (const h of [prefer, !prefer]) {
    const d = { ...probe, gated: h };
    const expertRules = matches.filter((m) => m.rule.scope !== 'layer');
    if (expertRules.some((m) => fieldsOf(m.rule, d, o).length === 0)) continue;
    if (expertRules.some((m) => fieldsOf(m.rule, d, o).includes('gate')) !== h) continue;
    gated = h;
    break;
  }
  if (gated === undefined) throw new MoekitError('unsupported', `layer ${n}: the expert tensors of layout '${spec.id}' are neither a complete gated nor a non-gated set`);
  // number of experts held
  const ids = new Set(matches.filter((m) => m.e !== undefined).map((m) => m.e!));
  let E: number;
  if (ids.size > 0) {
    E = Math.max(...ids) + 1;
    if (ids.size !== E) throw new MoekitError('unsupported', `layer ${n}: expert ids are not 0..${E - 1} (found ${ids.size} of them); a shard must be renumbered locally`);
  } else {
    const st = matches.find((m) => m.rule.scope === 'stacked' && !m.rule.shape);
    E = st ? st.info.shape[0]! : (layerMeta?.experts ?? Er);
  }
  const d: Dims = { E, Er, H, I: 1, Is: 1, gated };
  const solve = (field: Field, key: 'I' | 'Is'): number => {
    const m = matches.find((x) => fieldsOf(x.rule, d, o).includes(field));
    if (!m) return 0;
    const unit = numel(declaredShape(m.rule, { ...d, [key]: 1 }, o));
    const v = numel(m.info.shape) / unit;
    if (!Number.isInteger(v) || v < 1) throw new MoekitError('unsupported', `layer ${n}: '${m.info.name}' ${fmt(m.info.shape)} does not fit layout '${spec.id}' with ${E} experts, hidden ${H}`);
    return v;
  };
  d.I = solve('up', 'I');
  d.Is = solve('shared_up', 'Is');
  if (d.I === 0) throw new MoekitError('unsupported', `layer ${n}: no up-projection tensor of layout '${spec.id}'`);
  const experts: Partial<ExpertIR>[] = Array.from({ length: E }, () => ({}));
  const lf: Partial<Record<LayerField, View>> = {};
  for (const m of matches) {
    const want = declaredShape(m.rule, d, o);
    if (want.length !== m.info.shape.length || want.some((s, i) => s !== m.info.shape[i])) {
      throw new MoekitError('unsupported', `mixed expert shapes: '${m.info.name}' is ${fmt(m.info.shape)}, expected ${fmt(want)} (layer ${n}: E=${E}, H=${H}, I=${d.I}${d.Is ? `, shared I=${d.Is}` : ''})`);
    }
    const parts = Object.entries(m.rule.parts(d, o)) as [Field, (v: View) => View][];
    const slab = slabShape(m.rule, d, o);
    const whole = View.ofTensor(ck, m.info);
    if (m.rule.scope === 'layer') {
      const v = whole.reshape(slab);
      for (const [f, loc] of parts) lf[f as LayerField] = loc(v);
    } else if (m.rule.scope === 'expert') {
      const v = whole.reshape(slab);
      for (const [f, loc] of parts) (experts[m.e!] as Record<string, View>)[f] = loc(v);
    } else {
      const all = whole.reshape([E, ...slab]);
      for (let e = 0; e < E; e++) {
        const v = all.select(0, e);
        for (const [f, loc] of parts) (experts[e] as Record<string, View>)[f] = loc(v);
      }
    }
  }
  const need: ExpertField[] = gated ? ['gate', 'up', 'down'] : ['up', 'down'];
  experts.forEach((e, i) => {
    for (const f of need) if (!e[f]) throw new MoekitError('unsupported', `layer ${n}: expert ${i} has no ${f} tensor in layout '${spec.id}'`);
  });
  return { layer: n, ...lf, experts: experts as ExpertIR[], globalIds: layerMeta?.globalExperts ?? experts.map((_, i) => i) };
}

// ---- writing the IR in a target spec ---------------------------------------------------------

export interface PlanOptions {
  gateUp?: GateUpOrder;
  dtype?: FloatDtype;
  /** slabs prepared concurrently (default 4) */
  jobs?: number;
}

export interface Plan {
  entries: WriteEntry[];
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
      if (!v !== !v0) throw new MoekitError('unsupported', `mixed experts in layer ${l.layer}: expert ${i} ${v ? 'has' : 'lacks'} ${f}, expert 0 ${v0 ? 'has' : 'lacks'} it`);
      if (!v || !v0) continue;
      const want = canonicalShape(f, d);
      if (!v.sameShape(v0) || want.some((s, k) => s !== v.shape[k])) {
        throw new MoekitError('unsupported', `mixed expert shapes in layer ${l.layer}: expert ${i} ${f} is ${fmt(v.shape)}, expected ${fmt(want)} like expert 0; layouts that stack experts need equal shapes`);
      }
      if (v.dtype !== v0.dtype) throw new MoekitError('unsupported', `mixed expert dtypes in layer ${l.layer}: expert ${i} ${f} is ${v.dtype}, expert 0 is ${v0.dtype}; convert with --dtype`);
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
};

/** One slab of a target tensor: a byte range of a source tensor, or a buffer to assemble. */
interface Slab {
  raw?: { info: TensorInfo; start: number; end: number };
  build?: () => Promise<Buffer>;
  /** position in the global assembly queue */
  g?: number;
  taken?: boolean;
}

interface SlabbedEntry extends WriteEntry {
  slabs: Slab[];
}

interface SlabPart {
  src: View;
  loc: (v: View) => View;
}

/** A pool of slab buffers by size, so a long run recycles warm memory. */
class SlabPool {
  private free = new Map<number, Buffer[]>();
  acquire(n: number): Buffer {
    return this.free.get(n)?.pop() ?? allocAligned(n);
  }
  release(b: Buffer): void {
    let l = this.free.get(b.byteLength);
    if (!l) this.free.set(b.byteLength, (l = []));
    if (l.length < 8) l.push(b);
  }
}

export function planWrite(ck: TensorStore, ir: ModelIR, target: LayoutSpec, opts: PlanOptions = {}): Plan {
  if (opts.gateUp && !target.gateUp) throw new MoekitError('unsupported', `--gate-up: layout '${target.id}' stores gate and up as separate tensors`);
  if (opts.gateUp && !target.gateUp!.allowed.includes(opts.gateUp)) {
    throw new MoekitError('unsupported', `--gate-up ${opts.gateUp}: layout '${target.id}' only reads ${target.gateUp!.allowed.join('/')} gate/up`);
  }
  const o: SpecOptions = { gateUp: opts.gateUp ?? target.gateUp?.default ?? 'concat' };
  const root = target.root === 'hf' ? ir.hfRoot : target.root;
  const limit = pLimit(Math.max(1, opts.jobs ?? 4));
  const window = Math.max(1, opts.jobs ?? 4);
  const pool = new SlabPool();
  const cast = (dt: Dtype): Dtype => (opts.dtype && (FLOAT_DTYPES as readonly string[]).includes(dt) ? opts.dtype : dt);
  const entries: SlabbedEntry[] = [];
  const layers: LayerReport[] = [];

  /** Produce one slab: a raw stream from the source, or an assembled buffer. */
  const slabSource = (shape: number[], dtype: Dtype, parts: SlabPart[]): Slab => {
    const es = dtypeSize(dtype);
    const n = numel(shape) * es;
    const probe = View.ofBuffer(Buffer.alloc(0), dtype, shape);
    let covered = 0;
    for (const p of parts) covered += p.loc(probe).numel;
    if (covered !== numel(shape)) throw new MoekitError('internal', `internal: slab parts cover ${covered} of ${numel(shape)} elements`);
    if (parts.length === 1) {
      const p = parts[0]!;
      const dst = p.loc(probe);
      if (dst.offset === 0 && dst.isContiguous() && p.src.isContiguous() && p.src.storage.kind === 'tensor') {
        return { raw: { info: p.src.storage.info, start: p.src.offset * es, end: (p.src.offset + p.src.numel) * es } };
      }
    }
    return {
      build: async () => {
        const buf = pool.acquire(n);
        const slab = View.ofBuffer(buf, dtype, shape);
        for (const p of parts) await copyView(p.src, p.loc(slab));
        return buf;
      },
    };
  };

  const toChunk = (buf: Buffer, from: Dtype, release?: () => void): Chunk => {
    const to = cast(from);
    if (to === from) return { data: buf, release };
    const out = castFloat(buf, from as FloatDtype, to as FloatDtype);
    release?.();
    return { data: out };
  };

  /** A byte range of a source tensor in pooled chunks, with `readahead` reads in flight (reads overlap writes). */
  async function* rawChunks(info: TensorInfo, start: number, end: number, readahead = 3): AsyncGenerator<Chunk> {
    const pending: { buf: Buffer; p: Promise<Buffer> }[] = [];
    let pos = start;
    const issue = () => {
      const e = Math.min(end, pos + sharedPool.chunkSize);
      const buf = sharedPool.acquire();
      const p = ck.read(info, pos, e, buf);
      p.catch(() => undefined); // awaited below
      pending.push({ buf, p });
      pos = e;
    };
    try {
      while (pos < end && pending.length < readahead) issue();
      while (pending.length) {
        const { buf, p } = pending[0]!;
        const data = await p;
        pending.shift();
        if (pos < end) issue();
        yield toChunk(data, info.dtype, () => sharedPool.release(buf));
      }
    } finally {
      // an abandoned stream: let in-flight reads finish, then recycle their buffers
      for (const { buf, p } of pending.splice(0)) void p.then(() => sharedPool.release(buf), () => sharedPool.release(buf));
    }
  }

  /**
   * Slabs to assemble, in write order across all entries (numbered after the entries are sorted).
   * Asking for slab g starts slabs g..g+window-1, so the next tensors' slabs are being read and
   * assembled while the current one is written, across tensor boundaries too.
   */
  const queue: Slab[] = [];
  const started = new Map<number, Promise<Buffer>>();
  const want = (g: number): Promise<Buffer> => {
    for (let k = g; k < Math.min(queue.length, g + window); k++) {
      if (started.has(k) || queue[k]!.taken) continue;
      const p = limit(queue[k]!.build!);
      p.catch(() => undefined); // surfaced when awaited
      started.set(k, p);
    }
    const p = started.get(g) ?? limit(queue[g]!.build!); // a source read twice rebuilds its slabs
    started.delete(g);
    queue[g]!.taken = true;
    return p;
  };

  /** An entry made of slabs in order. */
  const slabbedEntry = (name: string, shape: number[], dtype: Dtype, slabs: Slab[]): SlabbedEntry => ({
    name,
    dtype: cast(dtype),
    shape,
    slabs,
    source: async function* () {
      for (const s of slabs) {
        if (s.raw) {
          yield* rawChunks(s.raw.info, s.raw.start, s.raw.end);
        } else {
          const buf = await want(s.g!);
          yield toChunk(buf, dtype, () => pool.release(buf));
        }
      }
    },
  });

  for (const l of ir.layers) {
    const d = checkedDims(l);
    const present = layerPresent(l);
    const missing = uncovered(target, d, o, present);
    if (missing.length) {
      const alt = LAYOUTS.filter((s) => !s.families && s !== target && uncovered(s, d, { gateUp: s.gateUp?.default ?? 'concat' }, present).length === 0).map((s) => s.id);
      throw new MoekitError('unsupported', `cannot convert losslessly to '${target.id}': it has no place for the ${missing.map((f) => FIELD_WORDS[f]).join(', ')} of layer ${l.layer}` +
          (alt.length ? ` (layouts that hold everything: ${alt.join(', ')})` : ''),
      );
    }
    for (const rule of target.rules) {
      const parts = rule.parts(d, o);
      const fields = Object.keys(parts) as Field[];
      if (fields.length === 0) continue;
      const have = fields.filter((f) => present.has(f));
      if (have.length === 0) continue;
      if (have.length !== fields.length) {
        throw new MoekitError('unsupported', `cannot convert to '${target.id}': its tensor ${rule.name.replace('{e}', '<e>')} holds ${fields.map((f) => FIELD_WORDS[f]).join(' and ')} together, but layer ${l.layer} has only the ${have.map((f) => FIELD_WORDS[f]).join(', ')}`,
        );
      }
      const slab = slabShape(rule, d, o);
      const srcOf = (f: Field, e?: number): View => (e === undefined ? l[f as LayerField]! : l.experts[e]![f as ExpertField]!);
      const dtypeOf = (e?: number): Dtype => {
        const dts = new Set(fields.map((f) => srcOf(f, e).dtype));
        if (dts.size > 1) throw new MoekitError('unsupported', `cannot fuse ${fields.join('+')} of layer ${l.layer} into ${rule.name}: their dtypes differ (${[...dts].join(', ')}); convert with --dtype`);
        return [...dts][0]!;
      };
      const partsFor = (e?: number): SlabPart[] => fields.map((f) => ({ src: srcOf(f, e), loc: parts[f]! }));
      if (rule.scope === 'layer') {
        const dt = dtypeOf();
        entries.push(slabbedEntry(ruleName(target, rule, root, l.layer), slab, dt, [slabSource(slab, dt, partsFor())]));
      } else if (rule.scope === 'expert') {
        for (let e = 0; e < d.E; e++) {
          const dt = dtypeOf(e);
          entries.push(slabbedEntry(ruleName(target, rule, root, l.layer, e), slab, dt, [slabSource(slab, dt, partsFor(e))]));
        }
      } else {
        const dt = dtypeOf(0);
        const slabs = l.experts.map((_, e) => slabSource(slab, dt, partsFor(e)));
        entries.push(slabbedEntry(ruleName(target, rule, root, l.layer), declaredShape(rule, d, o), dt, slabs));
      }
    }
    const ident = l.globalIds.every((g, i) => g === i) && l.globalIds.length === d.Er;
    layers.push({
      layer: l.layer,
      experts: d.E,
      routerExperts: d.Er,
      intermediate: d.I,
      sharedIntermediate: d.Is,
      gated: d.gated,
      fields: [...present].sort(),
      ...(ident ? {} : { globalExperts: [...l.globalIds] }),
    });
  }
  for (const info of ir.passthrough) {
    entries.push(slabbedEntry(info.name, info.shape, info.dtype, [{ raw: { info, start: 0, end: info.nbytes } }]));
  }
  const names = new Set<string>();
  for (const e of entries) {
    if (names.has(e.name)) throw new MoekitError('unsupported', `'${e.name}' would be written twice: a non-expert tensor of the source has the name layout '${target.id}' gives an expert tensor`);
    names.add(e.name);
  }
  entries.sort((a, b) => naturalCompare(a.name, b.name));
  for (const e of entries) for (const sl of e.slabs) if (sl.build) queue.push(Object.assign(sl, { g: queue.length }));
  return { entries, layers, gateUp: target.gateUp ? o.gateUp : 'separate', target };
}

/** Identity plan: every tensor passes through unchanged (a layout converted to itself). */
export function passthroughPlan(ck: TensorStore): WriteEntry[] {
  return [...ck.tensors.values()]
    .map((info) => ({ name: info.name, dtype: info.dtype, shape: info.shape, source: () => ck.chunks(info) }))
    .sort((a, b) => naturalCompare(a.name, b.name));
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

/** The moekit.json of a converted checkpoint. */
export function moekitJson(ir: ModelIR, plan: Pick<Plan, 'layers' | 'gateUp' | 'target'>, sourceLayout: string): MoekitJson {
  const l0 = plan.layers[0];
  return {
    format: 'moekit',
    version: 1,
    family: ir.family,
    modelType: ir.modelType,
    layout: plan.target.id,
    gateUp: plan.gateUp,
    gated: l0?.gated ?? true,
    hfRoot: ir.hfRoot,
    dims: {
      hiddenSize: ir.layers[0] ? layerDims(ir.layers[0]).H : 0,
      numExperts: l0?.routerExperts ?? 0,
      moeIntermediateSize: l0?.intermediate ?? 0,
      sharedIntermediateSize: l0?.sharedIntermediate ?? 0,
    },
    routing: ir.routing,
    activation: ir.activation,
    layers: plan.layers,
    source: { layout: sourceLayout },
  };
}

export { isExpertField };
