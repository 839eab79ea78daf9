/**
 * Reading a byte range of a tensor that is not one contiguous run of a file: a strided view into
 * a torch storage, a DCP tensor assembled from chunks at any offsets, or a box of such a tensor
 * (Megatron's stacked layers and experts seen under HF names). Each is a list of `Piece`s, strided
 * boxes placed in the row-major logical tensor; a read visits only the rows of the pieces that
 * fall in the requested range and reads each piece's source in bounded spans.
 */
import { contiguousStrides } from '../../engine/ir.js';
import { numel } from '../dtypes.js';

export interface Piece {
  /** where the piece's [0, …, 0] sits in the logical tensor */
  at: number[];
  shape: number[];
  /** source element strides, per dim */
  strides: number[];
  /** source element index of the piece's [0, …, 0] */
  base: number;
  /** read source elements [a, b) into `into` (or a new buffer) */
  read: (a: number, b: number, into?: Buffer) => Promise<Buffer>;
}

interface Row {
  dst: number;
  src: number;
  n: number;
  stride: number;
}

/** largest source span read at once, in bytes */
const SPAN = 32 * 2 ** 20;

/** The rows (runs along the last dim) of `p` whose logical elements fall in [s, e). */
function rowsIn(p: Piece, L: number[], s: number, e: number, out: Row[]): void {
  const n = p.shape.length;
  if (n === 0) {
    if (s <= 0 && e > 0) out.push({ dst: -s, src: p.base, n: 1, stride: 1 });
    return;
  }
  if (p.shape.some((x) => x === 0)) return;
  const minRest = new Array<number>(n + 1).fill(0);
  const maxRest = new Array<number>(n + 1).fill(0);
  for (let k = n - 1; k >= 0; k--) {
    minRest[k] = minRest[k + 1]! + p.at[k]! * L[k]!;
    maxRest[k] = maxRest[k + 1]! + (p.at[k]! + p.shape[k]! - 1) * L[k]!;
  }
  const walk = (d: number, lbase: number, sbase: number): void => {
    if (d === n - 1) {
      const a = lbase + p.at[d]!;
      const lo = Math.max(a, s);
      const hi = Math.min(a + p.shape[d]!, e);
      if (lo < hi) out.push({ dst: lo - s, src: sbase + (lo - a) * p.strides[d]!, n: hi - lo, stride: p.strides[d]! });
      return;
    }
    const Ld = L[d]!;
    const iLo = Math.max(0, Math.ceil((s - lbase - maxRest[d + 1]!) / Ld) - p.at[d]!);
    const iHi = Math.min(p.shape[d]! - 1, Math.floor((e - 1 - lbase - minRest[d + 1]!) / Ld) - p.at[d]!);
    for (let i = iLo; i <= iHi; i++) walk(d + 1, lbase + (p.at[d]! + i) * Ld, sbase + i * p.strides[d]!);
  };
  walk(0, 0, p.base);
}

async function copyRows(p: Piece, rows: Row[], es: number, out: Buffer): Promise<void> {
  let i = 0;
  while (i < rows.length) {
    let lo = rows[i]!.src;
    let hi = lo + (rows[i]!.n - 1) * rows[i]!.stride + 1;
    let j = i + 1;
    for (; j < rows.length; j++) {
      const r = rows[j]!;
      const nlo = Math.min(lo, r.src);
      const nhi = Math.max(hi, r.src + (r.n - 1) * r.stride + 1);
      if ((nhi - nlo) * es > SPAN) break;
      lo = nlo;
      hi = nhi;
    }
    const buf = await p.read(lo, hi);
    for (let k = i; k < j; k++) {
      const r = rows[k]!;
      const so = (r.src - lo) * es;
      if (r.stride === 1) buf.copy(out, r.dst * es, so, so + r.n * es);
      else for (let t = 0; t < r.n; t++) buf.copy(out, (r.dst + t) * es, so + t * r.stride * es, so + t * r.stride * es + es);
    }
    i = j;
  }
}

