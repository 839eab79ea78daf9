/**
 * Slab and scratch memory of the transposing conversions, in one shared WebAssembly memory, so the
 * SIMD block transposes (kernels/transpose.wasm, scripts/gen-transpose-kernel.mjs) run on it in
 * place on worker threads, several slabs and row bands at a time.
 *
 * Measured on a 2-core EPYC (bf16 [5632, 2048] → [2048, 5632], warm memory): the JS 2×2-word
 * kernel in strided.ts moves ~1.1 GB/s on one thread, the SIMD kernel ~2.7–3.5 GB/s. The same
 * module takes the halves of an interleaved gate/up pair (GPT-OSS) apart, transposed or not
 * (kernelBlocks): on the JS kernels those ran element by element, GPT-OSS → nemo 4.0 s for 2.1 GiB
 * on 2 cores against 0.77 s now (cp -r 0.53 s).
 *
 * Blocks are handed out best-fit from merged free ranges, else from the top; memory the arena
 * cannot give (past its cap, or when the system will not reserve or commit it) comes from the
 * heap, and such buffers take the JS kernel. `release` of a heap buffer is a no-op, so callers
 * need not tell them apart.
 */
import { coalesce, forEachIndex } from './strided.js';
import { PAGE, WasmWorkers, sharedMemory, threadsFrom, type WasmMemory } from './wasm-workers.js';

/** Beyond this the arena gives heap buffers (wasm32 addresses up to 4 GiB; keep well inside). */
const CAP = 3 * 2 ** 30;
const ALIGN = 64;

class Arena {
  private memory: WasmMemory | undefined;
  private top = 0;
  /** free ranges [offset, size], sorted by offset, neighbours merged */
  private readonly free: [number, number][] = [];
  /** SharedArrayBuffer objects of this memory (one per growth) */
  private readonly views = new WeakSet<ArrayBufferLike>();
  private pool: WasmWorkers | undefined;

  /** set when the shared memory could not be reserved (e.g. a `ulimit -v` below 3 GiB): every buffer then comes from the heap */
  private off = false;

  /** The memory, reserved on first use; undefined when it cannot be. */
  private mem(): WasmMemory | undefined {
    if (this.memory || this.off) return this.memory;
    try {
      this.memory = sharedMemory(1, CAP / PAGE);
    } catch {
      this.off = true;
    }
    return this.memory;
  }

  /** n bytes in the arena (best fit among the free ranges, else at the top), or undefined when it is full. */
  alloc(n: number): Buffer | undefined {
    const m = this.mem();
    if (!m) return undefined;
    const size = Math.ceil(Math.max(1, n) / ALIGN) * ALIGN;
    let best = -1;
    for (let k = 0; k < this.free.length; k++) if (this.free[k]![1] >= size && (best < 0 || this.free[k]![1] < this.free[best]![1])) best = k;
    let off: number;
    if (best >= 0) {
      const r = this.free[best]!;
      off = r[0];
      if (r[1] === size) this.free.splice(best, 1);
      else this.free[best] = [r[0] + size, r[1] - size];
    } else {
      // a free range at the top grows into the new block
      const last = this.free.at(-1);
      const start = last && last[0] + last[1] === this.top ? last[0] : this.top;
      if (start + size > CAP) return undefined;
      const have = m.buffer.byteLength;
      try {
        if (start + size > have) m.grow(Math.ceil((start + size - have) / PAGE));
      } catch {
        return undefined; // the system would not commit more: a heap buffer instead
      }
      if (start !== this.top) this.free.pop();
      off = start;
      this.top = start + size;
    }
    const sab = m.buffer;
    this.views.add(sab);
    return Buffer.from(sab, off, n);
  }

