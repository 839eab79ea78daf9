/**
 * The CPU forward `moekit verify` runs without a GPU (and with --cpu): the block of
 * ./cpu.ts (the f64 oracle) computed expert by expert as matmuls over the tokens routed to each,
 * on WebAssembly SIMD kernels in worker threads (./wasm-pool.ts). Expert matrices stream from disk
 * into the kernels' memory in row chunks, the next chunk read while the current one is multiplied,
 * so a layer is never held whole; bf16 stays bf16 (the kernel widens it), f16 is widened on the way
 * in. Dot products accumulate in f32 (as torch and the WebGPU kernels do), the combination of expert
 * outputs in f64. Blocks whose sizes are not multiples of 8 run on the oracle.
 */
import { toFloat32 } from '../engine/cast.js';
import { forwardCpu, routeAll, sharedGate, type ForwardResult, type Routed } from './cpu.js';
import { activate, type BlockSpec } from './routing.js';
import { addOutputBias, dtypeBytes, expertI, materialize, readRange, weightF32, type ExpertWeights, type MoeBlockWeights, type Weight } from './weights.js';
import { wasmPool, type MatmulKind, type WasmPool } from './wasm-pool.js';

/** bytes of one streamed chunk of an expert matrix (a ring of RING of them: one multiplied, the rest being read) */
/** default bytes of weight rows per ring buffer (verify --max-memory asks for less) */
const CHUNK = 32 << 20;

const align = (n: number) => Math.ceil(n / 64) * 64;
const kindOf = (w: Weight): MatmulKind => (w.dtype === 'BF16' ? 'bf16' : 'f32');

/** Byte offsets of the working buffers in the pool's memory. */
interface Layout {
  a: number;
  h: number;
  cg: number;
  cu: number;
  cy: number;
  /** ring of chunk buffers: chunks are read ahead while earlier ones are multiplied */
  ring: number[];
}

const RING = 3;

function layoutFor(pool: WasmPool, n4: number, H: number, I: number, chunkBytes: number): Layout {
  const chunk = align(Math.max(chunkBytes, 2 * Math.max(H, I) * 4));
  let at = 0;
  const take = (bytes: number) => {
    const o = at;
    at += align(bytes);
    return o;
  };
  const l: Layout = {
    a: take(n4 * H * 4),
    h: take(n4 * I * 4),
    cg: take(n4 * I * 4),
    cu: take(n4 * I * 4),
    cy: take(n4 * H * 4),
    ring: Array.from({ length: RING }, () => take(chunk)),
  };
  pool.reserve(at);
  return l;
}

/** Write rows (each K floats) as A [n4, K], zero rows after them; for a bf16 B each 8-block is stored even-first (see the kernel). */
function writeA(pool: WasmPool, off: number, rows: Float32Array[], n4: number, K: number, kind: MatmulKind): void {
  const a = pool.f32(off, n4 * K);
  a.fill(0, rows.length * K);
  rows.forEach((r, t) => {
    const o = t * K;
    if (kind === 'f32') {
      a.set(r, o);
      return;
    }
    for (let k = 0; k < K; k += 8)
      for (let j = 0; j < 4; j++) {
        a[o + k + j] = r[k + 2 * j]!;
        a[o + k + 4 + j] = r[k + 2 * j + 1]!;
      }
  });
}

interface Chunk {
  w: Weight;
  r0: number;
  r1: number;
}

/** Row chunks of W [M, K] that fit one ring buffer. */
function chunksOf(w: Weight, chunkBytes: number): Chunk[] {
  const [M, K] = w.shape as [number, number];
  const rowsPer = Math.max(2, Math.floor(chunkBytes / (K * (kindOf(w) === 'bf16' ? 2 : 4)) / 2) * 2);
  const out: Chunk[] = [];
  for (let r0 = 0; r0 < M; r0 += rowsPer) out.push({ w, r0, r1: Math.min(M, r0 + rowsPer) });
  return out;
}

/**
 * The layer's matrices in the order they are multiplied, read from wherever they live into the
 * ring, RING − 1 chunks ahead of the one being multiplied (across matrices and experts).
 */
class WeightStream {
  private readonly chunks: Chunk[];
  private readonly loads: Promise<void>[] = [];
  private cur = 0;

