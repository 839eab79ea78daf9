/**
 * Host side of the WebGPU MoE block forward (kernels/*.wgsl):
 *   router_logits → router_select → gather (token lists per expert)
 *   → expert_up / expert_down per weight piece (grouped, register-blocked GEMMs)
 *   → combine (deterministic weighted sum of each token's slots + gated shared experts).
 * Large weights: every binding stays within the adapter's maxStorageBufferBindingSize /
 * maxBufferSize. Experts are packed into pieces of whole experts when they fit, else an expert
 * is cut into row blocks (pieces are also capped by pieceCap); each piece goes into its own
 * buffer, is dispatched, and released, so a Mixtral-8x7B layer (≈ 117 MB per bf16 matrix) runs on
 * lavapipe's 128 MiB bindings. A piece is uploaded in chunks of whole rows (planUploads, at most
 * the staging slot size): expert matrices may stay on disk (lazy weights); chunks are read straight into a ring of
 * staging buffers (mapped ones on a real GPU, Ctx.slotView) while the ones before go to the GPU, so
 * host memory stays at a few chunks whatever the piece size, and disk reads overlap GPU work.
 * Tokens are batched when activations would exceed one binding (tokens are independent).
 */
import { MoekitError } from '../errors.js';
import type { ForwardResult, Routed } from '../forward/cpu.js';
import { KERNEL_MODES, kernelRoutes, type BlockSpec } from '../forward/routing.js';
import {
  addOutputBias,
  bytesOf,
  dtypeBytes,
  expertI,
  materialize,
  readRange,
  weightF32,
  weightNbytes,
  type ExpertWeights,
  type MoeBlockWeights,
  type Weight,
} from '../forward/weights.js';
import { getGpu, gpuWait, type Gpu } from './device.js';
import { kernel, type KernelName } from './kernels.js';

export interface GpuForwardOptions {
  /** pretend bindings may cover at most this many bytes (tests the chunking path) */
  maxBinding?: number;
  /** largest weight piece one dispatch covers (default pieceCap) */
  pieceBytes?: number;
  /** largest upload staged at once, in each staging slot (default 8 MiB with mapped uploads, 16 MiB without) */
  uploadBytes?: number;
  /** read uploads into mapped staging buffers copied on the GPU (default: on real GPUs) rather than host buffers given to writeBuffer (CPU adapters) */
  mappedUploads?: boolean;
  /** measure GPU time of every kernel with timestamp queries (when the adapter has them) */
  timing?: boolean;
  /**
   * expert GEMM kernel variant: 'stream' (expert_*_stream, the default on real GPUs: each weight
   * row read once for 16 tokens at a time staged in workgroup memory, accumulators in registers,
   * two rows (up) / row pairs (down) per invocation, split-K down projection; shapes
   * MOEKIT_UP_CFG / MOEKIT_DOWN_CFG 'KL[,S[,RW[,C]]]', default 8,1,2,2 / 8,8,2,2; 'gpu' where K is
   * not a multiple of its step or the adapter has less than 32 KiB of workgroup memory), 'gpu'
   * (workgroup streams a row block's weights once, K split across lanes, workgroup reduction) or
   * 'cpu' (register-blocked, no workgroup memory: fast on lavapipe). Measured on an H100 with
   * bench/verify-bench.ts (Mixtral-8x7B layer, 64 tokens, fresh process each, one cold run): stream
   * with these shapes 4.1 ms, stream 8,1,1,1 / 8,8,1,1 6.2 ms, gpu 10.9 ms, torch eager f32 4.6 ms;
   * now (weights a step ahead, 1 GiB pieces) 2.95–3.1 ms steady state (README, Benchmarks).
   * Default: env MOEKIT_GPU_KERNELS, else by adapter.
   */
  kernels?: Variant;
  /** wait for each piece's upload before dispatching its kernel (benchmarks: kernel time alone) */
  syncUploads?: boolean;
  /**
   * with timing: run each expert kernel dispatch this many times back to back on its resident piece
   * (they only write what they do not read, so the output is the same) and count the median run's
   * time: the steady-state kernel time, as torch's is timed, instead of one cold run (benchmarks)
   */
  kernelRepeats?: number;
  /** use this expert selection instead of the block's router (verify across precisions) */
  forced?: Routed;
}

export interface GpuForwardResult extends ForwardResult {
  adapterName: string;
  /** weight pieces dispatched (up + down, all groups, all token batches) */
  pieces: number;
  /** with opts.timing: summed GPU time of all kernels, in ms (undefined without timestamp-query) */
  kernelMs?: number;
  /** with opts.timing: the same per kernel name (expert_up_stream, combine, …) */
  kernelMsBy?: Record<string, number>;
  /** where the forward's wall time went on the host (HostMs) */
  hostMs: HostMs;
}

/**
 * Where a forward's wall time went on the host (ms): setup (the router and biases read and uploaded,
 * pipelines, before the first batch), creating and releasing the pieces' GPU buffers, waiting for
 * weight reads into the staging buffers (from disk, or copies of in-memory weights; a read starts
 * once its staging buffer's last contents are on their way), handing them to the GPU (unmap and copy
 * commands, or writeBuffer), and waiting for the GPU (writeBuffer back-pressure, --sync, timestamp
 * and output readbacks).
 */
export interface HostMs {
  setup: number;
  alloc: number;
  readWait: number;
  write: number;
  gpuWait: number;
}

export interface Piece {
  /** first expert of the piece (index within its group) */
  e0: number;
  nE: number;
  /** output rows [r0, r0 + rows) of each expert */
  r0: number;
  rows: number;
}

const MAX_DISPATCH = 65535;
/**
 * Staging slots and the largest upload staged in each at once: on a real GPU 8 × 8 MiB mapped slots,
 * seven reads in flight (H100, verify-bench, 2.63 GiB: 4 × 16 MiB 208–322 ms, 4 × 32 240, 8 × 16
 * 154, 8 × 8 143–145 against 122–142 ms for the bare read), on a CPU adapter 2 × 16 MiB host buffers.
 * Also the largest piece one dispatch covers (MOEKIT_GPU_PIECE_MIB
 * overrides it for measurements; bindings may be larger: 2 GiB on the H100). Pieces were uploaded
 * whole before uploads were cut from them, so the piece sizes below were chosen for host memory.
 * On a CPU adapter (lavapipe, whose device
 * memory is host memory) 16 MiB: verify of a 5.8 GB Mixtral-8x7B-shaped checkpoint against its nemo
 * conversion peaked at 629 MiB with 32 MiB pieces, 471–486 MiB with 16 (47 → 49 s). On a real GPU 1 GiB
 * (bounded by the binding limit): smaller pieces split an expert's rows, or a layer's experts, over more,
 * emptier dispatches (H200, 32 MiB pieces: kernel time of a Mixtral-8x7B layer 8.7 → 15.2 ms; H100,
 * bench/verify-bench.ts, a fresh process each: 128 MiB pieces (one expert per dispatch) 4.3 ms,
 * 1 GiB (all 8) 3.6 ms). Host memory does not grow with it (uploads are cut at the slot size); GPU memory
 * holds about two pieces, so a GPU with less than ~6 GB wants MOEKIT_GPU_PIECE_MIB=128.
 */
