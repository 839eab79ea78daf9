/**
 * Block-FP8 experts re-laid out without dequantizing. A block-FP8 weight `W` [..., out, in]
 * (F8_E4M3 / E5M2) carries `W_scale_inv` [..., ⌈out/b⌉, ⌈in/b⌉], one scale per b×b block
 * (transformers integrations/finegrained_fp8.py; DeepSeek-V3's release). Moving the weight bytes
 * to another layout moves its blocks; the scales must follow them exactly.
 *
 * The scales are moved by the same layout spec as the weights, one level up: a ScaleStore presents
 * every expert weight's scale grid under the weight's own name (and each router with its hidden
 * dim counted in blocks), so readIR reads a "scale IR" whose I and H are counted in blocks, and
 * planTensors / selectExperts / sliceIntermediate build the target's scale tensors with the very
 * view operations (stack, fuse, transpose, slice) that build its weights. Each is written as
 * `<target weight name>_scale_inv`, the convention moekit's reader and transformers use.
 *
 * That is exact only when every cut and join the layouts make along I (gate | up fused, experts
 * concatenated, an expert-TP slice) falls on a block boundary: I (and a shared expert's I) must be
 * a multiple of b, blocks must be square (a transposing layout swaps their sides), and gate/up must
 * not be row-interleaved (that splits every block). Anything else is refused with the reason.
 */
import { MoekitError } from '../errors.js';
import { DerivedStore } from '../store/derived.js';
import { dtypeSize } from '../store/dtypes.js';
import type { TensorInfo, TensorStore } from '../store/types.js';
import { detectScheme, FP8_SCALE_SUFFIX, type QuantScheme } from '../quant/scheme.js';
import { type Dims, type ModelIR, type View, layerDims, selectExperts, sliceIntermediate } from './ir.js';
import { declaredShape, fieldsOf, type GateUpOrder, type LayoutSpec, slabShape, type SpecOptions } from './layout.js';
import { type ModelMeta, readIR } from './read.js';
import { naturalCompare, type PlanOptions, planTensors, type TensorPlan, type TensorsPlan } from './plan.js';

/** The scale grids of a checkpoint's expert weights, each under its weight's name; routers with H in blocks. */
class ScaleStore extends DerivedStore {
  private readonly of = new Map<string, TensorInfo>();
  constructor(inner: TensorStore, scales: Map<string, TensorInfo>, routers: Map<string, number[]>) {
    super(inner, 'block-scale');
    for (const [w, s] of scales) {
      this.tensors.set(w, { name: w, dtype: s.dtype, shape: s.shape, nbytes: s.nbytes });
      this.of.set(w, s);
    }
    for (const [r, shape] of routers) {
      const t = inner.info(r);
      this.tensors.set(r, { name: r, dtype: t.dtype, shape, nbytes: shape.reduce((a, b) => a * b, 1) * dtypeSize(t.dtype) });
    }
  }
  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const name = typeof t === 'string' ? t : t.name;
    const s = this.of.get(name);
    if (!s) throw new MoekitError('internal', `internal: '${name}' has no scale grid (a router is never read from the scale view)`);
    return this.inner.read(s, start, end, into);
  }
}

/** A block-FP8 checkpoint's experts as two IRs: the FP8 bytes, and their scale grids (I and H in blocks). */
export interface ScaledIR {
  weights: ModelIR;
  scales: ModelIR;
  block: number;
  /** the checkpoint read (for the dequant hint of a refusal) */
  src: string;
}

const refuse = (m: string) => new MoekitError('unsupported', m);

/** The tensor a view reads (every expert field of a checkpoint's IR is a view of one). */
const tensorOf = (v: View | undefined): string | undefined => (v?.storage.kind === 'tensor' ? v.storage.info.name : undefined);

/**
 * Read a block-FP8 checkpoint's experts (layout `spec`, gate/up `order`) as weights + scales, or
 * refuse what the scales cannot follow exactly.
 */