  constructor(
    private readonly pool: WasmPool,
    private readonly ring: number[],
    weights: Weight[],
    chunkBytes: number,
  ) {
    this.chunks = weights.flatMap((w) => chunksOf(w, chunkBytes));
    for (let j = 0; j < ring.length - 1; j++) this.start(j);
  }

  private start(j: number): void {
    const c = this.chunks[j];
    if (!c || this.loads[j]) return;
    const p = this.load(c, this.ring[j % this.ring.length]!);
    p.catch(() => undefined); // awaited (and thrown) in matmul; a read ahead of an abandoned run must not crash the process
    this.loads[j] = p;
  }

  private async load(c: Chunk, buf: number): Promise<void> {
    const K = c.w.shape[1]!;
    const src = dtypeBytes(c.w.dtype);
    const [s, e] = [c.r0 * K * src, c.r1 * K * src];
    if (c.w.dtype === 'F16') {
      this.pool.f32(buf, (c.r1 - c.r0) * K).set(toFloat32(await readRange(c.w, s, e), 'F16'));
      return;
    }
    const into = this.pool.bytes(buf, e - s);
    const got = await readRange(c.w, s, e, into);
    if (got.buffer !== into.buffer || got.byteOffset !== into.byteOffset) into.set(got);
  }

  /** C[n4, M] = A · Wᵀ for the next weight W [M, K] of the stream (which must be `w`). */
  async matmul(w: Weight, a: number, n4: number, c: number): Promise<void> {
    const [M, K] = w.shape as [number, number];
    while (this.chunks[this.cur]?.w === w) {
      const j = this.cur++;
      const ch = this.chunks[j]!;
      this.start(j + this.ring.length - 1);
      await this.loads[j];
      await this.pool.matmul({ kind: kindOf(w), a, b: this.ring[j % this.ring.length]!, c: c + ch.r0 * 4, n: n4, K, rows: ch.r1 - ch.r0, ldc: M });
      delete this.loads[j];
      this.start(j + this.ring.length);
    }
  }
}

/** The matrices of an expert in the order runExpert multiplies them. */
const matricesOf = (e: ExpertWeights): Weight[] => (e.gate ? [e.gate, e.up, e.down] : [e.up, e.down]);

const vec = (w?: Weight) => (w ? weightF32(w) : undefined);

/** expert(row) for every row: [rows.length · H] */
async function runExpert(
  pool: WasmPool,
  l: Layout,
  ws: WeightStream,
  e: ExpertWeights,
  spec: BlockSpec,
  rows: Float32Array[],
  H: number,
): Promise<Float32Array> {
  const n = rows.length;
  const n4 = Math.ceil(n / 4) * 4;
  const I = expertI(e);
  const [gb, ub, db] = [vec(e.gateBias), vec(e.upBias), vec(e.downBias)];
  let written: MatmulKind | undefined;
  const input = (w: Weight) => {
    if (written !== kindOf(w)) writeA(pool, l.a, rows, n4, H, (written = kindOf(w)));
  };
  if (e.gate) {
    input(e.gate);
    await ws.matmul(e.gate, l.a, n4, l.cg);
  }
  input(e.up);
  await ws.matmul(e.up, l.a, n4, l.cu);
  const g = pool.f32(l.cg, n4 * I);
  const u = pool.f32(l.cu, n4 * I);
  const hidden = rows.map((_, t) => {
    const h = new Float32Array(I);
    for (let i = 0; i < I; i++) {
      const gv = e.gate ? Math.fround(g[t * I + i]! + (gb ? gb[i]! : 0)) : 0;
      h[i] = activate(spec.activation, gv, Math.fround(u[t * I + i]! + (ub ? ub[i]! : 0)));
    }
    return h;
  });
  writeA(pool, l.h, hidden, n4, I, kindOf(e.down));
  await ws.matmul(e.down, l.h, n4, l.cy);
  const y = pool.f32(l.cy, n * H).slice();
  if (db) for (let t = 0; t < n; t++) for (let k = 0; k < H; k++) y[t * H + k]! += db[k]!;
  return y;
}

/** Every matrix dimension a multiple of 8 (the kernel's step); F32 and BF16 run as stored, F16 widened on the way in. */
function fits(w: MoeBlockWeights): boolean {
  const all = [...w.experts, ...w.shared];
  return w.hidden % 8 === 0 && all.every((e) => expertI(e) % 8 === 0);
}