const staging = (mapped: boolean) => {
  // MOEKIT_GPU_STAGING='<slots>,<MiB>' (tuning: bench/verify-bench.ts)
  const env = process.env.MOEKIT_GPU_STAGING;
  if (env) {
    const [slots = 0, mib = 0, more] = env.split(',').map(Number);
    if (!(more === undefined && Number.isInteger(slots) && slots >= 2 && slots <= 64 && mib >= 1 && mib <= 256))
      throw new MoekitError('gpu', `bad MOEKIT_GPU_STAGING '${env}' (<slots>,<MiB>: 2 to 64 slots of 1 to 256 MiB)`);
    return { slots, bytes: Math.round(mib * 2 ** 20) };
  }
  return mapped ? { slots: 8, bytes: 8 * 2 ** 20 } : { slots: 2, bytes: 16 * 2 ** 20 };
};
const pieceCap = (fallback: boolean) => (Number(process.env.MOEKIT_GPU_PIECE_MIB) || (fallback ? 16 : 1024)) * 2 ** 20;

/**
 * Cut E experts of [N, K] matrices (elemBytes each) into pieces of at most maxBytes: whole experts
 * together when one fits, else row blocks (multiples of 4 rows) of one expert.
 */
export function planPieces(E: number, N: number, K: number, elemBytes: number, maxBytes: number): Piece[] {
  const rowBytes = K * elemBytes;
  const perExpert = N * rowBytes;
  const out: Piece[] = [];
  if (perExpert <= maxBytes) {
    const per = Math.max(1, Math.min(E, Math.floor(maxBytes / perExpert), MAX_DISPATCH));
    for (let e0 = 0; e0 < E; e0 += per) out.push({ e0, nE: Math.min(per, E - e0), r0: 0, rows: N });
    return out;
  }
  const rows = Math.floor(maxBytes / rowBytes / 4) * 4;
  if (rows < 4)
    throw new MoekitError('gpu', `a 4-row block of a [${N}, ${K}] expert matrix (${4 * rowBytes} bytes) exceeds the GPU's ${maxBytes}-byte binding limit`);
  for (let e = 0; e < E; e++) for (let r0 = 0; r0 < N; r0 += rows) out.push({ e0: e, nE: 1, r0, rows: Math.min(rows, N - r0) });
  return out;
}

const DT = { F32: 0, BF16: 1, F16: 2 } as const;
const ACT = { swiglu: 0, geglu: 1, geglu_tanh: 2, relu2: 3, swiglu_oai: 4, swiglu_clamped: 5 } as const;
const MAX_E = 512;

type U = GPUBufferUsageFlags;

/** The size a GPU buffer of `bytes` is created with: a multiple of 16, at least 16. */
const bufferSize = (bytes: number) => Math.max(16, Math.ceil(bytes / 16) * 16);

/** A staging slot: a mapped GPU buffer (real GPUs) or a host buffer (writeBuffer); ready: false when its mapping failed. */
interface Slot {
  buf?: GPUBuffer;
  host?: Buffer;
  size: number;
  ready: Promise<boolean>;
  /** its bytes were handed out (slotView) and not yet to the GPU (flushSlot) */
  viewed?: boolean;
}
/**
 * Buffers a device keeps between forwards, so that a multi-layer verify creates them once: the
 * staging slots and (real GPUs) the MAX_IDLE_PIECES largest idle weight-piece buffers, reused by exact size (within a
 * forward too: the down projection's piece takes the up projection's gate buffer; the queue runs in
 * order, so its upload lands after the up kernel has read it). Creating them took ~100 ms per forward
 * on the H100 (three 1 GiB pieces ~48 ms, 64 MiB of mapped slots ~50 ms). A forward holds the cache
 * while it runs; one running beside it gets buffers of its own.
 */
interface DeviceCache {
  busy: boolean;
  slots: Slot[];
  pieces: GPUBuffer[];
}
const MAX_IDLE_PIECES = 3;
const caches = new Map<GPUDevice, DeviceCache>();

/** Free the buffers kept between forwards (staging slots, idle pieces) of every device not in use. */
export function releaseGpuBuffers(): void {
  for (const [device, c] of caches) {
    if (c.busy) continue;
    freeCache(c);
    caches.delete(device);
  }
}
function freeCache(c: DeviceCache): void {
  for (const s of c.slots) s.buf?.destroy();
  for (const b of c.pieces) b.destroy();
  c.slots = [];
  c.pieces = [];
}