function readScaledIR(store: TensorStore, spec: LayoutSpec, meta: ModelMeta, scheme: QuantScheme, order: GateUpOrder | 'separate', to: string): ScaledIR {
  const src = store.dir;
  if (scheme.method !== 'fp8-block')
    throw refuse(
      `${src} is ${scheme.method}: moekit moves block-FP8 scales with their weights, other schemes only through their float values: moekit dequant ${src} --to ${to} -o <dst>`,
    );
  const weights = readIR(store, spec, meta);
  const scaleOf = new Map<string, TensorInfo>();
  let block = 0;
  for (const g of scheme.groups.values()) {
    const m = /blocks (\d+)×(\d+)/.exec(g.detail);
    const [b0, b1] = [Number(m?.[1]), Number(m?.[2])];
    if (b0 !== b1)
      throw refuse(
        `${g.name}: blocks of ${b0}×${b1}; moekit moves only square scale blocks between layouts (a transposing layout swaps their sides): moekit dequant ${src} --to ${to} -o <dst>`,
      );
    block = b0;
    scaleOf.set(g.parts[0]!, store.info(g.parts[1]!));
  }
  const s: ScaledIR = { weights, scales: weights, block, src };
  fitsLayout(s, spec, order, `moekit dequant ${src} --to ${to} -o <dst>`);
  const routers = new Map<string, number[]>();
  const scaled = new Map<string, TensorInfo>();
  for (const l of weights.layers) {
    const router = tensorOf(l.router);
    if (router) routers.set(router, [l.router!.shape[0]!, Math.ceil(layerDims(l).H / block)]);
    const fields = [...l.experts.flatMap((e) => [e.gate, e.up, e.down]), l.shared_gate_proj, l.shared_up, l.shared_down];
    for (const v of fields) {
      const w = tensorOf(v);
      if (!w) continue;
      const sc = scaleOf.get(w);
      if (!sc)
        throw refuse(
          `layer ${l.layer}: expert weight '${w}' is not block-FP8 while others are; moekit re-lays out one or the other: moekit dequant ${src} --to ${to} -o <dst>`,
        );
      scaled.set(w, sc);
    }
  }
  const read = readIR(new ScaleStore(store, scaled, routers), spec, { ...meta, config: undefined });
  // the scale IR holds the grids only: the routers' stand-ins (needed to read it) are dropped
  const scales = { ...read, hfRoot: weights.hfRoot, passthrough: [], layers: read.layers.map(({ router: _r, ...l }) => l) };
  // the expert weights' scales are written by the scale plan, under the target's names
  const moved = new Set([...scaled.values()].map((x) => x.name));
  return { weights: { ...weights, passthrough: weights.passthrough.filter((p) => !moved.has(p.info.name)) }, scales, block, src };
}

/** Refuse a layout (with its gate/up order) that would cut or join the FP8 experts inside a scale block. */
function fitsLayout(s: ScaledIR, spec: LayoutSpec, order: GateUpOrder | 'separate', dequant: string): void {
  blockwiseLayout(spec, dequant);
  if (order === 'interleaved')
    throw refuse(
      `gate/up interleaved row by row would split every ${s.block}-row scale block of the FP8 experts; use --gate-up concat, or dequantize on the way: ${dequant}`,
    );
  if (!joinsAlongI(spec)) return;
  for (const l of s.weights.layers) {
    const d = layerDims(l);
    for (const [what, I] of [
      ['expert', d.I],
      ['shared-expert', d.Is],
    ] as const)
      if (I % s.block !== 0)
        throw refuse(
          `layer ${l.layer}: ${what} intermediate size ${I} is not a multiple of the ${s.block}-row scale block, so a block would straddle two tensors layout '${spec.id}' fuses or cuts; dequantize on the way: ${dequant}`,
        );
  }
}

/** Distinct dims (and the spec's default gate/up order) to tell a layout's rules apart by the shapes they give. */
const probe = (spec: LayoutSpec): [Dims, SpecOptions] => [{ E: 3, Er: 3, H: 5, I: 7, Is: 11, gated: true }, { gateUp: spec.gateUp?.default ?? 'concat' }];

/**
 * A stacked tensor whose declared shape is not [E, ...slab] must be its experts joined along the
 * slab's first dim ([E·rows, ...]): then its 2-D block grid is the experts' grids joined the same
 * way. Megatron's legacy GroupedMLP weight1 ([H, E·2I] over [E, H, 2I] memory) is not, and no block
 * grid over its declared shape describes the blocks of its memory.
 */
