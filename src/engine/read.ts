/**
 * Reading a checkpoint into the canonical IR: its metadata (config.json / moekit.json), which
 * layout spec its tensor names match (converters/), and the expert IR as lazy views over the
 * store. Nothing here reads tensor data.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { TensorStore, TensorInfo } from '../store/types.js';
import { readHfConfig, readJsonIfExists } from '../store/json.js';
import { hintedConfig } from '../store/registry.js';
import { MoekitError } from '../errors.js';
import { unfoldSharedSlots } from './shared-slots.js';
import { familyFacts, type Routing, type Activation, type ScoreFunc } from '../families/index.js';
import { Checker, LIMITS } from '../store/schema.js';
import { View, layerDims, type Dims, type ExpertIR, type LayerIR, type ModelIR, type ExpertField, type LayerField } from './ir.js';
import {
  declaredShape,
  fieldsOf,
  ruleName,
  ruleRegex,
  slabShape,
  type Field,
  type GateUpOrder,
  type LayoutSpec,
  type SpecOptions,
  type TensorRule,
} from './layout.js';
import type { TensorsPlan } from './plan.js';
import { LAYOUTS, hfLayoutFor, TARGET_NAMES } from '../../converters/index.js';
import { candidateLayouts, knownLayout, layoutOf } from './block-prefix.js';
import { DENSE_MLP_SPECS } from '../../converters/dense-mlp.js';
import { loaderOf } from '../output/card.js';

// ---- metadata --------------------------------------------------------------------------------

/** moekit.json: what a converted checkpoint is, so reading it back needs nothing else. */
export interface MoekitJson {
  format: 'moekit';
  version: 1;
  family: string;
  modelType: string;
  layout: string;
  /** which framework loads this layout, and how (absent in files written before moekit recorded it) */
  loadedBy?: string;
  gateUp: GateUpOrder | 'separate';
  gated: boolean;
  hfRoot: string;
  dims: { hiddenSize: number; numExperts: number; moeIntermediateSize: number; sharedIntermediateSize: number };
  routing: Routing | null;
  activation: Activation | null;
  layers: LayerReport[];
  source: { layout: string };
  /** how an upcycled checkpoint was made (moekit upcycle) */
  upcycle?: UpcycleRecord;
  /** digestOf the other fields (absent in files written before moekit recorded it) */
  digest?: string;
}