/** The part of `p` inside the box [at, at + shape) (same coordinates), or undefined when they do not meet. */
export function restrict(p: Piece, at: readonly number[], shape: readonly number[]): Piece | undefined {
  const a: number[] = [];
  const sh: number[] = [];
  let base = p.base;
  for (let k = 0; k < p.at.length; k++) {
    const lo = Math.max(p.at[k]!, at[k]!);
    const hi = Math.min(p.at[k]! + p.shape[k]!, at[k]! + shape[k]!);
    if (hi <= lo) return undefined;
    a.push(lo);
    sh.push(hi - lo);
    base += (lo - p.at[k]!) * p.strides[k]!;
  }
  return { at: a, shape: sh, strides: p.strides, base, read: p.read };
}

/** Bytes [start, end) of the logical tensor `shape` made of `pieces`, into `out` (which must hold end − start bytes). */
export async function gather(shape: number[], es: number, pieces: readonly Piece[], start: number, end: number, out: Buffer): Promise<Buffer> {
  const s = Math.floor(start / es);
  const e = Math.ceil(end / es);
  const aligned = s * es === start && e * es === end;
  const dst = aligned ? out.subarray(0, end - start) : Buffer.alloc((e - s) * es);
  const L = contiguousStrides(shape);
  for (const p of pieces) {
    const rows: Row[] = [];
    rowsIn(p, L, s, e, rows);
    if (rows.length) await copyRows(p, rows, es, dst);
  }
  if (!aligned) dst.copy(out, 0, start - s * es, end - s * es);
  return out.subarray(0, end - start);
}

/**
 * Why the pieces do not tile the logical tensor exactly once (out of bounds, overlapping, or
 * leaving a gap), or undefined when they do. Checked on the grid of the pieces' own boundaries, so
 * any chunking torch or Megatron writes is checked in time linear in the number of grid cells.
 */
export function tilingProblem(shape: number[], pieces: readonly { at: number[]; shape: number[] }[]): string | undefined {
  const n = shape.length;
  const cuts: number[][] = [];
  for (let k = 0; k < n; k++) {
    const set = new Set<number>([0, shape[k]!]);
    for (const p of pieces) {
      if (p.at.length !== n || p.shape.length !== n) return 'a chunk of another rank';
      if (p.at[k]! < 0 || p.at[k]! + p.shape[k]! > shape[k]!) return `a chunk at [${p.at}] of size [${p.shape}] outside the tensor`;
      set.add(p.at[k]!);
      set.add(p.at[k]! + p.shape[k]!);
    }
    cuts.push([...set].sort((a, b) => a - b));
  }
  if (numel(shape) === 0) return undefined;
  let cells = 1;
  for (const c of cuts) cells *= c.length - 1;
  if (cells > Math.max(2 ** 22, 8 * pieces.length)) return `an irregular chunking (${cells} grid cells for ${pieces.length} chunks)`;
  const hit = new Uint8Array(cells);
  const cellStrides = contiguousStrides(cuts.map((c) => c.length - 1));
  for (const p of pieces) {
    if (p.shape.some((x) => x === 0)) continue;
    const ranges = cuts.map((c, k) => [c.indexOf(p.at[k]!), c.indexOf(p.at[k]! + p.shape[k]!)] as const);
    const idx = ranges.map((r) => r[0]);
    for (;;) {
      let flat = 0;
      for (let k = 0; k < n; k++) flat += idx[k]! * cellStrides[k]!;
      if (hit[flat]) return `overlapping chunks (one at [${p.at}])`;
      hit[flat] = 1;
      let k = n - 1;
      while (k >= 0 && ++idx[k]! >= ranges[k]![1]) {
        idx[k] = ranges[k]![0];
        k--;
      }
      if (k < 0) break;
    }
  }
  const gap = hit.indexOf(0);
  return gap >= 0 ? 'a part no chunk holds' : undefined;
}