class Ctx {
  readonly device: GPUDevice;
  /** buffers of the current token batch, and of the current weight piece */
  batch: GPUBuffer[] = [];
  piece: GPUBuffer[] = [];
  private pendingBytes = 0;
  /** bytes given to writeBuffer before waiting for the queue: Dawn keeps a copy of each until the GPU has used it */
  private readonly pendingCap: number;
  pieces = 0;
  /** host time by phase (GpuForwardResult.hostMs) */
  readonly hostMs: HostMs = { setup: 0, alloc: 0, readWait: 0, write: 0, gpuWait: 0 };
  /** Wait for the GPU, counted in hostMs.gpuWait. */
  async gpuIdle(): Promise<void> {
    const t = performance.now();
    await gpuWait(this.gpu, () => this.device.queue.onSubmittedWorkDone());
    this.hostMs.gpuWait += performance.now() - t;
  }
  /**
   * The staging slots uploads are read into (staging()), reused: on a real GPU mapped buffers (MAP_WRITE |
   * COPY_SRC) filled while mapped (straight from disk for lazy weights), copied into the piece on
   * the GPU and mapped again; writeBuffer would copy every byte once more on the host, into fresh
   * staging memory of Dawn's (1.4 GB/s on the H100 host, against 5.1–5.4 GB/s for reads into these:
   * scripts/device/upload-probe.mjs). On a CPU adapter (lavapipe), host buffers and writeBuffer:
   * there the mapped slots made verify slower (a slot waits for its copy, queued behind the
   * kernels, which are the CPU's work too).
   */
  private readonly cache: DeviceCache;
  /** The bytes (at least `bytes`) of staging slot i, once its last contents are on their way to the GPU. */
  async slotView(i: number, bytes: number): Promise<Buffer> {
    const slots = this.cache.slots;
    let s = slots[i];
    // not counted in hostMs.gpuWait: the forward waits for it as part of the upload's read (readWait)
    const ok = s ? await s.ready : false;
    // a slot still viewed was left behind by a forward that failed between its read and its copy
    if (!s || !ok || s.viewed || s.size < bytes || !!s.buf !== this.mapped) {
      s?.buf?.destroy();
      const size = bufferSize(bytes);
      const usage = GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC;
      s = slots[i] = this.mapped
        ? { buf: this.device.createBuffer({ size, usage, mappedAtCreation: true, label: 'upload staging' }), size, ready: Promise.resolve(true) }
        : { host: Buffer.allocUnsafeSlow(size), size, ready: Promise.resolve(true) };
    }
    s.viewed = true;
    return s.buf ? Buffer.from(s.buf.getMappedRange(0, s.size)) : s.host!;
  }
  /** Hand ranges of slot i (filled) to GPU buffers. Returns the bytes given to writeBuffer (for uploaded()). */
  flushSlot(i: number, copies: { dst: GPUBuffer; dstOffset: number; srcOffset: number; size: number }[]): number {
    const s = this.cache.slots[i]!;
    s.viewed = false;
    if (!s.buf) {
      for (const c of copies) this.write(c.dst, c.dstOffset, s.host!.subarray(c.srcOffset, c.srcOffset + c.size));
      return copies.reduce((a, c) => a + c.size, 0);
    }
    s.buf.unmap();
    const enc = this.device.createCommandEncoder();
    for (const c of copies) enc.copyBufferToBuffer(s.buf, c.srcOffset, c.dst, c.dstOffset, c.size);
    this.device.queue.submit([enc.finish()]);
    // a failed mapping (a destroyed buffer, a lost device) makes slotView create a new slot
    s.ready = s.buf.mapAsync(GPUMapMode.WRITE).then(
      () => true,
      () => false,
    );
    return 0;
  }
  /** recorded intervals: names[i] is the kernel of intervals [runs[i], runs[i + 1]) (its repeats) */
  private queries?: { set: GPUQuerySet; n: number; cap: number; ns: number; names: string[]; runs: number[]; by: Record<string, number> };
  constructor(
    readonly gpu: Gpu,
    timing: boolean,
    readonly pieceBytes: number,
    readonly uploadBytes: number,
    /** runs of each repeatable dispatch when timing (kernelRepeats) */
    readonly repeats = 1,
    /** uploads through mapped staging buffers (slotView) */
    readonly mapped: boolean,
  ) {
    this.device = gpu.device;
    this.pendingCap = 2 * uploadBytes;
    let c = caches.get(this.device);
    if (!c) caches.set(this.device, (c = { busy: false, slots: [], pieces: [] }));
    this.cache = c.busy ? { busy: true, slots: [], pieces: [] } : c;
    this.cache.busy = true;
    if (timing && gpu.timestamps)
      this.queries = { set: this.device.createQuerySet({ type: 'timestamp', count: 512 }), n: 0, cap: 512, ns: 0, names: [], runs: [], by: {} };
  }
  /** Read back and sum the recorded kernel intervals (call when the queue is idle or before waiting on it). */
  async drainTimestamps(): Promise<void> {
    const q = this.queries;
    if (!q || q.n === 0) return;
    const bytes = q.n * 8;
    const res = this.buffer(bytes, GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC, 'timestamps');
    const rb = this.buffer(bytes, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, 'timestamps readback');
    const enc = this.device.createCommandEncoder();
    enc.resolveQuerySet(q.set, 0, q.n, res, 0);
    enc.copyBufferToBuffer(res, 0, rb, 0, bytes);
    this.device.queue.submit([enc.finish()]);
    const tw = performance.now();
    await gpuWait(this.gpu, () => rb.mapAsync(GPUMapMode.READ));
    this.hostMs.gpuWait += performance.now() - tw;
    const t = new BigInt64Array(rb.getMappedRange().slice(0));
    q.runs.push(q.n / 2);
    for (const [i, name] of q.names.entries()) {
      const ds: number[] = [];
      for (let j = q.runs[i]!; j < q.runs[i + 1]!; j++) ds.push(Number(t[2 * j + 1]! - t[2 * j]!));
      const d = ds.sort((a, b) => a - b)[(ds.length - 1) >> 1]!;
      q.ns += d;
      q.by[name] = (q.by[name] ?? 0) + d / 1e6;
    }
    q.names = [];
    q.runs = [];
    rb.unmap();
    res.destroy();
    rb.destroy();
    q.n = 0;
  }
  get kernelMs(): number | undefined {
    return this.queries ? this.queries.ns / 1e6 : undefined;
  }
  get kernelMsBy(): Record<string, number> | undefined {
    return this.queries?.by;
  }
  destroy(): void {
    this.queries?.set.destroy();
    if (caches.get(this.device) === this.cache) this.cache.busy = false;
    else freeCache(this.cache);
  }
  /** A weight piece's buffer: an idle one of the same size if the device keeps one, else a new one. */
  pieceBuffer(bytes: number, label: string): GPUBuffer {
    const size = bufferSize(bytes);
    const i = this.cache.pieces.findIndex((b) => b.size === size);
    const b = i >= 0 ? this.cache.pieces.splice(i, 1)[0]! : this.buffer(size, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, label);
    this.pieceBufs.push(b);
    return b;
  }
  /** the current piece's weight buffers (kept idle for reuse when it is released) */
  private pieceBufs: GPUBuffer[] = [];
  buffer(size: number, usage: U, label?: string, owner?: GPUBuffer[]): GPUBuffer {
    const b = this.device.createBuffer({ size: bufferSize(size), usage, label });
    owner?.push(b);
    return b;
  }
  storage(data: ArrayBufferView | number, label: string, owner: GPUBuffer[]): GPUBuffer {
    const size = typeof data === 'number' ? data : data.byteLength;
    const b = this.buffer(size, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC, label, owner);
    if (typeof data !== 'number' && data.byteLength > 0) this.write(b, 0, data);
    return b;
  }
  write(b: GPUBuffer, offset: number, data: ArrayBufferView): void {
    const u8 = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const n = u8.byteLength & ~3;
    if (n > 0) this.device.queue.writeBuffer(b, offset, u8.buffer, u8.byteOffset, n);
    if (n < u8.byteLength) {
      const tail = new Uint8Array(4);
      tail.set(u8.subarray(n));
      this.device.queue.writeBuffer(b, offset + n, tail);
    }
  }
  uniform(vals: number[], floats: number[] = []): GPUBuffer {
    const n = Math.ceil(vals.length / 4) * 4;
    const a = new Uint32Array(n);
    a.set(vals.map((v) => v >>> 0));
    const f = new Float32Array(a.buffer);
    for (const i of floats) f[i] = vals[i]!;
    const b = this.buffer(a.byteLength, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, 'params', this.piece);
    this.device.queue.writeBuffer(b, 0, a);
    return b;
  }
  /** One kernel dispatch (repeatable: it writes nothing it reads; timed runs repeat it this.repeats times). */
  dispatch(name: KernelName, constants: Record<string, number>, buffers: GPUBuffer[], groups: [number, number, number], repeatable = false): void {
    const k = kernel(this.device, name, constants);
    const bg = this.device.createBindGroup({ layout: k.layout, entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })) });
    const enc = this.device.createCommandEncoder();
    const q = this.queries;
    if (q) {
      q.names.push(name);
      q.runs.push(q.n / 2);
    }
    for (let i = q && repeatable ? this.repeats : 1; i > 0; i--) {
      const pass = enc.beginComputePass(q ? { timestampWrites: { querySet: q.set, beginningOfPassWriteIndex: q.n, endOfPassWriteIndex: q.n + 1 } } : undefined);
      if (q) q.n += 2;
      pass.setPipeline(k.pipeline);
      pass.setBindGroup(0, bg);
      pass.dispatchWorkgroups(...groups);
      pass.end();
    }
    this.device.queue.submit([enc.finish()]);
  }
  /** Timestamp slots left before a drain is needed. */
  get needsDrain(): boolean {
    return !!this.queries && this.queries.n + 16 + 2 * this.repeats > this.queries.cap;
  }
  /** Count bytes given to writeBuffer; wait for the queue when many were since the last wait (bounds Dawn's staging memory). */
  async uploaded(bytes: number): Promise<void> {
    this.pendingBytes += bytes;
    if (this.pendingBytes > this.pendingCap) {
      await this.gpuIdle();
      this.pendingBytes = 0;
    }
  }
  /** Release the piece's buffers (after its submit). */
  async releasePiece(): Promise<void> {
    const t = performance.now();
    for (const b of this.piece) b.destroy();
    this.piece = [];
    this.keepPieces();
    this.hostMs.alloc += performance.now() - t;
    if (this.needsDrain) await this.drainTimestamps();
  }
  releaseBatch(): void {
    for (const b of [...this.piece, ...this.batch]) b.destroy();
    this.piece = [];
    this.batch = [];
    this.keepPieces();
  }
  /**
   * Move the piece's weight buffers to the idle ones, keeping the MAX_IDLE_PIECES largest (the
   * costliest to create); none on a CPU adapter, whose device memory is host memory (--max-memory).
   */
  private keepPieces(): void {
    const idle = this.cache.pieces;
    idle.push(...this.pieceBufs);
    this.pieceBufs = [];
    idle.sort((a, b) => b.size - a.size);
    for (const b of idle.splice(this.mapped ? MAX_IDLE_PIECES : 0)) b.destroy();
  }
}