/** moekit.json's record of an upcycling: enough to tell how each expert was made and whether the model is equivalent. */
export interface UpcycleRecord {
  scheme: 'exact' | 'megatron';
  granularity: number;
  sharedSlices: number;
  copies: number;
  /** whether the MoE model computes the dense model's function (false with --experts-from) */
  equivalent: boolean;
  router: 'random' | 'uniform';
  routerStd: number;
  seed: number;
  /** factor on every routed expert's down projection, and on the shared expert's */
  downScale: number;
  sharedDownScale: number;
  sources: string[];
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

const SCORE_FUNCS: readonly ScoreFunc[] = ['softmax', 'sigmoid', 'topk_softmax', 'topk_sigmoid_input', 'sparsemixer', 'topk_sigmoid'];
const ACTIVATIONS: readonly Activation['kind'][] = ['swiglu', 'geglu_tanh', 'geglu', 'relu2', 'swiglu_oai', 'swiglu_clamped'];

function checkRouting(k: Checker, v: unknown, E: number): Routing {
  const r = k.obj(v, 'routing');
  const nGroup = k.int(r.nGroup, 'routing.nGroup', 1, Math.max(1, E));
  return {
    scoreFunc: k.str(r.scoreFunc, 'routing.scoreFunc', SCORE_FUNCS) as ScoreFunc,
    topK: k.int(r.topK, 'routing.topK', 1, Math.max(1, E)),
    nGroup,
    topkGroup: k.int(r.topkGroup, 'routing.topkGroup', 1, nGroup),
    normTopkProb: k.bool(r.normTopkProb, 'routing.normTopkProb'),
    routedScalingFactor: k.num(r.routedScalingFactor, 'routing.routedScalingFactor'),
    correctionBias: k.bool(r.correctionBias, 'routing.correctionBias'),
    routerBias: k.bool(r.routerBias, 'routing.routerBias'),
    ...(r.jitterEps === undefined ? {} : { jitterEps: k.num(r.jitterEps, 'routing.jitterEps') }),
    ...(r.groupScore === undefined ? {} : { groupScore: k.str(r.groupScore, 'routing.groupScore', ['top2sum', 'max']) as Routing['groupScore'] }),
    ...(r.groupMask === undefined ? {} : { groupMask: k.str(r.groupMask, 'routing.groupMask', ['zero', '-inf']) as Routing['groupMask'] }),
    ...(r.normP === undefined ? {} : { normP: k.num(r.normP, 'routing.normP') }),
    ...(r.sharedScale === undefined ? {} : { sharedScale: k.num(r.sharedScale, 'routing.sharedScale') }),
    ...(r.routerNorm === undefined ? {} : { routerNorm: k.bool(r.routerNorm, 'routing.routerNorm') }),
    ...(r.routerInputScale === undefined ? {} : { routerInputScale: k.num(r.routerInputScale, 'routing.routerInputScale') }),
    ...(r.normEps === undefined ? {} : { normEps: k.num(r.normEps, 'routing.normEps') }),
    ...(r.renormEps === undefined ? {} : { renormEps: k.num(r.renormEps, 'routing.renormEps') }),
  };
}

/** A name root as the layout specs read it: dot-terminated words ('model.', 'language_model.model.'), or ''. */
function checkRoot(k: Checker, v: unknown): string {
  const r = k.str(v, 'hfRoot');
  if (!/^(?:[A-Za-z0-9_-]+\.)*$/.test(r)) k.fail('hfRoot', `'${r.slice(0, 60)}' is not a tensor-name root (like 'model.')`);
  return r;
}

/** The name root of a per-layer tensor ('model.' in model.layers.0.self_attn.q_proj.weight, 'transformer.' in DBRX's transformer.blocks.0…), if it is one. */
export function layerRootOf(name: string): string | undefined {
  return /^((?:[A-Za-z0-9_-]+\.)*?)(?:layers|blocks)\.\d+\./.exec(name)?.[1];
}

/** The HF roots the non-expert layer tensors use ('model.' in model.layers.0.self_attn...). */
function passthroughRoots(passthrough: ModelIR['passthrough']): Set<string> {
  const roots = new Set<string>();
  for (const { info } of passthrough) {
    const r = layerRootOf(info.name);
    if (r !== undefined) roots.add(r);
  }
  return roots;
}

function checkLayerReport(k: Checker, v: unknown, i: number): LayerReport {
  const l = k.obj(v, `layers[${i}]`);
  const f = (n: string) => `layers[${i}].${n}`;
  const experts = k.int(l.experts, f('experts'), 1, LIMITS.experts);
  const routerExperts = k.int(l.routerExperts, f('routerExperts'), 1, LIMITS.experts);
  return {
    layer: k.int(l.layer, f('layer'), 0, LIMITS.layers),
    experts,
    routerExperts,
    intermediate: k.int(l.intermediate, f('intermediate'), 0, LIMITS.intermediate),
    sharedIntermediate: k.int(l.sharedIntermediate, f('sharedIntermediate'), 0, LIMITS.intermediate),
    gated: k.bool(l.gated, f('gated')),
    fields: k.arr(l.fields, f('fields'), 64).map((x, j) => k.str(x, `${f('fields')}[${j}]`)),
    ...(l.globalExperts === undefined ? {} : { globalExperts: k.ints(l.globalExperts, f('globalExperts'), 0, routerExperts - 1, experts) }),
  };
}

/** moekit.json as written by moekit, every field checked (it decides what is read and written). */
function checkMoekitJson(v: Record<string, unknown>, where: string): MoekitJson {
  const k = new Checker(where);
  if (v.format !== 'moekit' || v.version !== 1) k.fail('format', "must be 'moekit' version 1 (not a moekit.json)");
  const dims = k.obj(v.dims, 'dims');
  const E = k.int(dims.numExperts, 'dims.numExperts', 0, LIMITS.experts);
  const layout = k.str(v.layout, 'layout');
  if (!knownLayout(layout)) k.fail('layout', `must be one of ${LAYOUTS.map((l) => l.id).join(', ')} (or <non-HF layout>@<block prefix>), not '${layout}'`);
  const act = v.activation === null ? null : k.obj(v.activation, 'activation');
  if (v.digest !== undefined && v.digest !== digestOf(v)) {
    k.fail('digest', 'does not match the file: moekit.json was edited after moekit wrote it (restore it, or delete its digest field to vouch for the edit)');
  }
  const checked: MoekitJson = {
    format: 'moekit',
    version: 1,
    family: k.str(v.family, 'family'),
    modelType: k.str(v.modelType, 'modelType'),
    layout,
    ...(v.loadedBy === undefined ? {} : { loadedBy: k.str(v.loadedBy, 'loadedBy') }),
    gateUp: k.str(v.gateUp, 'gateUp', ['concat', 'interleaved', 'separate']) as MoekitJson['gateUp'],
    gated: k.bool(v.gated, 'gated'),
    hfRoot: checkRoot(k, v.hfRoot),
    dims: {
      hiddenSize: k.int(dims.hiddenSize, 'dims.hiddenSize', 0, LIMITS.hidden),
      numExperts: E,
      moeIntermediateSize: k.int(dims.moeIntermediateSize, 'dims.moeIntermediateSize', 0, LIMITS.intermediate),
      sharedIntermediateSize: k.int(dims.sharedIntermediateSize, 'dims.sharedIntermediateSize', 0, LIMITS.intermediate),
    },
    routing: v.routing === null ? null : checkRouting(k, v.routing, E),
    activation: act && {
      kind: k.str(act.kind, 'activation.kind', ACTIVATIONS) as Activation['kind'],
      ...(act.alpha === undefined ? {} : { alpha: k.num(act.alpha, 'activation.alpha') }),
      ...(act.limit === undefined ? {} : { limit: k.num(act.limit, 'activation.limit') }),
    },
    layers: k.arr(v.layers, 'layers', LIMITS.layers).map((l, i) => checkLayerReport(k, l, i)),
    source: { layout: k.str(k.obj(v.source, 'source').layout, 'source.layout') },
  };
  if (v.upcycle !== undefined) checked.upcycle = k.obj(v.upcycle, 'upcycle') as unknown as UpcycleRecord;
  return v.digest === undefined ? checked : { ...checked, digest: v.digest as string };
}

/** The checkpoint's config.json, else the one `--hf-config` names (a state dict saved without one). */
export async function checkpointConfig(ck: TensorStore): Promise<Record<string, unknown> | undefined> {
  const hinted = hintedConfig();
  return (await ck.config()) ?? (hinted === undefined ? undefined : await readHfConfig(hinted));
}

export async function loadMeta(ck: TensorStore): Promise<ModelMeta> {
  const config = await checkpointConfig(ck);
  const where = join(ck.dir, 'moekit.json');
  const raw = await readJsonIfExists(where);
  const mk = raw && checkMoekitJson(raw, where);
  if (mk && config) {
    // cross-check with the config the tensors came with: a disagreement is an error, not a silent change
    const f = familyFacts(config);
    if (f.known && f.family !== mk.family)
      throw new MoekitError('bad-input', `${where}: family '${mk.family}' disagrees with config.json (model_type '${f.modelType}', family '${f.family}')`);
  }
  if (mk) return { family: mk.family, modelType: mk.modelType, routing: mk.routing, activation: mk.activation, config, moekit: mk };
  if (config) {
    const f = familyFacts(config);
    return { family: f.family, modelType: f.modelType, routing: f.known ? f.routing : null, activation: f.activation, config };
  }
  return { family: 'unknown', modelType: '', routing: null, activation: null };
}

// ---- detection -------------------------------------------------------------------------------

/** Dims of one unit each: enough to ask a rule which fields it holds. */
const UNIT_DIMS: Dims = { E: 1, Er: 1, H: 1, I: 1, Is: 1, gated: true };

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

/**
 * Whether a spec's stacked expert tensors have the shapes it declares, past the expert dim, for the
 * router's H and config.json's I: two layouts with the same names that differ only in orientation
 * (Qwen3-VL-MoE's experts as transformers saves them, [E, 2I, H], and as the Hub's checkpoints hold
 * them, [E, H, 2I]) are told apart by it. True when I is unknown.
 */
function shapesFit(spec: LayoutSpec, names: string[], shapeOf: (n: string) => readonly number[] | undefined, meta: ModelMeta): boolean {
  const I = meta.config ? familyFacts(meta.config).moeIntermediateSize : 0;
  if (!(I > 0)) return true;
  const o: SpecOptions = { gateUp: spec.gateUp?.default ?? 'concat' };
  const routers = new Map<number, readonly number[]>();
  const stacked: { n: number; rule: TensorRule; shape: readonly number[] }[] = [];
  for (const name of names) {
    const shape = shapeOf(name);
    const c = shape && compiled(spec).find((x) => x.re.test(name));
    if (!c || !shape) continue;
    const n = Number(c.re.exec(name)!.groups!.n);
    if (c.rule.scope === 'layer' && fieldsOf(c.rule, UNIT_DIMS, o).includes('router')) routers.set(n, shape);
    else if (c.rule.scope === 'stacked' && !c.rule.shape) stacked.push({ n, rule: c.rule, shape });
  }
  return stacked.every(({ n, rule, shape }) => {
    const r = routers.get(n);
    if (!r) return true;
    const want = declaredShape(rule, { E: r[0]!, Er: r[0]!, H: r[1]!, I, Is: 0, gated: true }, o);
    return want.length === shape.length && want.every((w, i) => i === 0 || w === shape[i]);
  });
}

/**
 * The layout a checkpoint's tensors are in (moekit.json's word first), or undefined if no spec claims
 * any expert tensor. Among specs that claim as many tensors, one whose stacked shapes fit (shapeOf) wins.
 */
function detectLayout(names: string[], meta: ModelMeta, shapeOf?: (n: string) => readonly number[] | undefined): LayoutSpec | undefined {
  if (meta.moekit) {
    const s = layoutOf(meta.moekit.layout);
    if (s && claims(s, names).experts > 0) return s;
    throw new MoekitError(
      'bad-input',
      `moekit.json says layout '${meta.moekit.layout}', but no expert tensor is named that way; the file belongs to another checkpoint`,
    );
  }
  let best: { spec: LayoutSpec; experts: number; all: number } | undefined;
  for (const spec of candidateLayouts()) {
    if (spec.families && meta.family !== 'unknown' && !spec.families.includes(meta.family) && hfLayoutFor(meta.family)) continue;
    const c = claims(spec, names);
    if (c.experts === 0) continue;
    const tie = best && c.experts === best.experts && c.all === best.all;
    if (tie && shapeOf && !shapesFit(best!.spec, names, shapeOf, meta) && shapesFit(spec, names, shapeOf, meta)) best = { spec, ...c };
    if (!best || c.experts > best.experts || (c.experts === best.experts && c.all > best.all)) best = { spec, ...c };
  }
  return best?.spec;
}

/** detectLayout over a store's tensors (names and shapes). */
export const detectStoreLayout = (store: TensorStore, meta: ModelMeta): LayoutSpec | undefined =>
  detectLayout(store.names(), meta, (n) => store.tensors.get(n)?.shape);

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
  const s = layoutOf(name);
  if (!s || s.families) {
    const near = TARGET_NAMES.find((t) => t.toLowerCase() === name.toLowerCase()) ?? TARGET_NAMES.find((t) => editDistance(t, name.toLowerCase()) <= 2);
    throw new MoekitError('unsupported', `unknown layout '${name}'${near ? ` (did you mean '${near}'?)` : ''}; known: ${TARGET_NAMES.join(', ')}`);
  }
  return s;
}

