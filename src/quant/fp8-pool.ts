/**
 * Block-FP8 decode (dequant) and encode (quant) on worker threads, every core busy on one read:
 *  - decode: the caller builds one 256-entry code → value table per block in the output dtype
 *    (cheap: 256 entries per b0×b1 block), the workers do the one lookup per element over element
 *    ranges of the read;
 *  - encode: the workers take whole blocks (ranges of them in row-major order), convert the
 *    source to f32, take each block's amax → scale_inv = f32(amax / 448) (1 for an all-zero block)
 *    and encode q = E4M3(w / scale_inv) with formats.ts `toE4M3` (its source runs in the workers; RNE,
 *    saturating at ±448, NaN → 0x7f, -0 → 0x80): the same bytes as the single-thread path.
 * Data lives in shared memory: scratch comes from the conversions' arena (engine/arena.ts, reused
 * block by block, so memory stays flat), and a destination that is already shared (the engine's
 * pooled chunks and slabs) is written in place. The worker is inline code (eval), so it loads the
 * same from src/ under the test runner and from dist/; workers keep the process alive only while
 * a call is in flight.
 */
import { Worker } from 'node:worker_threads';
import { arena } from '../engine/arena.js';
import { f16ToF32Bits } from '../engine/cast.js';
import { threadsFrom } from '../engine/wasm-workers.js';
import { MoekitError } from '../errors.js';
import { makeToE4M3 } from './formats.js';

/**
 * The decode loop for one output element width. Within a block's stretch of a row the codes are
 * read four at a time as one u32 (little-endian) and written as two u32 pairs (bf16 / f16) or
 * four u32 (f32): about twice the speed of a byte-by-byte loop in V8. `seg` takes elements [a, b).
 */
const decodeFn = (name: string, T: string, words: string) => `
function ${name}Seg(q, q32, tab, o, o32, t, a, b) {
  let e = a;
  for (; e < b && (e & 3) !== 0; e++) o[e] = tab[t + q[e]];
  const wEnd = b >> 2;
  for (let k = e >> 2; k < wEnd; k++) {
    const w = q32[k];
    ${words}
  }
  if (e < wEnd << 2) e = wEnd << 2;
  for (; e < b; e++) o[e] = tab[t + q[e]];
}
function ${name}(m) {
  const q = new Uint8Array(m.q, m.qo, m.n);
  const q32 = new Uint32Array(m.q, m.qo, m.n >> 2);
  const tab = new ${T}(m.t, m.to, m.tn);
  const o = new ${T}(m.o, m.oo, m.n);
  const o32 = new Uint32Array(m.o, m.oo, (m.n * ${T}.BYTES_PER_ELEMENT) >> 2);
  const { inn, rows, b0, b1, g0, gc, r0, s0, b } = m;
  let e = m.a;
  while (e < b) {
    const i = Math.floor(e / inn);
    const r = r0 + i;
    const srow = Math.floor(r / rows) * g0 + Math.floor((r % rows) / b0) - s0;
    const base = i * inn;
    const jEnd = Math.min(inn, b - base);
    let j = e - base;
    while (j < jEnd) {
      const c = Math.floor(j / b1);
      const j1 = Math.min(jEnd, (c + 1) * b1);
      ${name}Seg(q, q32, tab, o, o32, (srow * gc + c) * 256, base + j, base + j1);
      j = j1;
    }
    e = base + jEnd;
  }
}
`;

const PAIRS = `o32[2 * k] = tab[t + (w & 255)] | (tab[t + ((w >>> 8) & 255)] << 16);
    o32[2 * k + 1] = tab[t + ((w >>> 16) & 255)] | (tab[t + (w >>> 24)] << 16);`;
const QUADS = `const p = 4 * k;
    o32[p] = tab[t + (w & 255)];
    o32[p + 1] = tab[t + ((w >>> 8) & 255)];
    o32[p + 2] = tab[t + ((w >>> 16) & 255)];
    o32[p + 3] = tab[t + (w >>> 24)];`;