const f32 = (w?: Weight): Float32Array | undefined => (w ? weightF32(w) : undefined);
const ceil = (a: number, b: number) => Math.ceil(a / b);

interface Group {
  experts: ExpertWeights[];
  I: number;
  gated: boolean;
  /** routed group: lists from gather; shared: every token, slot K + s */
  dense: boolean;
  slot: number;
  upPieces: Piece[];
  downPieces: Piece[];
  bias: Float32Array | undefined;
  downBias: Float32Array | undefined;
}

function groupBiases(experts: ExpertWeights[], I: number, H: number): { bias?: Float32Array; downBias?: Float32Array } {
  const any = experts.some((e) => e.gateBias || e.upBias);
  const anyD = experts.some((e) => e.downBias);
  const n = experts.length;
  let bias: Float32Array | undefined;
  let downBias: Float32Array | undefined;
  if (any) {
    bias = new Float32Array(2 * n * I);
    experts.forEach((e, i) => {
      const g = f32(e.gateBias);
      const u = f32(e.upBias);
      if (g) bias!.set(g, i * I);
      if (u) bias!.set(u, (n + i) * I);
    });
  }
  if (anyD) {
    downBias = new Float32Array(n * H);
    experts.forEach((e, i) => {
      const d = f32(e.downBias);
      if (d) downBias!.set(d, i * H);
    });
  }
  return { bias, downBias };
}

function checkShapes(w: MoeBlockWeights, spec: BlockSpec, forced?: Routed): void {
  const H = w.hidden;
  const bad = (msg: string): never => {
    throw new MoekitError('gpu', `WebGPU forward: ${msg}; run with --cpu`);
  };
  if (H % 4 !== 0) bad(`hidden size ${H} is not a multiple of 4`);
  for (const e of [...w.experts, ...w.shared]) if (expertI(e) % 4 !== 0) bad(`expert intermediate size ${expertI(e)} is not a multiple of 4`);
  for (const kind of ['gate', 'up', 'down'] as const) {
    const dts = new Set(w.experts.map((e) => e[kind]?.dtype));
    if (dts.size > 1) bad(`routed experts store ${kind} in different dtypes (${[...dts].join(', ')})`);
  }
  const E = w.experts.length;
  if (E > MAX_E) bad(`${E} experts (the router kernel handles at most ${MAX_E})`);
  const r = spec.routing;
  if (E > 0) {
    if (w.preNorm || w.postNorm) bad('block norms are applied around the forward (src/forward/block-norms.ts), not in it');
    if (!kernelRoutes(r, w) && !forced) bad(`routing '${r.scoreFunc}' is not supported without a given selection (verify routes it on the CPU)`);
    if (r.topK < 1 || r.topK > E) bad(`top-k ${r.topK} with ${E} experts`);
    if (r.nGroup > 1 && (r.nGroup > 64 || E % r.nGroup !== 0 || r.topkGroup > r.nGroup))
      bad(`n_group ${r.nGroup} / topk_group ${r.topkGroup} with ${E} experts`);
  }
}

/** One expert matrix's rows [start, end) (bytes of the weight), going to byte `offset` of the piece's `kind` buffer. */
interface Segment {
  kind: 'gate' | 'up' | 'down';
  w: Weight;
  start: number;
  end: number;
  offset: number;
}
/** The bytes of one or more segments of one piece (job), read and uploaded together: at most the upload size. */
interface Upload {
  job: number;
  segs: Segment[];
  bytes: number;
}
type Job = { g: Group; gi: number; p: Piece; up: boolean };

