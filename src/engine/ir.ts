/**
 * Canonical expert IR: what every layout spec reads into and writes from.
 *
 * Per MoE layer: router weight [E,H] (+ bias [E], + score-correction bias [E]), per expert
 * gate [I,H], up [I,H], down [H,I] (+ gate/up bias [I], down bias [H]); non-gated experts have
 * no gate; shared experts (own Is) and a shared-expert gate [1,H]. Orientation is nn.Linear's
 * [out, in] (y = x·Wᵀ), the same as HF per-expert checkpoints.
 *
 * Tensors are LAZY strided views over their storage (a checkpoint tensor, or an in-memory slab
 * being assembled): select / slice (with step) / transpose / reshape-of-contiguous never touch
 * data. `materialize` reads the minimal covering byte range with one positioned read and gathers
 * it; `copyView` writes a view into another (strided) view, which is how specs build targets.
 */
import pLimit from 'p-limit';
import { arena, arenaCopy } from './arena.js';
import type { TensorStore, TensorInfo } from '../store/types.js';
import { type Dtype, dtypeSize } from '../store/dtypes.js';
import type { Routing, Activation } from '../families/index.js';
import { MoekitError } from '../errors.js';
import { stridedCopy } from './strided.js';

/**
 * Where a view's elements live: a tensor in a checkpoint file, a buffer in memory, or contiguous
 * bytes produced on demand (`load`, e.g. an expert-TP merge concatenating slices from several rank
 * files); a lazy storage is loaded whole each time a view of it is copied.
 */
export type Storage =
  | { kind: 'tensor'; store: TensorStore; info: TensorInfo }
  | { kind: 'memory'; buf: Buffer }
  | { kind: 'lazy'; load: () => Promise<Buffer> };

export class View {
  constructor(
    readonly storage: Storage,
    readonly dtype: Dtype,
    /** element offset of [0,0,...] */
    readonly offset: number,
    readonly shape: readonly number[],
    /** element strides */
    readonly strides: readonly number[],
  ) {}

  static ofTensor(store: TensorStore, info: TensorInfo): View {
    return new View({ kind: 'tensor', store, info }, info.dtype, 0, info.shape, contiguousStrides(info.shape));
  }

  static ofBuffer(buf: Buffer, dtype: Dtype, shape: readonly number[]): View {
    return new View({ kind: 'memory', buf }, dtype, 0, shape, contiguousStrides(shape));
  }

  get ndim(): number {
    return this.shape.length;
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get nbytes(): number {
    return this.numel * dtypeSize(this.dtype);
  }

  /** Human name for errors: the source tensor, or "slab". */
  get label(): string {
    return this.storage.kind === 'tensor' ? this.storage.info.name : 'slab';
  }

  private dim(d: number): number {
    const n = d < 0 ? d + this.ndim : d;
    if (n < 0 || n >= this.ndim) throw new MoekitError('internal', `internal: dim ${d} out of range for ${this.label} ${JSON.stringify(this.shape)}`);
    return n;
  }

  /** Index `i` along `d`, dropping that dim. */
  select(d: number, i: number): View {
    const k = this.dim(d);
    if (i < 0 || i >= this.shape[k]!)
      throw new MoekitError('internal', `internal: index ${i} out of range for dim ${k} of ${this.label} ${JSON.stringify(this.shape)}`);
    return new View(
      this.storage,
      this.dtype,
      this.offset + i * this.strides[k]!,
      this.shape.filter((_, j) => j !== k),
      this.strides.filter((_, j) => j !== k),
    );
  }

  /** Elements start, start+step, ... < end along `d`. */
  slice(d: number, start: number, end: number, step = 1): View {
    const k = this.dim(d);
    if (start < 0 || end > this.shape[k]! || end < start || step < 1) {
      throw new MoekitError('internal', `internal: slice [${start}:${end}:${step}] out of range for dim ${k} of ${this.label} ${JSON.stringify(this.shape)}`);
    }
    const shape = [...this.shape];
    const strides = [...this.strides];
    shape[k] = Math.ceil((end - start) / step);
    strides[k] = this.strides[k]! * step;
    return new View(this.storage, this.dtype, this.offset + start * this.strides[k]!, shape, strides);
  }

  /** Swap two dims (default: the last two, i.e. a matrix transpose). */
  transpose(a = -2, b = -1): View {
    const i = this.dim(a);
    const j = this.dim(b);
    const shape = [...this.shape];
    const strides = [...this.strides];
    [shape[i], shape[j]] = [shape[j]!, shape[i]!];
    [strides[i], strides[j]] = [strides[j]!, strides[i]!];
    return new View(this.storage, this.dtype, this.offset, shape, strides);
  }

  get T(): View {
    return this.transpose();
  }

  /** The dims in another order: dim k of the result is dim order[k] of this view. */
  permute(order: readonly number[]): View {
    return new View(
      this.storage,
      this.dtype,
      this.offset,
      order.map((k) => this.shape[k]!),
      order.map((k) => this.strides[k]!),
    );
  }

  isContiguous(): boolean {
    let s = 1;
    for (let k = this.ndim - 1; k >= 0; k--) {
      if (this.shape[k] !== 1 && this.strides[k] !== s) return false;
      s *= this.shape[k]!;
    }
    return true;
  }

  /** Reshape; only for contiguous views (all the specs need: [E·2I,H] ↔ [E,2I,H] and the like). */
  reshape(shape: readonly number[]): View {
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== this.numel) throw new MoekitError('internal', `internal: cannot reshape ${this.label} ${JSON.stringify(this.shape)} to ${JSON.stringify(shape)}`);
    if (!this.isContiguous()) throw new MoekitError('internal', `internal: reshape of a non-contiguous view of ${this.label}`);
    return new View(this.storage, this.dtype, this.offset, shape, contiguousStrides(shape));
  }