  /** Give a block back (a no-op for heap buffers). */
  release(b: Buffer): void {
    if (!this.holds(b)) return;
    const off = b.byteOffset;
    const size = Math.ceil(Math.max(1, b.byteLength) / ALIGN) * ALIGN;
    let k = 0;
    while (k < this.free.length && this.free[k]![0] < off) k++;
    this.free.splice(k, 0, [off, size]);
    // merge with the next, then the previous range
    const next = this.free[k + 1];
    if (next && off + size === next[0]) this.free.splice(k, 2, [off, size + next[1]]);
    const prev = this.free[k - 1];
    if (prev && prev[0] + prev[1] === off) this.free.splice(k - 1, 2, [prev[0], prev[1] + this.free[k]![1]]);
  }

  holds(b: Uint8Array | Uint16Array | Uint32Array): boolean {
    return this.views.has(b.buffer);
  }

  workers(): WasmWorkers {
    // only reached for buffers the arena holds, so its memory exists
    this.pool ??= new WasmWorkers('transpose.wasm', this.memory!, transposeThreads(), 'transpose kernel');
    return this.pool;
  }
}

/** Transpose threads: MOEKIT_THREADS, else every core, at most 8 (measured on 16 cores: 4, 8 and 16 threads run nemo at the same speed, each costs ~5 MiB). */
export function transposeThreads(): number {
  return threadsFrom('MOEKIT_THREADS', 8);
}

export const arena = new Arena();

/** Rows per worker call: small enough to spread one matrix over every thread, large enough to amortise the call. */
const MIN_BAND_BYTES = 1 << 20;

/**
 * One kernel call (byte addresses into the arena, element size 2 or 4) split into row bands of the
 * destination (its i) over the worker threads; the source moves `step` elements per row.
 */
async function transposeInArena(size: 2 | 4, c: TransposeCall): Promise<void> {
  const pool = arena.workers();
  const [d, dA, s, sX, m, n] = c.args as [number, number, number, number, number, number];
  const rowBytes = n * size;
  const per = Math.max(8, Math.ceil(Math.max(m / pool.threads, MIN_BAND_BYTES / rowBytes) / 8) * 8);
  const calls: Promise<void>[] = [];
  for (let i0 = 0; i0 < m; i0 += per) {
    const rows = Math.min(per, m - i0);
    calls.push(pool.call(undefined, c.fn, [d + i0 * dA * size, dA, s + i0 * c.step * size, sX, rows, n]));
  }
  await Promise.all(calls);
}

/** MOEKIT_NO_SIMD=1: every copy on this thread's JS kernels (strided.ts), to rule the SIMD path out. */
const NO_SIMD = process.env.MOEKIT_NO_SIMD === '1';

/** Whether the SIMD kernel can move elements of `unit` bytes in this buffer (an arena one, aligned to the unit). */
const simdReady = (b: Buffer, unit: number) => (unit === 2 || unit === 4) && !NO_SIMD && arena.holds(b) && b.byteOffset % unit === 0;

/** Below this many elements a 2-D block is copied on this thread (a worker round trip costs more). */
const MIN_ELEMS = 1 << 14;

/**
 * The strided copy of stridedCopy (same arguments, in units of `unit` bytes over whole buffers)
 * on the SIMD kernel when both buffers live in the arena and the copy is a batch of 2-D
 * transposes; false when it is not, and the caller copies with stridedCopy.
 */
export async function arenaCopy(
  dst: Buffer,
  dOff: number,
  dSt: readonly number[],
  src: Buffer,
  sOff: number,
  sSt: readonly number[],
  shape: readonly number[],
  unit: number,
): Promise<boolean> {
  if (!simdReady(dst, unit)) return false;
  const calls = transposeCalls(dst.byteOffset / unit + dOff, dSt, src, sOff, sSt, shape, unit);
  if (!calls) return false;
  // each call split in row bands over the workers
  await Promise.all(calls.map((c) => transposeInArena(unit as 2 | 4, c)));
  return true;
}