const jobKinds = (job: Job): Segment['kind'][] => (job.up ? (job.g.gated ? ['gate', 'up'] : ['up']) : ['down']);

/** Bytes of a job's buffer of one kind: rows of its experts' matrices. */
function jobBytes(job: Job, kind: Segment['kind'], H: number): number {
  const K = job.up ? H : job.g.I;
  return job.p.nE * job.p.rows * K * dtypeBytes(job.g.experts[0]![kind]!.dtype);
}

/**
 * Cut the pieces' bytes into uploads of at most `cap` bytes (whole rows; an upload never spans two
 * pieces), in dispatch order: a piece may be much larger than what is staged in host memory at once.
 */
export function planUploads(jobs: Job[], H: number, cap: number): Upload[] {
  const out: Upload[] = [];
  for (const [j, job] of jobs.entries()) {
    const { g, p } = job;
    const K = job.up ? H : g.I;
    let cur: Upload | undefined;
    for (const kind of jobKinds(job)) {
      for (let i = 0; i < p.nE; i++) {
        const w = g.experts[p.e0 + i]![kind]!;
        const rowB = K * dtypeBytes(w.dtype);
        const n = p.rows * rowB;
        const step = Math.max(1, Math.floor(cap / rowB)) * rowB;
        for (let a = 0; a < n; a += step) {
          const len = Math.min(step, n - a);
          if (!cur || cur.bytes + len > cap) out.push((cur = { job: j, segs: [], bytes: 0 }));
          cur.segs.push({ kind, w, start: p.r0 * rowB + a, end: p.r0 * rowB + a + len, offset: i * n + a });
          cur.bytes += len;
        }
      }
    }
  }
  return out;
}

const align4 = (n: number) => Math.ceil(n / 4) * 4;

/** Where an upload's segments go in a staging slot (4-byte aligned, as buffer copies need), and the bytes it takes. */
function stagedOffsets(u: Upload): { offsets: number[]; bytes: number } {
  const offsets: number[] = [];
  let bytes = 0;
  for (const s of u.segs) {
    offsets.push(bytes);
    bytes = align4(bytes + s.end - s.start);
  }
  return { offsets, bytes };
}

/**
 * Read one upload's bytes into staging slot `slot` of at least slotBytes (from memory, or from disk
 * for lazy weights), segment i at offsets[i] (stagedOffsets).
 */
async function fetchUpload(ctx: Ctx, u: Upload, offsets: number[], slot: number, slotBytes: number): Promise<void> {
  const view = await ctx.slotView(slot, slotBytes);
  const reads = u.segs.map(async (s, i) => {
    const into = view.subarray(offsets[i]!, offsets[i]! + s.end - s.start);
    const got = await readRange(s.w, s.start, s.end, s.w.data ? undefined : into);
    // in-memory weights, and readers that return their own buffer: copy into the slot
    if (got.buffer !== into.buffer || got.byteOffset !== into.byteOffset) into.set(got);
  });
  await Promise.all(reads);
}

type Variant = 'gpu' | 'stream' | 'cpu';
interface StreamCfg {
  /** lanes along K per row group */
  KL: number;
  /** splits along K (down projection) */
  S: number;
  /** rows per invocation (up: 1 or 2) or row pairs per invocation (down: 1 or 2) */
  RW: number;
  /** workgroups per row block, each taking every C-th chunk of 16 tokens */
  C: number;
}
/** workgroup memory of the stream kernels: 2040 vec4 + 2 × 16 u32 */
const STREAM_WG_BYTES = 32768;

/** Shape of a stream expert kernel ('KL[,S[,RW[,C]]]'; S is ignored by the up projection). */
function streamCfg(env: string | undefined, def: number[]): StreamCfg {
  const v = env ? env.split(',').map(Number) : def;
  const [KL, S = 1, RW = 1, C = 1] = v;
  if (!(v.length <= 4 && v.every((n) => Number.isInteger(n) && n > 0) && [8, 16, 32].includes(KL!) && RW <= 2 && C <= 8))
    throw new MoekitError('gpu', `bad stream kernel shape '${env}' in MOEKIT_UP_CFG / MOEKIT_DOWN_CFG (KL[,S[,RW[,C]]]: KL 8, 16 or 32, RW 1 or 2, C 1 to 8)`);
  return { KL: KL!, S, RW, C };
}

/** Shape constants of a rows-variant expert kernel ('KL,RW,MT'; q accumulator sets per row: 2 gate+up, 1 down). */
function gpuCfg(env: string | undefined, def: number[], q: number): { KL: number; RW: number; MT: number } {
  const v = env ? env.split(',').map(Number) : def;
  const [KL = 0, RW = 0, MT = 0] = v;
  const na = q * RW * MT;
  const ok = v.length === 3 && v.every((n) => Number.isInteger(n) && n > 0);
  if (!(ok && 256 % KL === 0 && KL >= 8 && RW <= 4 && MT <= 16 && na <= 64 && na % 8 === 0 && na * (256 / KL) <= 1024))
    throw new MoekitError('gpu', `bad gpu kernel shape '${env}' in MOEKIT_UP_CFG / MOEKIT_DOWN_CFG (KL,RW,MT)`);
  return { KL, RW, MT };
}

/** Everything the dispatches of one block need: sizes, kernel choices and per-layer GPU constants. */
interface Run {
  ctx: Ctx;
  w: MoeBlockWeights;
  spec: BlockSpec;
  opts: GpuForwardOptions;
  H: number;
  E: number;
  K: number;
  KS: number;
  inScale: number;
  variant: Variant;
  upCfg: { KL: number; RW: number; MT: number };
  downCfg: { KL: number; RW: number; MT: number };
  upStream: StreamCfg;
  downStream: StreamCfg;
  /** K splits of the down projection's contributions (combine adds them) */
  splits: number;
  groups: Group[];
  // per-layer constants (small): router, biases
  dummy: GPUBuffer;
  persistent: GPUBuffer[];
  routerW: GPUBuffer;
  routerB: GPUBuffer;
  corr: GPUBuffer;
  sgW: GPUBuffer;
  gBias: GPUBuffer[];
  dBias: GPUBuffer[];
}

/** Buffers of one batch of tokens. */
interface Batch {
  t0: number;
  tb: number;
  xb: GPUBuffer;
  rw: GPUBuffer;
  meta: GPUBuffer;
  contrib: GPUBuffer;
  sgl: GPUBuffer;
}