  /** Smallest element range [lo, hi) of storage that the view touches. */
  extent(): [number, number] {
    let lo = this.offset;
    let hi = this.offset;
    for (let k = 0; k < this.ndim; k++) {
      if (this.shape[k] === 0) return [this.offset, this.offset];
      const span = (this.shape[k]! - 1) * this.strides[k]!;
      if (span < 0) lo += span;
      else hi += span;
    }
    return [lo, hi + 1];
  }

  sameShape(other: View): boolean {
    return this.shape.length === other.shape.length && this.shape.every((s, i) => s === other.shape[i]);
  }
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const st = new Array<number>(shape.length);
  let s = 1;
  for (let k = shape.length - 1; k >= 0; k--) {
    st[k] = s;
    s *= shape[k]!;
  }
  return st;
}

function typed(buf: Buffer, unit: number): Uint8Array | Uint16Array | Uint32Array {
  const { buffer, byteOffset, byteLength } = buf;
  if (unit === 1) return new Uint8Array(buffer, byteOffset, byteLength);
  if (byteOffset % unit === 0) {
    return unit === 2 ? new Uint16Array(buffer, byteOffset, byteLength / 2) : new Uint32Array(buffer, byteOffset, byteLength / 4);
  }
  throw new MoekitError('internal', 'internal: misaligned buffer');
}

/** Element copy unit: 1/2/4 bytes; 8-byte dtypes copy as two 4-byte units. */
function unitOf(dtype: Dtype): { unit: number; factor: number } {
  const es = dtypeSize(dtype);
  return es <= 4 ? { unit: es, factor: 1 } : { unit: 4, factor: es / 4 };
}

/** Expand shape/strides/offset to copy units (adds a trailing dim for 8-byte elements). */
function unitGeom(shape: readonly number[], strides: readonly number[], offset: number, factor: number) {
  if (factor === 1) return { shape: [...shape], strides: [...strides], offset };
  return { shape: [...shape, factor], strides: [...strides.map((s) => s * factor), 1], offset: offset * factor };
}

/** Buffers with 8-byte-aligned memory (typed-array views need alignment). */
export function allocAligned(n: number): Buffer {
  return Buffer.allocUnsafeSlow(n);
}

/**
 * Scratch buffers for source extents, recycled by size: a conversion reads many same-sized
 * extents, and fresh memory is ~10× slower on first touch than warm memory (platform notes).
 * They come from the arena (so the SIMD transposes can read them), else the heap, where at most
 * a few free buffers per size are kept.
 */