/** The block loop of the encoder for one source element width, to f32 bits through `conv`. */
const encodeFn = (name: string, T: string, conv: string) => `
function ${name}(m, f16) {
  const src = new ${T}(m.src, m.so, m.rows * m.inn);
  const s = new Float32Array(m.s, m.sbo, m.nbr * m.nb);
  const q = new Uint8Array(m.q, m.qbo, m.qn);
  const { inn, B, rows, nb, q0 } = m;
  const q1 = q0 + m.qn;
  const fb = scratch(B * B);
  const fu = new Uint32Array(fb.buffer, 0, B * B);
  let nan = false;
  for (let k = m.k0; k < m.k1; k++) {
    const br = Math.floor(k / nb);
    const c = k % nb;
    const i0 = br * B;
    const i1 = Math.min(rows, i0 + B);
    const j0 = c * B;
    const w = Math.min(inn, j0 + B) - j0;
    let p = 0;
    for (let i = i0; i < i1; i++) {
      const base = i * inn + j0;
      for (let j = 0; j < w; j++) fu[p++] = ${conv};
    }
    let mx = 0;
    for (let x = 0; x < p; x++) {
      const a = Math.abs(fb[x]);
      if (!(a <= mx)) mx = Number.isNaN(a) || Number.isNaN(mx) ? Number.NaN : a;
    }
    if (Number.isNaN(mx)) {
      nan = true;
      continue;
    }
    const sc = mx === 0 ? 1 : Math.fround(mx / 448);
    s[k] = sc;
    for (let i = i0; i < i1; i++) {
      const g = i * inn + j0;
      const ja = Math.max(0, q0 - g);
      const jb = Math.min(w, q1 - g);
      const f = (i - i0) * w;
      for (let j = ja; j < jb; j++) q[g + j - q0] = toE4M3(fb[f + j] / sc);
    }
  }
  return nan;
}
`;

/**
 * The encoder for BF16 sources. The amax is taken on the bits (|x| orders as x & 0x7fff; NaN is
 * above 0x7f80), and a large block is encoded through a table of the codes of the magnitudes
 * [lo, amax] it can hold — sign | table[|x| − lo], 0 below lo — built with the same division and
 * e4m3 as the direct loop (code(−x) = 0x80 | code(x) for every non-NaN x). lo is 21 binades under
 * the amax, where x / scale_inv < 448 · 2^-20 rounds to code 0; the code of lo − 1 is checked to be
 * 0 (e4m3 of a quotient is monotone in |x|), else the block takes the direct loop, as does a block
 * with an infinite amax (there ±inf / inf is NaN → 0x7f for both signs).
 */
const ENC_BF16 = `
const TAB = 21 * 128 + 1;
let bmax = new Int32Array(0);
let blo = new Int32Array(0);
let bsc = new Float64Array(0);
let btab = new Uint8Array(0);
function encBf16(m) {
  const src = new Uint16Array(m.src, m.so, m.rows * m.inn);
  const s = new Float32Array(m.s, m.sbo, m.nbr * m.nb);
  const { inn, B, rows, nb } = m;
  if (bmax.length < nb) {
    bmax = new Int32Array(nb);
    blo = new Int32Array(nb);
    bsc = new Float64Array(nb);
    btab = new Uint8Array(nb * TAB);
  }
  let nan = false;
  // block row by block row, columns blocks [ca, cb) of it, each pass over its rows in memory order
  for (let k = m.k0; k < m.k1; ) {
    const br = Math.floor(k / nb);
    const ca = k - br * nb;
    const cb = Math.min(nb, ca + m.k1 - k);
    const i0 = br * B;
    const i1 = Math.min(rows, i0 + B);
    bmax.fill(0, ca, cb);
    for (let i = i0; i < i1; i++)
      for (let c = ca; c < cb; c++) {
        const base = i * inn;
        const j1 = base + Math.min(inn, (c + 1) * B);
        let mb = bmax[c];
        for (let j = base + c * B; j < j1; j++) {
          const a = src[j] & 0x7fff;
          if (a > mb) mb = a;
        }
        bmax[c] = mb;
      }
    for (let c = ca; c < cb; c++) nan = bf16Scale(c, br * nb + c, (i1 - i0) * (Math.min(inn, (c + 1) * B) - c * B), s) || nan;
    if (!nan) bf16Codes(m, src, i0, i1, ca, cb);
    k = br * nb + cb;
  }
  return nan;
}
// block c's scale_inv and, where it pays, its table; true when the block holds NaN
function bf16Scale(c, k, count, s) {
  const mb = bmax[c];
  if (mb > 0x7f80) return true;
  u32[0] = mb << 16;
  const mx = f32[0];
  const sc = mx === 0 ? 1 : Math.fround(mx / 448);
  s[k] = sc;
  bsc[c] = sc;
  const lo = Math.max(0, mb - 21 * 128);
  let table = mb < 0x7f80 && count >= 2 * (mb - lo + 1);
  if (table && lo > 0) {
    u32[0] = (lo - 1) << 16;
    table = toE4M3(f32[0] / sc) === 0;
  }
  blo[c] = table ? lo : -1;
  if (table)
    for (let a = lo, t = c * TAB - lo; a <= mb; a++) {
      u32[0] = a << 16;
      btab[t + a] = toE4M3(f32[0] / sc);
    }
  return false;
}
// the codes of rows [i0, i1), column blocks [ca, cb), that fall in the read [q0, q0 + qn)
function bf16Codes(m, src, i0, i1, ca, cb) {
  const q = new Uint8Array(m.q, m.qbo, m.qn);
  const { inn, B, q0 } = m;
  const q1 = q0 + m.qn;
  for (let i = i0; i < i1; i++)
    for (let c = ca; c < cb; c++) {
      const j0 = Math.max(i * inn + c * B, q0);
      const j1 = Math.min(i * inn + Math.min(inn, (c + 1) * B), q1);
      const lo = blo[c];
      if (lo >= 0) {
        const t = c * TAB - lo;
        for (let j = j0; j < j1; j++) {
          const h = src[j];
          const a = h & 0x7fff;
          q[j - q0] = ((h >> 8) & 0x80) | (a >= lo ? btab[t + a] : 0);
        }
      } else {
        const sc = bsc[c];
        for (let j = j0; j < j1; j++) {
          u32[0] = src[j] << 16;
          q[j - q0] = toE4M3(f32[0] / sc);
        }
      }
    }
}
`;