/** The routed experts (one group) and each shared expert (a group of one), with their pieces. */
function expertGroups(w: MoeBlockWeights, K: number, B: number, cap: number): Group[] {
  const H = w.hidden;
  const mkGroup = (experts: ExpertWeights[], dense: boolean, slot: number): Group => {
    const I = expertI(experts[0]!);
    const eb = Math.max(...experts.flatMap((e) => [e.up, e.gate, e.down].filter((x): x is Weight => !!x).map((x) => dtypeBytes(x.dtype))));
    const { bias, downBias } = groupBiases(experts, I, H);
    return {
      experts,
      I,
      gated: experts[0]!.gate !== undefined,
      dense,
      slot,
      upPieces: planPieces(experts.length, I, H, eb, Math.min(B, cap)),
      downPieces: planPieces(experts.length, H, I, eb, Math.min(B, cap)),
      bias,
      downBias,
    };
  };
  const groups: Group[] = [];
  if (w.experts.length > 0) groups.push(mkGroup(w.experts, false, 0));
  for (const [i, s] of w.shared.entries()) groups.push(mkGroup([s], true, K + i));
  return groups;
}

/** Whether the stream kernels of this shape run a product along K (they need K % (8·KL) == 0). */
function streams(ctx: Ctx, variant: Variant, K: number, c: StreamCfg): boolean {
  return variant === 'stream' && K % (8 * c.KL) === 0 && ctx.gpu.limits.maxComputeWorkgroupStorageSize >= STREAM_WG_BYTES;
}

/** Upload the router, shared gate and biases; build the Run. */
function prepareRun(ctx: Ctx, w: MoeBlockWeights, spec: BlockSpec, opts: GpuForwardOptions, B: number, fallback: boolean): Run {
  const E = w.experts.length;
  const K = E > 0 ? spec.routing.topK : 0;
  const envK = process.env.MOEKIT_GPU_KERNELS;
  const variant: Variant = opts.kernels ?? (envK === 'gpu' || envK === 'stream' || envK === 'cpu' ? envK : fallback ? 'cpu' : 'stream');
  const upStream = streamCfg(variant === 'stream' ? process.env.MOEKIT_UP_CFG : undefined, [8, 1, 2, 2]);
  const downStream = streamCfg(variant === 'stream' ? process.env.MOEKIT_DOWN_CFG : undefined, [8, 8, 2, 2]);
  const groups = expertGroups(w, K, B, ctx.pieceBytes);
  const dummy = ctx.buffer(16, GPUBufferUsage.STORAGE, 'dummy');
  const persistent: GPUBuffer[] = [dummy];
  const upload = (data: Uint8Array | Float32Array | undefined, label: string): GPUBuffer => {
    if (!data) return dummy;
    const b = ctx.buffer(data.byteLength, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, label);
    ctx.write(b, 0, data);
    persistent.push(b);
    return b;
  };
  if (w.router && weightNbytes(w.router.weight) > B)
    throw new MoekitError('gpu', `router weight (${weightNbytes(w.router.weight)} bytes) exceeds the GPU binding limit`);
  return {
    ctx,
    w,
    spec,
    opts,
    H: w.hidden,
    E,
    K,
    KS: K + w.shared.length,
    inScale: spec.routing.scoreFunc === 'topk_sigmoid_input' ? 1 : 0,
    variant,
    // kernel shapes: lanes along K per row group (stream: and K splits of the down projection;
    // gpu: rows per invocation, tokens per chunk); env MOEKIT_UP_CFG / MOEKIT_DOWN_CFG for
    // tuning (bench/kernel-tune.ts): 'KL' / 'KL,S' for stream, 'KL,RW,MT' for gpu
    upCfg: gpuCfg(variant === 'gpu' ? process.env.MOEKIT_UP_CFG : undefined, [16, 2, 8], 2),
    downCfg: gpuCfg(variant === 'gpu' ? process.env.MOEKIT_DOWN_CFG : undefined, [64, 4, 8], 1),
    upStream,
    downStream,
    splits: groups.every((g) => streams(ctx, variant, g.I, downStream)) ? downStream.S : 1,
    groups,
    dummy,
    persistent,
    routerW: w.router && E > 0 ? upload(bytesOf(w.router.weight), 'router') : dummy,
    routerB: upload(f32(w.router?.bias), 'router bias'),
    corr: upload(f32(w.router?.correctionBias), 'correction bias'),
    sgW: upload(w.sharedGate && bytesOf(w.sharedGate), 'shared gate'),
    gBias: groups.map((g) => upload(g.bias, 'bias')),
    dBias: groups.map((g) => upload(g.downBias, 'down bias')),
  };
}

/** Router logits, top-k selection and token gather for one batch (or all-ones weights for a dense block). */
function dispatchRouting(r: Run, b: Batch): void {
  const { ctx, w, E, K, KS, H, tb } = { ...r, tb: b.tb };
  const forced = r.opts.forced;
  if (E > 0 && forced) {
    // the given selection: ids and weights per token, the shared scale (1 but for Cohere2-MoE's average) for the shared slots
    const ids = ctx.storage(forced.ids.subarray(b.t0 * K, (b.t0 + tb) * K), 'ids', ctx.batch);
    const rw = new Float32Array(tb * KS).fill(r.spec.routing.sharedScale ?? 1);
    for (let t = 0; t < tb; t++) rw.set(forced.weights.subarray((b.t0 + t) * K, (b.t0 + t + 1) * K), t * KS);
    ctx.write(b.rw, 0, rw);
    ctx.dispatch('gather', {}, [ctx.uniform([tb, E, K, KS]), ids, b.meta], [ceil(E, 64), 1, 1]);
  } else if (E > 0) {
    const ids = ctx.storage(tb * K * 4 || 4, 'ids', ctx.batch);
    const logits = ctx.storage(tb * E * 4, 'logits', ctx.batch);
    const lp = ctx.uniform([tb, E, H, w.router?.bias ? 1 : 0]);
    ctx.dispatch('router_logits', { WDT: DT[w.router!.weight.dtype] }, [lp, b.xb, r.routerW, r.routerB, logits], [E, tb, 1]);
    const rt = r.spec.routing;
    const sel = [
      tb,
      E,
      K,
      KS,
      KERNEL_MODES[rt.scoreFunc as keyof typeof KERNEL_MODES],
      rt.nGroup,
      rt.topkGroup,
      rt.normTopkProb ? 1 : 0,
      w.router?.correctionBias ? 1 : 0,
      rt.routedScalingFactor,
      rt.groupMask === '-inf' ? 1 : 0,
      0,
    ];
    ctx.dispatch('router_select', {}, [ctx.uniform(sel, [9]), logits, r.corr, ids, b.rw], [ceil(tb, 64), 1, 1]);
    ctx.dispatch('gather', {}, [ctx.uniform([tb, E, K, KS]), ids, b.meta], [ceil(E, 64), 1, 1]);
  } else {
    ctx.write(b.rw, 0, new Float32Array(tb * KS).fill(1));
  }
  if (w.sharedGate) {
    ctx.dispatch('router_logits', { WDT: DT[w.sharedGate.dtype] }, [ctx.uniform([tb, 1, H, 0]), b.xb, r.sgW, r.dummy, b.sgl], [1, tb, 1]);
  }
}