/**
 * A strided copy (element offsets and strides) as a batch of one kernel's 2-D calls, one per block
 * [d, s] of the other dims; undefined when it is none of them:
 *   t  a transpose dst[d + i·dA + j] = src[s + i + j·sB]
 *   p  the same from one half of an interleaved pair, src[s + 2i + j·sB]
 *   q  the same into one half of an interleaved pair, dst[d + i·dA + 2j]
 *   g  one half of an interleaved pair read, rows kept: dst[d + i·dA + j] = src[s + i·sA + 2j]
 *   s  one half of an interleaved pair written, rows kept: dst[d + i·dA + 2j] = src[s + i·sA + j]
 * (i < m, j < n; `step`: source elements per destination row i, by which calls are cut into bands).
 * q and s read and write back the other half's elements of each row they touch: the other half's
 * copy must not run at the same time (a slab's parts are copied one after another, and a band's
 * calls run on one worker).
 */
function kernelBlocks(dOff: number, dSt: readonly number[], sOff: number, sSt: readonly number[], shape: readonly number[]) {
  const c = coalesce(shape, dSt, sSt);
  const largestBut = (j: number) => {
    let i = -1;
    for (let k = 0; k < c.shape.length; k++) if (k !== j && (i < 0 || c.shape[k]! > c.shape[i]!)) i = k;
    return i;
  };
  let j = c.dSt.indexOf(1);
  let i = c.sSt.indexOf(1);
  let kind: 't' | 'p' | 'q' | 'g' | 's';
  if (j >= 0) {
    if (i >= 0) kind = 't';
    else if (c.sSt[j] === 2) [kind, i] = ['g', largestBut(j)];
    else [kind, i] = ['p', c.sSt.indexOf(2)];
  } else {
    j = c.dSt.indexOf(2);
    if (j < 0) return undefined;
    if (c.sSt[j] === 1) [kind, i] = ['s', largestBut(j)];
    else kind = 'q';
  }
  const rowsKept = kind === 'g' || kind === 's';
  if (i === j || (!rowsKept && i < 0)) return undefined;
  const m = i < 0 ? 1 : c.shape[i]!;
  const n = c.shape[j]!;
  if (m * n < MIN_ELEMS) return undefined;
  const keep = (_: number, k: number) => k !== i && k !== j;
  const blocks: [number, number][] = [];
  forEachIndex(c.shape.filter(keep), c.dSt.filter(keep), c.sSt.filter(keep), dOff, sOff, (d, s) => {
    blocks.push([d, s]);
  });
  const sA = i < 0 ? 0 : c.sSt[i]!;
  return { kind, blocks, dA: i < 0 ? 0 : c.dSt[i]!, sX: rowsKept ? sA : c.sSt[j]!, step: rowsKept ? sA : kind === 'p' ? 2 : 1, m, n };
}

/** One call of the SIMD kernels: its export, arguments (byte addresses d and s, strides and sizes in elements) and source step per destination row. */
export interface TransposeCall {
  fn: string;
  args: number[];
  step: number;
}

/**
 * The kernel calls that copy `shape` from `src` (an arena buffer, element offset sOff, strides sSt)
 * into a destination laid out by dSt from element dOff: of the arena (arenaCopy), or of a buffer
 * whose address is added later (a worker's own band buffer, writeBands: args[0] is relative to it);
 * undefined when the copy is not a batch of SIMD kernel calls (then the caller copies another way).
 */
export function transposeCalls(
  dOff: number,
  dSt: readonly number[],
  src: Buffer,
  sOff: number,
  sSt: readonly number[],
  shape: readonly number[],
  unit: number,
): TransposeCall[] | undefined {
  if (!simdReady(src, unit)) return undefined;
  const t = kernelBlocks(dOff, dSt, src.byteOffset / unit + sOff, sSt, shape);
  if (!t) return undefined;
  const fn = `${t.kind}${unit * 8}`;
  return t.blocks.map(([d, s]) => ({ fn, args: [d * unit, t.dA, s * unit, t.sX, t.m, t.n], step: t.step }));
}