const WORKER = `
const { parentPort } = require('node:worker_threads');
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
// formats.ts toE4M3 itself, from the self-contained source of its maker (with its own scratch)
const toE4M3 = (${makeToE4M3.toString()})();
let fbuf = new Float32Array(0);
function scratch(n) {
  if (fbuf.length < n) fbuf = new Float32Array(n);
  return fbuf;
}
${decodeFn('dec16', 'Uint16Array', PAIRS)}
${decodeFn('dec32', 'Uint32Array', QUADS)}
${ENC_BF16}
${encodeFn('encF16', 'Uint16Array', 'f16[src[base + j]]')}
${encodeFn('encF32', 'Uint32Array', 'src[base + j]')}
parentPort.on('message', (m) => {
  try {
    let nan = false;
    if (m.op === 'dec') (m.es === 2 ? dec16 : dec32)(m);
    else if (m.dt === 'BF16') nan = encBf16(m);
    else if (m.dt === 'F16') nan = encF16(m, new Uint32Array(m.f16));
    else nan = encF32(m);
    parentPort.postMessage({ id: m.id, nan });
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: String((e && e.message) || e) });
  }
});
`;

/** Worker threads of block-FP8 decode / encode: MOEKIT_QUANT_THREADS, else every core, at most 8; 1 keeps the work on the calling thread. */
export function fp8Threads(): number {
  return threadsFrom('MOEKIT_QUANT_THREADS', 8);
}

/** Below this many elements a read is decoded / encoded on the calling thread (a worker round trip costs more). */
export const MIN_PARALLEL = 1 << 18;

/** Elements per decode task at least, so a task amortises its message. */
const MIN_TASK = 1 << 16;

type Task = Record<string, unknown>;

class Fp8Pool {
  private readonly workers: Worker[] = [];
  private readonly busy: number[] = [];
  private readonly pending = new Map<number, { resolve: (nan: boolean) => void; reject: (e: Error) => void; w: number }>();
  private nextId = 0;

  /** At least n workers. */
  grow(n: number): void {
    while (this.workers.length < n) {
      const w = new Worker(WORKER, { eval: true });
      w.on('message', (m: { id: number; nan?: boolean; error?: string }) => this.settle(m));
      w.on('error', (e) => this.failAll(e));
      w.unref();
      this.workers.push(w);
      this.busy.push(0);
    }
  }

  /** Run a task on the least busy worker; resolves with whether it met a NaN. */
  run(task: Task): Promise<boolean> {
    const id = this.nextId++;
    const k = this.busy.indexOf(Math.min(...this.busy));
    if (this.pending.size === 0) for (const x of this.workers) x.ref();
    this.busy[k]!++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, w: k });
      this.workers[k]!.postMessage({ ...task, id });
    });
  }

  private settle(m: { id: number; nan?: boolean; error?: string }): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    this.busy[p.w]!--;
    if (this.pending.size === 0) for (const x of this.workers) x.unref();
    if (m.error) p.reject(new MoekitError('internal', `internal: block-FP8 worker failed: ${m.error}`));
    else p.resolve(m.nan === true);
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(new MoekitError('internal', `internal: block-FP8 worker failed: ${e.message}`));
    this.pending.clear();
    this.busy.fill(0);
  }
}

let pool: Fp8Pool | undefined;
function poolOf(threads: number): Fp8Pool {
  pool ??= new Fp8Pool();
  pool.grow(threads);
  return pool;
}

/** Every task's result once all have ended (a failed one rethrown only then, so no worker still writes memory the caller gives back). */
async function settled(runs: Promise<boolean>[]): Promise<boolean[]> {
  const all = await Promise.allSettled(runs);
  const bad = all.find((r) => r.status === 'rejected');
  if (bad) throw bad.reason;
  return all.map((r) => (r as PromiseFulfilledResult<boolean>).value);
}