/** One up-projection piece with the run's kernel variant (K = H). */
function dispatchUp(r: Run, p: Piece, tb: number, c: Record<string, number>, bindings: GPUBuffer[]): void {
  const { ctx, upStream: s, upCfg: u } = r;
  if (streams(ctx, r.variant, r.H, s)) {
    ctx.dispatch('expert_up_stream', { ...c, KL: s.KL, RW: s.RW, C: s.C }, bindings, [ceil(p.rows, (256 / s.KL) * s.RW) * s.C, 1, p.nE], true);
  } else if (r.variant !== 'cpu') ctx.dispatch('expert_up_gpu', { ...c, ...u }, bindings, [ceil(p.rows, (256 / u.KL) * u.RW), 1, p.nE], true);
  else ctx.dispatch('expert_up', c, bindings, [ceil(p.rows, 64), ceil(tb, 16), p.nE], true);
}

/** One down-projection piece with the run's kernel variant (K = I); split-K when the run's splits > 1. */
function dispatchDown(r: Run, p: Piece, tb: number, I: number, DDT: number, bindings: GPUBuffer[]): void {
  const { ctx, downStream: s, downCfg: d } = r;
  if (streams(ctx, r.variant, I, s)) {
    ctx.dispatch(
      'expert_down_stream',
      { DDT, KL: s.KL, S: r.splits, RW: s.RW, C: s.C },
      bindings,
      [ceil(p.rows, (512 / s.KL) * s.RW) * s.C, r.splits, p.nE],
      true,
    );
  } else if (r.variant !== 'cpu') ctx.dispatch('expert_down_gpu', { DDT, ...d }, bindings, [ceil(p.rows, (256 / d.KL) * d.RW), 1, p.nE], true);
  else ctx.dispatch('expert_down', { DDT }, bindings, [ceil(p.rows, 64), ceil(tb, 16), p.nE], true);
}

/** The kernel of one job (an up or down piece), its weights in bufs. */
function dispatchJob(r: Run, b: Batch, job: Job, bufs: Map<string, GPUBuffer>, hbs: GPUBuffer[]): void {
  const { ctx, H, E, KS, tb } = { ...r, tb: b.tb };
  const { g, gi, p } = job;
  const act = r.spec.activation;
  const e0 = g.experts[0]!;
  const params = (Kd: number, N: number, hasBias: boolean) =>
    ctx.uniform([tb, Kd, N, p.r0, p.rows, p.e0, g.dense ? 0 : E, g.dense ? 1 : 0, g.slot, KS, hasBias ? 1 : 0, r.inScale, 0, g.experts.length, 0, 0]);
  if (job.up) {
    const upConst = {
      GDT: DT[e0.gate?.dtype ?? 'F32'],
      UDT: DT[e0.up.dtype],
      GATED: g.gated ? 1 : 0,
      ACT: ACT[act.kind],
      ALPHA: act.alpha ?? 1.702,
      LIMIT: act.limit ?? 3.4e38,
    };
    const bindings = [params(H, g.I, !!g.bias), b.xb, bufs.get('gate') ?? r.dummy, bufs.get('up')!, r.gBias[gi]!, b.meta, b.rw, hbs[gi]!];
    dispatchUp(r, p, tb, upConst, bindings);
  } else {
    const bindings = [params(g.I, H, !!g.downBias), hbs[gi]!, bufs.get('down')!, r.dBias[gi]!, b.meta, b.rw, b.contrib];
    dispatchDown(r, p, tb, g.I, DT[e0.down.dtype], bindings);
  }
}

/**
 * Expert pieces, in order: each group's up pieces, then its down pieces. The bytes of piece j+1
 * are read (from disk for lazy weights) while piece j is uploaded and dispatched.
 */
async function dispatchExperts(r: Run, b: Batch): Promise<void> {
  const { ctx, H, K, tb } = { ...r, tb: b.tb };
  const hbs = r.groups.map((g) => ctx.storage(tb * (g.dense ? 1 : K) * g.I * 4, 'h', ctx.batch));
  const jobs: Job[] = r.groups.flatMap((g, gi) => [...g.upPieces.map((p) => ({ g, gi, p, up: true })), ...g.downPieces.map((p) => ({ g, gi, p, up: false }))]);
  const uploads = planUploads(jobs, H, ctx.uploadBytes);
  // upload i is read into staging slot i % n while the n - 1 uploads after it are read ahead
  // (n = 8 on a real GPU; 2 on a CPU adapter, where reads compete with the kernels for the cores)
  const n = staging(ctx.mapped).slots;
  const staged = uploads.map(stagedOffsets);
  const slotBytes = Math.max(0, ...staged.map((st) => st.bytes));
  const reads: Promise<void>[] = [];
  const fetch = (i: number) => {
    const t = performance.now();
    if (i < uploads.length) {
      const read = fetchUpload(ctx, uploads[i]!, staged[i]!.offsets, i % n, slotBytes);
      // awaited in order below; one failing while another is awaited is not unhandled
      read.catch(() => undefined);
      reads[i % n] = read;
    }
    // the synchronous part: creating the slot's staging buffer on first use
    ctx.hostMs.alloc += performance.now() - t;
  };
  for (let i = 0; i < n - 1; i++) fetch(i);
  let ui = 0;
  try {
    for (const [j, job] of jobs.entries()) {
      const ta = performance.now();
      const bufs = new Map<string, GPUBuffer>(jobKinds(job).map((kind) => [kind, ctx.pieceBuffer(jobBytes(job, kind, H), `${kind} piece`)]));
      ctx.hostMs.alloc += performance.now() - ta;
      for (; ui < uploads.length && uploads[ui]!.job === j; ui++) {
        const tr = performance.now();
        await reads[ui % n];
        ctx.hostMs.readWait += performance.now() - tr;
        const offsets = staged[ui]!.offsets;
        fetch(ui + n - 1);
        const tw = performance.now();
        // whole 4-byte words, as buffer copies need: checkShapes keeps H and I multiples of 4, so every row is
        const written = ctx.flushSlot(
          ui % n,
          uploads[ui]!.segs.map((s, i) => ({ dst: bufs.get(s.kind)!, dstOffset: s.offset, srcOffset: offsets[i]!, size: s.end - s.start })),
        );
        ctx.hostMs.write += performance.now() - tw;
        await ctx.uploaded(written);
      }
      if (r.opts.syncUploads) await ctx.gpuIdle();
      dispatchJob(r, b, job, bufs, hbs);
      ctx.pieces++;
      await ctx.releasePiece();
    }
  } catch (e) {
    // no read may still be filling a staging slot that the next forward is given
    await Promise.allSettled(reads);
    throw e;
  }
}