const scratch = new Map<number, Buffer[]>();
function acquireScratch(n: number): Buffer {
  return arena.alloc(n) ?? scratch.get(n)?.pop() ?? allocAligned(n);
}
function releaseScratch(b: Buffer): void {
  if (arena.holds(b)) {
    arena.release(b);
    return;
  }
  let l = scratch.get(b.byteLength);
  if (!l) scratch.set(b.byteLength, (l = []));
  if (l.length < 4) l.push(b);
}

/** Read a view's covering range from its storage: the bytes, the element index they start at, and whether they are scratch. */
async function fetchExtent(v: View): Promise<{ buf: Buffer; base: number; scratch: boolean }> {
  const [lo, hi] = v.extent();
  const es = dtypeSize(v.dtype);
  if (v.storage.kind === 'memory') return { buf: v.storage.buf, base: 0, scratch: false };
  if (v.storage.kind === 'lazy') return { buf: await v.storage.load(), base: 0, scratch: false };
  const buf = acquireScratch((hi - lo) * es);
  try {
    await v.storage.store.read(v.storage.info, lo * es, hi * es, buf);
  } catch (e) {
    releaseScratch(buf);
    throw e;
  }
  return { buf, base: lo, scratch: true };
}

/** A strided source whose covering range is larger than this is read and copied in pieces. */
export const PIECE_BYTES = 16 * 2 ** 20;

/**
 * Copy a strided view from a checkpoint whose covering range exceeds PIECE_BYTES in pieces along
 * its slowest-varying dim (the source's rows), so the scratch read holds a piece, not the whole
 * source matrix; false when it is small enough, or cannot be split, to be copied in one read.
 */
async function copyInPieces(src: View, dst: View, es: number): Promise<boolean> {
  if (src.storage.kind !== 'tensor') return false;
  const [lo, hi] = src.extent();
  const bytes = (hi - lo) * es;
  if (bytes <= PIECE_BYTES) return false;
  let k = -1;
  for (let d = 0; d < src.ndim; d++) if (src.shape[d]! > 1 && (k < 0 || Math.abs(src.strides[d]!) > Math.abs(src.strides[k]!))) k = d;
  if (k < 0) return false;
  const n = src.shape[k]!;
  const per = Math.max(1, Math.floor((n * PIECE_BYTES) / bytes));
  if (per >= n) return false;
  for (let a = 0; a < n; a += per) {
    const b = Math.min(n, a + per);
    await copyView(src.slice(k, a, b), dst.slice(k, a, b));
  }
  return true;
}

/**
 * Copy the elements of `src` into the positions of `dst` (same shape, same dtype). When both are
 * contiguous and src is in a checkpoint, the bytes are read straight into dst's memory.
 */
export async function copyView(src: View, dst: View): Promise<void> {
  if (!src.sameShape(dst))
    throw new MoekitError('internal', `internal: shape mismatch copying ${src.label} ${JSON.stringify(src.shape)} into ${JSON.stringify(dst.shape)}`);
  if (src.dtype !== dst.dtype) {
    throw new MoekitError('unsupported', `cannot fuse ${src.label} (${src.dtype}) with tensors of dtype ${dst.dtype}; convert with --dtype to make them equal`);
  }
  if (dst.storage.kind !== 'memory') throw new MoekitError('internal', 'internal: destination view must be in memory');
  const es = dtypeSize(src.dtype);
  const dbuf = dst.storage.buf;
  if (src.numel === 0) return;
  if (src.storage.kind === 'tensor' && src.isContiguous() && dst.isContiguous()) {
    await src.storage.store.read(
      src.storage.info,
      src.offset * es,
      (src.offset + src.numel) * es,
      dbuf.subarray(dst.offset * es, (dst.offset + dst.numel) * es),
    );
    return;
  }
  if (await copyInPieces(src, dst, es)) return;
  const { buf, base, scratch: fromScratch } = await fetchExtent(src);
  try {
    const { unit, factor } = unitOf(src.dtype);
    const s = unitGeom(src.shape, src.strides, src.offset - base, factor);
    const d = unitGeom(dst.shape, dst.strides, dst.offset, factor);
    if (factor === 1 && (await arenaCopy(dbuf, d.offset, d.strides, buf, s.offset, s.strides, s.shape, unit))) return;
    stridedCopy(typed(dbuf, unit), d.offset, d.strides, typed(buf, unit), s.offset, s.strides, s.shape);
  } finally {
    if (fromScratch) releaseScratch(buf);
  }
}