/** Levenshtein distance (short names only: layout ids, option names). */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
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

interface Match {
  rule: TensorRule;
  info: TensorInfo;
  e?: number;
}

export interface ReadOptions {
  /** order of fused gate/up in the source (default: moekit.json's, else the spec's default) */
  gateUp?: GateUpOrder;
  /** an expert-parallel rank's file: its layers hold a part of the experts config.json names */
  localExperts?: boolean;
}

/** Read the expert tensors of a checkpoint in layout `spec` into the canonical IR. */
export function readIR(ck: TensorStore, spec: LayoutSpec, meta: ModelMeta, ropts: ReadOptions = {}): ModelIR {
  const rules = compiled(spec);
  const layers = new Map<number, { root: string; matches: Match[] }>();
  const passthrough: ModelIR['passthrough'] = [];
  for (const info of ck.tensors.values()) {
    let hit = false;
    for (const c of rules) {
      const m = c.re.exec(info.name);
      if (!m) continue;
      const n = Number(m.groups!.n);
      let l = layers.get(n);
      if (!l) layers.set(n, (l = { root: m.groups!.root ?? '', matches: [] }));
      const root = m.groups!.root ?? '';
      const first = layers.values().next().value!.root;
      if (root !== l.root || root !== first) {
        throw new MoekitError(
          'bad-input',
          `'${info.name}' has the name root '${root}', other expert tensors '${root !== l.root ? l.root : first}': one checkpoint's expert tensors share one root` +
            ([root, l.root, first].some((r) => r.startsWith('mtp.')) ? ' (multi-token-prediction MoE blocks under mtp. are not converted yet)' : ''),
        );
      }
      l.matches.push({ rule: c.rule, info, e: m.groups!.e === undefined ? undefined : Number(m.groups!.e) });
      // a slab with a part no IR field holds passes through whole as well (its rest is written from there)
      if (c.rule.rest) passthrough.push({ store: ck, info });
      hit = true;
      break;
    }
    if (!hit) passthrough.push({ store: ck, info });
  }
  const gateUp: GateUpOrder =
    ropts.gateUp ?? (meta.moekit?.layout === spec.id && meta.moekit.gateUp !== 'separate' ? meta.moekit.gateUp : (spec.gateUp?.default ?? 'concat'));
  const o: SpecOptions = { gateUp };
  if (spec.routedOnly) {
    // expert ids past the router's experts are another expert set under the same names (ERNIE-4.5-VL's vision experts)
    for (const l of layers.values()) {
      const router = l.matches.find((m) => fieldsOf(m.rule, UNIT_DIMS, o).includes('router'));
      if (!router) continue;
      const Er = routerShape(ck, router, o)[0]!;
      for (const m of l.matches) if (m.e !== undefined && m.e >= Er) passthrough.push({ store: ck, info: m.info });
      l.matches = l.matches.filter((m) => m.e === undefined || m.e < Er);
    }
  }
  const out: LayerIR[] = [];
  let hfRoot: string | undefined;
  for (const [n, l] of [...layers].sort((a, b) => a[0] - b[0])) {
    if (spec.root === 'hf') hfRoot ??= l.root;
    out.push(readLayer(ck, n, l.matches, spec, o, meta));
  }
  if (out.length === 0) throw new MoekitError('unsupported', `no tensors of layout '${spec.id}' found`);
  // a model folder (not a moekit rank, whose moekit.json names its subset) holds every expert config.json names
  const want = meta.config && !meta.moekit && !ropts.localExperts ? familyFacts(meta.config).numExperts : 0;
  for (const l of out)
    if (want && l.experts.length !== want)
      throw new MoekitError(
        'bad-input',
        `layer ${l.layer} holds ${l.experts.length} experts, config.json says ${want}: a shard or rank file is missing, or config.json belongs to another model`,
      );
  return {
    family: meta.family,
    modelType: meta.modelType,
    routing: meta.routing,
    activation: meta.activation,
    hfRoot: hfRoot ?? checkedHfRoot(meta, passthrough),
    layers: out,
    passthrough,
  };
}