/** Tokens (and their weights) routed to each expert. */
function byExpert(r: Routed, E: number, T: number): { tokens: number[]; weights: number[] }[] {
  const lists = Array.from({ length: E }, () => ({ tokens: [] as number[], weights: [] as number[] }));
  for (let t = 0; t < T; t++)
    for (let j = 0; j < r.K; j++) {
      const l = lists[r.ids[t * r.K + j]!]!;
      l.tokens.push(t);
      l.weights.push(r.weights[t * r.K + j]!);
    }
  return lists;
}

/** The WebAssembly pool, or undefined where no WebAssembly memory can be reserved (V8 wants ~8 GiB of address space per memory; ulimit -v): the plain JS forward then runs instead. */
function poolOrUndefined(): WasmPool | undefined {
  try {
    return wasmPool();
  } catch {
    return undefined;
  }
}

/** The block for T tokens (same contract as forwardCpu); weights may be lazy (left on disk). */
export async function forwardFast(
  w: MoeBlockWeights,
  spec: BlockSpec,
  x: Float32Array,
  T: number,
  forced?: Routed,
  chunkBytes = CHUNK,
): Promise<ForwardResult> {
  if (!fits(w)) return forwardCpu(await materialize(w), spec, x, T, forced);
  const H = w.hidden;
  const small = await materialize(w, false);
  const E = w.experts.length;
  const routed = forced ?? routeAll(small, spec, x, T);
  const pool = poolOrUndefined();
  if (!pool) return forwardCpu(await materialize(w), spec, x, T, forced);
  const maxI = Math.max(8, ...[...w.experts, ...w.shared].map(expertI));
  const l = layoutFor(pool, Math.ceil(T / 4) * 4, H, maxI, chunkBytes);
  const acc = new Float64Array(T * H);
  const expertCounts = new Array<number>(E).fill(0);
  const row = (t: number) => x.subarray(t * H, (t + 1) * H);
  const inputScaled = spec.routing.scoreFunc === 'topk_sigmoid_input';
  const lists = routed && E > 0 ? byExpert(routed, E, T) : [];
  const active = lists.flatMap((l, e) => (l.tokens.length > 0 ? [small.experts[e]!] : []));
  const ws = new WeightStream(pool, l.ring, [...active, ...small.shared].flatMap(matricesOf), chunkBytes);
  if (lists.length > 0) {
    for (let e = 0; e < E; e++) {
      const { tokens, weights } = lists[e]!;
      expertCounts[e] = tokens.length;
      if (tokens.length === 0) continue;
      const rows = tokens.map((t, j) => (inputScaled ? row(t).map((v) => Math.fround(v * weights[j]!)) : row(t)));
      const y = await runExpert(pool, l, ws, small.experts[e]!, spec, rows, H);
      tokens.forEach((t, j) => {
        const s = inputScaled ? 1 : weights[j]!;
        for (let k = 0; k < H; k++) acc[t * H + k]! += s * y[j * H + k]!;
      });
    }
  }
  await addShared(pool, l, ws, small, spec, x, T, acc);
  const out = Float32Array.from(acc);
  addOutputBias(small, out, T);
  return { out, expertCounts };
}

/** acc += g_t · Σ shared(x_t), g_t = sigmoid(x_t · shared_gate) or 1 */
async function addShared(
  pool: WasmPool,
  l: Layout,
  ws: WeightStream,
  w: MoeBlockWeights,
  spec: BlockSpec,
  x: Float32Array,
  T: number,
  acc: Float64Array,
): Promise<void> {
  if (w.shared.length === 0) return;
  const H = w.hidden;
  const rows = Array.from({ length: T }, (_, t) => x.subarray(t * H, (t + 1) * H));
  const sh = new Float64Array(T * H);
  for (const s of w.shared) {
    const y = await runExpert(pool, l, ws, s, spec, rows, H);
    for (let i = 0; i < y.length; i++) sh[i]! += y[i]!;
  }
  const sgate = w.sharedGate && weightF32(w.sharedGate);
  rows.forEach((xt, t) => {
    const g = sharedGate(sgate, xt) * (spec.routing.sharedScale ?? 1);
    for (let k = 0; k < H; k++) acc[t * H + k]! += g * sh[t * H + k]!;
  });
}