/** Gathers through an arena buffer at a time (each holds one more copy of the rows it gathers). */
const gathers = pLimit(2);
/** Larger gathers (the CPU forward's ring chunks) keep the JS kernels: their extra copy would not fit its --max-memory account. */
const GATHER_MAX = 16 * 2 ** 20;

/**
 * Materialise a view as contiguous bytes in its own (canonical) orientation. A strided view is
 * gathered in an arena buffer and then copied out when `into` is elsewhere (a GPU upload slot, the
 * heap) and it is at most GATHER_MAX bytes, two such gathers at a time: the SIMD transposes run on the worker
 * threads only between arena buffers, and the JS kernels they replace took 10.8 s of the main
 * thread in a WebGPU verify of a 5.3 GiB nemo conversion on the H100 host.
 */
export async function materialize(v: View, into?: Buffer): Promise<Buffer> {
  const buf = into ? into.subarray(0, v.nbytes) : allocAligned(v.nbytes);
  if (v.isContiguous() || arena.holds(buf) || v.nbytes > GATHER_MAX) {
    await copyView(v, View.ofBuffer(buf, v.dtype, v.shape));
    return buf;
  }
  await gathers(async () => {
    const tmp = arena.alloc(v.nbytes);
    try {
      await copyView(v, View.ofBuffer(tmp ?? buf, v.dtype, v.shape));
      if (tmp) buf.set(tmp.subarray(0, v.nbytes));
    } finally {
      if (tmp) arena.release(tmp);
    }
  });
  return buf;
}

/**
 * Views of equal dtype joined along `dim` (their other dims equal), as one contiguous view whose
 * bytes are built when first copied: expert-TP slices merged back, Fast-LLM's shared-expert slots
 * read as one shared MLP. Each part is read on every copy of the result, so keep them small.
 */
export function concatView(parts: readonly View[], dim: number): View {
  const v0 = parts[0];
  if (!v0) throw new MoekitError('internal', 'internal: concatView of nothing');
  if (parts.length === 1) return v0;
  const shape = [...v0.shape];
  shape[dim] = parts.reduce((a, p) => a + p.shape[dim]!, 0);
  const load = async (): Promise<Buffer> => {
    const buf = allocAligned(shape.reduce((x, y) => x * y, 1) * dtypeSize(v0.dtype));
    const whole = View.ofBuffer(buf, v0.dtype, shape);
    let at = 0;
    for (const p of parts) {
      await copyView(p, whole.slice(dim, at, at + p.shape[dim]!));
      at += p.shape[dim]!;
    }
    return buf;
  };
  return new View({ kind: 'lazy', load }, v0.dtype, 0, shape, contiguousStrides(shape));
}

// ---------------------------------------------------------------------------------------------
// The model-level IR

/** Fields of one expert, canonical orientation. */
export interface ExpertIR {
  gate?: View; // [I,H]; absent for non-gated experts
  up: View; // [I,H]
  down: View; // [H,I]
  gate_bias?: View; // [I]
  up_bias?: View; // [I]
  down_bias?: View; // [H]
}

export type ExpertField = keyof ExpertIR;
export const EXPERT_FIELDS: readonly ExpertField[] = ['gate', 'up', 'down', 'gate_bias', 'up_bias', 'down_bias'];

/** Fields of one MoE layer outside the routed experts. */
export interface LayerFields {
  router?: View; // [E,H]
  router_bias?: View; // [E]
  score_bias?: View; // [E] score-correction bias (selection only)
  shared_gate_proj?: View; // [Is,H]
  shared_up?: View; // [Is,H]
  shared_down?: View; // [H,Is]
  shared_gate?: View; // [1,H] sigmoid gate on the shared-expert output
  out_bias?: View; // [H] added to the block's output (JetMoE mlp.bias)
  router_scale?: View; // [H] per-feature scale of the router input (Gemma-4 router.scale, Fast-LLM router_scale)
  expert_scale?: View; // [E] per-expert scale of the routing weights after top-k (Gemma-4 per_expert_scale)
  pre_norm?: View; // [H] RMSNorm weight on the experts' input (Gemma-4 pre_feedforward_layernorm_2)
  post_norm?: View; // [H] RMSNorm weight on the block's output (Gemma-4 post_feedforward_layernorm_2)
}
export type LayerField = keyof LayerFields;
/** Every layer field, in a record so that the compiler refuses a field left out (a left-out field would be silently dropped by conversions). */
const LAYER_FIELD_SET: Record<LayerField, true> = {
  router: true,
  router_bias: true,
  score_bias: true,
  shared_gate_proj: true,
  shared_up: true,
  shared_down: true,
  shared_gate: true,
  out_bias: true,
  router_scale: true,
  expert_scale: true,
  pre_norm: true,
  post_norm: true,
};
export const LAYER_FIELDS = Object.keys(LAYER_FIELD_SET) as readonly LayerField[];