/** Whether `b` lies in shared memory, aligned for elements of `align` bytes (workers may write it in place). */
export function isShared(b: Uint8Array, align: number): boolean {
  return b.buffer instanceof SharedArrayBuffer && b.byteOffset % align === 0;
}

/**
 * Scratch buffers of these sizes in shared memory, handed to `use` and given back after; undefined
 * (nothing run) when the arena cannot give them, and the caller takes the single-thread path.
 */
export async function withShared<R>(sizes: number[], use: (bufs: Buffer[]) => Promise<R>): Promise<R | undefined> {
  const bufs: Buffer[] = [];
  try {
    for (const n of sizes) {
      const b = arena.alloc(n);
      if (!b || !arena.holds(b)) return undefined;
      bufs.push(b);
    }
    return await use(bufs);
  } finally {
    for (const b of bufs) arena.release(b);
  }
}

/** The geometry of a block-FP8 weight read: rows [r0, r0 + n / inn) of a flattened [lead · rows, inn] weight. */
export interface DecodeJob {
  /** codes, n bytes, shared and 4-byte aligned */
  q: Buffer;
  /** per scale (row-major over the read's rows of scales) 256 values of `es` bytes */
  tab: Buffer;
  /** n values of `es` bytes, shared and 4-byte aligned */
  out: Buffer;
  es: 2 | 4;
  n: number;
  inn: number;
  /** rows of one [rows, inn] matrix, block size b0 × b1, scale grid g0 × gc */
  rows: number;
  b0: number;
  b1: number;
  g0: number;
  gc: number;
  /** first row of the read, and its row of scales */
  r0: number;
  s0: number;
}

/** out[e] = tab[scale of e][q[e]] for the read's n elements, in element ranges over the workers. */
export async function decodeParallel(j: DecodeJob, threads: number): Promise<void> {
  const p = poolOf(threads);
  const tasks = Math.max(1, Math.min(threads, Math.floor(j.n / MIN_TASK)));
  const base = {
    op: 'dec',
    q: j.q.buffer,
    qo: j.q.byteOffset,
    t: j.tab.buffer,
    to: j.tab.byteOffset,
    tn: j.tab.byteLength / j.es,
    o: j.out.buffer,
    oo: j.out.byteOffset,
    ...{ es: j.es, n: j.n, inn: j.inn, rows: j.rows, b0: j.b0, b1: j.b1, g0: j.g0, gc: j.gc, r0: j.r0, s0: j.s0 },
  };
  const runs: Promise<boolean>[] = [];
  for (let t = 0; t < tasks; t++) runs.push(p.run({ ...base, a: Math.floor((j.n * t) / tasks), b: Math.floor((j.n * (t + 1)) / tasks) }));
  await settled(runs);
}

export interface EncodeJob {
  /** the source rows, `rows` × `inn` values of `dtype`, shared and aligned */
  src: Buffer;
  dtype: 'BF16' | 'F16' | 'F32';
  rows: number;
  inn: number;
  B: number;
  /** scale_inv per block of the rows, row-major ⌈rows/B⌉ × ⌈inn/B⌉ f32, shared */
  s: Buffer;
  /** codes of the rows' elements [q0, q0 + q.byteLength), shared */
  q: Buffer;
  q0: number;
}

let f16Bits: SharedArrayBuffer | undefined;
function f16Table(): SharedArrayBuffer {
  if (!f16Bits) {
    f16Bits = new SharedArrayBuffer(65536 * 4);
    const t = new Uint32Array(f16Bits);
    for (let h = 0; h < 65536; h++) t[h] = f16ToF32Bits(h);
  }
  return f16Bits;
}

/** Scales and codes of every block of the rows, ranges of blocks over the workers; true when a block holds NaN. */
export async function encodeParallel(j: EncodeJob, threads: number): Promise<boolean> {
  const p = poolOf(threads);
  const nb = Math.ceil(j.inn / j.B);
  const blocks = Math.ceil(j.rows / j.B) * nb;
  const tasks = Math.max(1, Math.min(threads, blocks));
  const base = {
    op: 'enc',
    dt: j.dtype,
    src: j.src.buffer,
    so: j.src.byteOffset,
    s: j.s.buffer,
    sbo: j.s.byteOffset,
    q: j.q.buffer,
    qbo: j.q.byteOffset,
    qn: j.q.byteLength,
    f16: j.dtype === 'F16' ? f16Table() : undefined,
    ...{ rows: j.rows, inn: j.inn, B: j.B, nb, nbr: Math.ceil(j.rows / j.B), q0: j.q0 },
  };
  const runs: Promise<boolean>[] = [];
  for (let t = 0; t < tasks; t++) runs.push(p.run({ ...base, k0: Math.floor((blocks * t) / tasks), k1: Math.floor((blocks * (t + 1)) / tasks) }));
  return (await settled(runs)).some((nan) => nan);
}