function blockwiseLayout(spec: LayoutSpec, dequant: string): void {
  const [d, o] = probe(spec);
  for (const r of spec.rules) {
    if (r.scope !== 'stacked' || !r.shape) continue;
    const slab = slabShape(r, d, o);
    const shape = declaredShape(r, d, o);
    if (shape.length !== slab.length || shape[0] !== d.E * slab[0]! || shape.some((n, i) => i > 0 && n !== slab[i]))
      throw refuse(
        `layout '${spec.id}' declares ${r.name} over its experts' memory reinterpreted, not joined along its rows, so no grid of FP8 block scales describes it; its experts move only dequantized: ${dequant}`,
      );
  }
}

/** Does a layout join or cut tensors along I (gate | up fused, experts concatenated along rows)? Per-expert separate ones do not. */
function joinsAlongI(spec: LayoutSpec): boolean {
  const [d, o] = probe(spec);
  return spec.rules.some((r) => fieldsOf(r, d, o).length > 1 || (r.scope === 'stacked' && r.shape !== undefined));
}

/**
 * The scaled IR of a quantized checkpoint (`q`: what quantizedTensors found); a scheme moekit does
 * not recognise is refused. `to`: the layout asked for, named in the dequant command of a refusal.
 */
export async function openScaled(
  store: TensorStore,
  q: string,
  spec: LayoutSpec,
  meta: ModelMeta,
  order: GateUpOrder | 'separate',
  to: string,
): Promise<ScaledIR> {
  const scheme = await detectScheme(store, meta.config);
  if (!scheme) throw refuse(`${store.dir} is quantized (${q}) in a way moekit does not recognise; it can only be copied as it is`);
  return readScaledIR(store, spec, meta, scheme, order, to);
}

/** Keep only `globalIds` (an EP rank), then slice `rank` of `size` along I (an expert-TP rank), in both IRs. */
export function selectScaled(s: ScaledIR, globalIds: readonly number[], rank: number, size: number): ScaledIR {
  const cut = (ir: ModelIR) => {
    const sel = selectExperts(ir, globalIds);
    return size > 1 ? sliceIntermediate(sel, rank, size) : sel;
  };
  return { ...s, weights: cut(s.weights), scales: cut(s.scales) };
}

/** The plan of a block-FP8 checkpoint in layout `target`: its weights' plan with the scale tensors beside their weights. */
export function planScaled(s: ScaledIR, target: LayoutSpec, opts: PlanOptions = {}): TensorsPlan {
  const order = target.gateUp ? (opts.gateUp ?? target.gateUp.default) : 'separate';
  fitsLayout(s, target, order, `moekit dequant ${s.src} --to ${target.families ? 'hf' : target.id} -o <dst>`);
  const tp = planTensors(s.weights, target, opts);
  const tensors = [...tp.tensors, ...planScales(s, target, tp.tensors, opts)].sort((a, b) => naturalCompare(a.name, b.name));
  return { ...tp, tensors };
}

/**
 * The target's scale tensors for an IR's scale grids: the plan of the scale IR, kept to the tensors
 * made of scale grids (not routers), renamed `<weight>_scale_inv`; each checked against its weight.
 */
function planScales(s: ScaledIR, target: LayoutSpec, weights: TensorPlan[], opts: PlanOptions): TensorPlan[] {
  const byName = new Map(weights.map((t) => [t.name, t]));
  const out: TensorPlan[] = [];
  for (const t of planTensors(s.scales, target, { gateUp: opts.gateUp }).tensors) {
    const w = byName.get(t.name);
    const want = w && [...w.shape.slice(0, -2), ...w.shape.slice(-2).map((n) => Math.ceil(n / s.block))];
    if (!w || !want || want.length !== t.shape.length || want.some((n, i) => n !== t.shape[i]))
      throw new MoekitError(
        'internal',
        `internal: the scale grid planned for '${t.name}' is [${t.shape}], its weight is [${w?.shape ?? '?'}] in blocks of ${s.block}`,
      );
    out.push({ ...t, name: t.name + FP8_SCALE_SUFFIX });
  }
  return out;
}