/** The router's [E, H] as the layout reads it (ERNIE-4.5-VL saves its router transposed, [H, E]). */
function routerShape(ck: TensorStore, m: Match, o: SpecOptions): readonly number[] {
  return m.rule.parts(UNIT_DIMS, o).router!(View.ofTensor(ck, m.info)).shape;
}

/**
 * Experts held in stacked tensors are sized by dividing the tensor by the expert count; where that
 * count is the router's (fast-llm, megatron-grouped) E·I cannot be told from (E + S)·I' (Fast-LLM's
 * shared experts as extra slots, counted by sharedSlotCount). So every stacked layout's expert size
 * must be config.json's.
 */
function checkExpertSize(n: number, I: number, spec: LayoutSpec, meta: ModelMeta): void {
  const want = meta.config && !meta.moekit ? familyFacts(meta.config).moeIntermediateSize : 0;
  if (want > 0 && I !== want)
    throw new MoekitError(
      'unsupported',
      `layer ${n}: the experts of layout '${spec.id}' come out with intermediate size ${I}, config.json says ${want}` +
        (spec.sharedSlots ? ` (with shared experts as extra slots the config's shared-expert size must match the tensors)` : ''),
    );
}

function readLayer(ck: TensorStore, n: number, matches: Match[], spec: LayoutSpec, o: SpecOptions, meta: ModelMeta): LayerIR {
  const has = (f: Field, d: Dims) => matches.some((m) => fieldsOf(m.rule, d, o).includes(f));
  const router = matches.find((m) => has('router', UNIT_DIMS) && fieldsOf(m.rule, UNIT_DIMS, o).includes('router'));
  if (!router)
    throw new MoekitError(
      'unsupported',
      `layer ${n}: expert tensors of layout '${spec.id}' but no router tensor (${ruleName(spec, spec.rules.find((r) => fieldsOf(r, UNIT_DIMS, o).includes('router'))!, '…', n)})`,
    );
  const [Er, H] = routerShape(ck, router, o) as [number, number];
  // gated or not: the hypothesis under which every matched expert rule holds something and a
  // standalone gate tensor is present exactly when gated
  const layerMeta = meta.moekit?.layers?.find((x) => x.layer === n);
  const prefer = layerMeta?.gated ?? meta.moekit?.gated ?? true;
  let gated: boolean | undefined;
  for (const h of [prefer, !prefer]) {
    const d = { ...UNIT_DIMS, gated: h };
    const expertRules = matches.filter((m) => m.rule.scope !== 'layer');
    if (expertRules.some((m) => fieldsOf(m.rule, d, o).length === 0)) continue;
    if (expertRules.some((m) => fieldsOf(m.rule, d, o).includes('gate')) !== h) continue;
    gated = h;
    break;
  }
  if (gated === undefined)
    throw new MoekitError('unsupported', `layer ${n}: the expert tensors of layout '${spec.id}' are neither a complete gated nor a non-gated set`);
  // number of experts held, shared-expert slots included
  const slots = sharedSlotCount(n, spec, meta);
  const ids = new Set(matches.filter((m) => m.e !== undefined).map((m) => m.e!));
  let E: number;
  if (ids.size > 0) {
    E = Math.max(...ids) + 1;
    if (ids.size !== E)
      throw new MoekitError('unsupported', `layer ${n}: expert ids are not 0..${E - 1} (found ${ids.size} of them); a shard must be renumbered locally`);
  } else {
    const st = matches.find((m) => m.rule.scope === 'stacked' && !m.rule.shape);
    E = st ? st.info.shape[0]! : (layerMeta?.experts ?? Er) + slots;
  }
  const d: Dims = { E, Er, H, I: 1, Is: 1, gated };
  const solve = (field: Field, key: 'I' | 'Is'): number => {
    const m = matches.find((x) => fieldsOf(x.rule, d, o).includes(field));
    if (!m) return 0;
    const unit = numel(declaredShape(m.rule, { ...d, [key]: 1 }, o));
    const v = numel(m.info.shape) / unit;
    if (!Number.isInteger(v) || v < 1)
      throw new MoekitError('unsupported', `layer ${n}: '${m.info.name}' ${fmt(m.info.shape)} does not fit layout '${spec.id}' with ${E} experts, hidden ${H}`);
    return v;
  };
  d.I = solve('up', 'I');
  d.Is = solve('shared_up', 'Is');
  if (d.I === 0) throw new MoekitError('unsupported', `layer ${n}: no up-projection tensor of layout '${spec.id}'`);
  if (ids.size === 0) checkExpertSize(n, d.I, spec, meta);
  const experts: Partial<ExpertIR>[] = Array.from({ length: E }, () => ({}));
  const lf: Partial<Record<LayerField, View>> = {};
  for (const m of matches) {
    const want = declaredShape(m.rule, d, o);
    if (want.length !== m.info.shape.length || want.some((s, i) => s !== m.info.shape[i])) {
      throw new MoekitError(
        'unsupported',
        `mixed expert shapes: '${m.info.name}' is ${fmt(m.info.shape)}, expected ${fmt(want)} (layer ${n}: E=${E}, H=${H}, I=${d.I}${d.Is ? `, shared I=${d.Is}` : ''})`,
      );
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
  const routed = E - slots;
  const globalIds = layerMeta?.globalExperts ?? Array.from({ length: routed }, (_, i) => i);
  if (globalIds.length !== routed || new Set(globalIds).size !== routed || globalIds.some((g) => g >= Er)) {
    throw new MoekitError(
      'bad-input',
      `layer ${n}: moekit.json lists global experts [${globalIds.slice(0, 16)}${globalIds.length > 16 ? ',…' : ''}] for ${routed} experts of ${Er}; the file does not describe these tensors`,
    );
  }
  return unfoldSharedSlots({ layer: n, ...lf, experts: experts as ExpertIR[], globalIds }, slots);
}

/**
 * How many of a sharedSlots layout's expert slots are shared experts (engine/shared-slots.ts): the
 * shared width over the expert width, from moekit.json's record of the layer, else config.json.
 */
function sharedSlotCount(n: number, spec: LayoutSpec, meta: ModelMeta): number {
  if (!spec.sharedSlots) return 0;
  const rec = meta.moekit?.layers?.find((x) => x.layer === n);
  const facts = !rec && meta.config ? familyFacts(meta.config) : undefined;
  const Is = rec?.sharedIntermediate ?? facts?.shared?.intermediateSize ?? 0;
  const I = rec?.intermediate ?? facts?.moeIntermediateSize ?? 0;
  if (Is === 0) return 0;
  if (!(I > 0) || Is % I !== 0)
    throw new MoekitError('bad-input', `layer ${n}: shared experts of intermediate size ${Is} cannot be '${spec.id}' expert slots of size ${I}`);
  return Is / I;
}

/** The moekit.json of a converted checkpoint. */
export function moekitJson(ir: ModelIR, plan: Pick<TensorsPlan, 'layers' | 'gateUp' | 'target'>, sourceLayout: string, upcycle?: UpcycleRecord): MoekitJson {
  const l0 = plan.layers[0];
  const mk: MoekitJson = {
    format: 'moekit',
    version: 1,
    family: ir.family,
    modelType: ir.modelType,
    layout: plan.target.id,
    loadedBy: loaderOf(plan.target.id, Boolean(plan.target.families), ir.family),
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
    ...(upcycle ? { upcycle } : {}),
  };
  return { ...mk, digest: digestOf(mk) };
}

/**
 * sha256 of a metadata object's fields (digest excluded), canonical key order: moekit.json and the
 * shard manifest carry it so that an edited or corrupted file is refused rather than trusted.
 */
export function digestOf(v: object): string {
  const canon = (x: unknown): unknown =>
    Array.isArray(x)
      ? x.map(canon)
      : x && typeof x === 'object'
        ? Object.fromEntries(
            Object.keys(x)
              .sort()
              .map((k) => [k, canon((x as Record<string, unknown>)[k])]),
          )
        : x;
  const { digest: _, ...fields } = v as Record<string, unknown>;
  return createHash('sha256')
    .update(JSON.stringify(canon(fields)))
    .digest('hex');
}

/** moekit.json's HF root for a non-HF layout, which must be the one the untouched layer tensors carry. */
function checkedHfRoot(meta: ModelMeta, passthrough: ModelIR['passthrough']): string {
  const seen = passthroughRoots(passthrough);
  const said = meta.moekit?.hfRoot;
  if (said !== undefined && seen.size > 0 && !seen.has(said)) {
    throw new MoekitError('bad-input', `moekit.json says the HF name root is '${said}', but the other layer tensors are under '${[...seen][0]}'`);
  }
  return said ?? [...seen][0] ?? 'model.';
}

/** A dense MLP block of one layer: its weights as views. */
export interface DenseMlp {
  layer: number;
  gate?: View;
  up: View;
  down: View;
}

/** Dense MLP blocks of a checkpoint by layer (names from converters/dense-mlp.ts), skipping `moe` layers. */
export function readDenseMlps(ck: TensorStore, moe: ReadonlySet<number>): Map<number, DenseMlp> {
  const found = new Map<number, Partial<Record<Field, View>>>();
  for (const spec of DENSE_MLP_SPECS) {
    for (const { rule, re } of compiled(spec)) {
      for (const info of ck.tensors.values()) {
        const m = re.exec(info.name);
        if (!m) continue;
        const n = Number(m.groups!.n);
        if (moe.has(n)) continue;
        let l = found.get(n);
        if (!l) found.set(n, (l = {}));
        for (const [f, loc] of Object.entries(rule.parts(UNIT_DIMS, { gateUp: 'concat' }))) l[f as Field] = loc!(View.ofTensor(ck, info));
      }
    }
  }
  const out = new Map<number, DenseMlp>();
  for (const [n, l] of [...found].sort((a, b) => a[0] - b[0])) {
    if (!l.shared_up || !l.shared_down) continue;
    out.set(n, { layer: n, gate: l.shared_gate_proj, up: l.shared_up, down: l.shared_down });
  }
  return out;
}