export interface LayerIR extends LayerFields {
  layer: number;
  /** Experts of this layer, in local order (after a selection: renumbered 0..k-1). */
  experts: ExpertIR[];
  /** Global expert ids of `experts` (identity unless selected for an EP rank). */
  globalIds: number[];
}

export interface Dims {
  /** experts held (local count after a selection) */
  E: number;
  /** router rows: all experts of the model (= E unless experts were selected) */
  Er: number;
  H: number;
  I: number;
  /** shared-expert intermediate size (0 = none) */
  Is: number;
  gated: boolean;
}

export function layerDims(l: LayerIR): Dims {
  const e0 = l.experts[0];
  if (!e0) throw new MoekitError('unsupported', `layer ${l.layer}: no experts`);
  return {
    E: l.experts.length,
    Er: l.router?.shape[0] ?? l.experts.length,
    H: e0.down.shape[0]!,
    I: e0.up.shape[0]!,
    Is: l.shared_up?.shape[0] ?? 0,
    gated: e0.gate !== undefined,
  };
}

export interface ModelIR {
  family: string;
  modelType: string;
  routing: Routing | null;
  activation: Activation | null;
  /** name root of HF-style layer tensors ('model.' in model.layers.<n>.) */
  hfRoot: string;
  layers: LayerIR[];
  /** Source tensors that are not part of the expert IR: written unchanged. */
  passthrough: { store: TensorStore; info: TensorInfo }[];
}

/**
 * Keep only the given global experts of every layer, renumbered locally 0..k-1 in the order given
 * (expert-parallel shards: contiguous or round-robin placement). Router rows stay global: a rank
 * still scores all E experts.
 */
export function selectExperts(ir: ModelIR, globalIds: readonly number[]): ModelIR {
  return {
    ...ir,
    layers: ir.layers.map((l) => {
      const experts = globalIds.map((g) => {
        const i = l.globalIds.indexOf(g);
        if (i < 0) throw new MoekitError('unsupported', `layer ${l.layer} has no expert ${g}`);
        return l.experts[i]!;
      });
      return { ...l, experts, globalIds: [...globalIds] };
    }),
  };
}

/**
 * Expert tensor parallelism: keep slice `rank` of `size` of every expert's intermediate dim —
 * gate/up rows, down columns, gate/up bias; the down bias (added once after the row-parallel
 * reduction) stays on rank 0 only unless `downBias: 'all'`.
 */
export function sliceIntermediate(ir: ModelIR, rank: number, size: number, opts: { downBias?: 'rank0' | 'all' } = {}): ModelIR {
  return {
    ...ir,
    layers: ir.layers.map((l) => {
      const { I } = layerDims(l);
      if (I % size !== 0) throw new MoekitError('unsupported', `layer ${l.layer}: expert intermediate size ${I} is not divisible by ${size}`);
      const a = (rank * I) / size;
      const b = ((rank + 1) * I) / size;
      const experts = l.experts.map((e) => {
        const out: ExpertIR = { up: e.up.slice(0, a, b), down: e.down.slice(1, a, b) };
        if (e.gate) out.gate = e.gate.slice(0, a, b);
        if (e.gate_bias) out.gate_bias = e.gate_bias.slice(0, a, b);
        if (e.up_bias) out.up_bias = e.up_bias.slice(0, a, b);
        if (e.down_bias && (rank === 0 || opts.downBias === 'all')) out.down_bias = e.down_bias;
        return out;
      });
      return { ...l, experts };
    }),
  };
}