/** Combine the batch's contributions and read the output and expert counts back. */
async function combineAndRead(r: Run, b: Batch, out: Float32Array, expertCounts: number[]): Promise<void> {
  const { ctx, H, E, K, KS, tb } = { ...r, tb: b.tb };
  const ob = ctx.storage(tb * H * 4, 'out', ctx.batch);
  ctx.dispatch('combine', {}, [ctx.uniform([tb, H / 4, K, KS, r.w.sharedGate ? 1 : 0, r.splits, 0, 0]), b.contrib, b.sgl, ob], [ceil(H / 4, 64), tb, 1]);
  const rbOut = ctx.buffer(tb * H * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, 'readback', ctx.batch);
  const rbMeta = ctx.buffer(Math.max(E, 1) * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, 'readback counts', ctx.batch);
  const enc = ctx.device.createCommandEncoder();
  enc.copyBufferToBuffer(ob, 0, rbOut, 0, tb * H * 4);
  if (E > 0) enc.copyBufferToBuffer(b.meta, 0, rbMeta, 0, E * 4);
  ctx.device.queue.submit([enc.finish()]);
  const tm = performance.now();
  await gpuWait(ctx.gpu, () => Promise.all([rbOut.mapAsync(GPUMapMode.READ), rbMeta.mapAsync(GPUMapMode.READ)]));
  ctx.hostMs.gpuWait += performance.now() - tm;
  out.set(new Float32Array(rbOut.getMappedRange().slice(0)), b.t0 * H);
  const counts = new Uint32Array(rbMeta.getMappedRange().slice(0));
  for (let e = 0; e < E; e++) expertCounts[e]! += counts[e]!;
  rbOut.unmap();
  rbMeta.unmap();
}

/** Tokens per batch: every activation buffer must fit one binding. */
function tokensPerBatch(r: Run, B: number, T: number): number {
  const { H, E, K, KS } = r;
  const perToken = Math.max(r.splits * H * 4 * Math.max(KS, 1), ...r.groups.map((g) => g.I * 4 * (g.dense ? 1 : K)), E * 4, 8 * KS);
  if (perToken + 8 * E > B) throw new MoekitError('gpu', `one token's activations (${perToken} bytes) exceed the GPU's binding limit of ${B} bytes`);
  return Math.min(T, Math.floor((B - 8 * E) / perToken), MAX_DISPATCH * 16);
}

/** Run one MLP block on WebGPU for T tokens x [T, H] (f32). */
export async function forwardGpu(block: MoeBlockWeights, spec: BlockSpec, x: Float32Array, T: number, opts: GpuForwardOptions = {}): Promise<GpuForwardResult> {
  checkShapes(block, spec, opts.forced);
  const tStart = performance.now();
  // router, shared gate and biases in memory; expert matrices may stay on disk (streamed below)
  const w = await materialize(block, false);
  const gpu = await getGpu();
  const piece = Math.min(opts.pieceBytes ?? Infinity, pieceCap(gpu.fallback));
  const repeats = opts.kernelRepeats ?? 1;
  if (!(Number.isInteger(repeats) && repeats >= 1 && repeats <= 64)) throw new MoekitError('usage', `kernelRepeats must be 1 to 64, not ${repeats}`);
  const B = Math.min(gpu.maxBinding, opts.maxBinding ?? Infinity);
  const H = w.hidden;
  const out = new Float32Array(T * H);
  const expertCounts = new Array<number>(w.experts.length).fill(0);
  // takes the device's kept buffers until ctx.destroy() below
  const mapped = opts.mappedUploads ?? !gpu.fallback;
  const ctx = new Ctx(gpu, !!opts.timing, piece, Math.min(piece, opts.uploadBytes ?? Infinity, staging(mapped).bytes), repeats, mapped);
  ctx.device.pushErrorScope('validation');
  ctx.device.pushErrorScope('out-of-memory');
  let r: Run | undefined;
  let errs: GPUError[] = [];
  try {
    r = prepareRun(ctx, w, spec, opts, B, gpu.fallback);
    // split-K partials multiply the contributions' size: not at the price of another pass over the weights
    if (r.splits > 1 && tokensPerBatch(r, B, T) < T) r.splits = 1;
    const Tb = tokensPerBatch(r, B, T);
    ctx.hostMs.setup = performance.now() - tStart;
    for (let t0 = 0; t0 < T; t0 += Tb) {
      const tb = Math.min(Tb, T - t0);
      const b: Batch = {
        t0,
        tb,
        xb: ctx.storage(x.subarray(t0 * H, (t0 + tb) * H), 'x', ctx.batch),
        rw: ctx.storage(tb * Math.max(r.KS, 1) * 4, 'routing weights', ctx.batch),
        meta: ctx.storage((2 * r.E + tb * r.K) * 4 || 4, 'expert lists', ctx.batch),
        contrib: ctx.storage(r.splits * tb * Math.max(r.KS, 1) * H * 4, 'contrib', ctx.batch),
        sgl: w.sharedGate ? ctx.storage(tb * 4, 'shared gate logits', ctx.batch) : r.dummy,
      };
      dispatchRouting(r, b);
      await ctx.releasePiece();
      await dispatchExperts(r, b);
      await combineAndRead(r, b, out, expertCounts);
      await ctx.drainTimestamps();
      ctx.releaseBatch();
    }
  } finally {
    ctx.releaseBatch();
    for (const b of r?.persistent ?? []) b.destroy();
    ctx.destroy();
    errs = [await ctx.device.popErrorScope(), await ctx.device.popErrorScope()].filter((x): x is GPUError => x !== null);
  }
  // reached only when nothing threw first: then a WebGPU validation / out-of-memory error is the failure
  if (errs.length > 0) throw new MoekitError('gpu', `WebGPU: ${errs[0]!.message.split('\n')[0]}`);
  addOutputBias(w, out, T);
  return { out, expertCounts, adapterName: gpu.adapterName, pieces: ctx.pieces, kernelMs: ctx.kernelMs, kernelMsBy: ctx.kernelMsBy, hostMs: ctx.hostMs };
}
