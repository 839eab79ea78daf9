/**
 * Strided element copies between typed-array views of raw bytes (the data movement behind
 * `copyView`). Elements are copied as 1/2/4-byte integer units (8-byte dtypes as two 4-byte
 * units), so every copy is bit-exact whatever the dtype.
 *
 * `stridedCopy` is the fast path: it coalesces dims, copies contiguous runs with `set`, and runs
 * the last two dims through monomorphic cache-tiled 2-D kernels (one per array type, so V8 keeps
 * every element access monomorphic). 16-bit transposes whose two sides are contiguous along
 * opposite dims (the bf16/f16 transposes of nemo / megatron-grouped) move 2×2 blocks as pairs of
 * 32-bit words. `stridedCopyGeneric` is the plain reference walk, kept for tests.
 */
import { endianness } from 'node:os';

export type Typed = Uint8Array | Uint16Array | Uint32Array;

const LE = endianness() === 'LE';
const TILE = 32;

/** Drop size-1 dims and merge neighbours that are contiguous on both sides. */
export function coalesce(shape: readonly number[], dSt: readonly number[], sSt: readonly number[]): { shape: number[]; dSt: number[]; sSt: number[] } {
  const sh: number[] = [];
  const ds: number[] = [];
  const ss: number[] = [];
  for (let k = 0; k < shape.length; k++) {
    const n = shape[k]!;
    if (n === 1) continue;
    const last = sh.length - 1;
    if (last >= 0 && ds[last] === dSt[k]! * n && ss[last] === sSt[k]! * n) {
      sh[last]! *= n;
      ds[last] = dSt[k]!;
      ss[last] = sSt[k]!;
    } else {
      sh.push(n);
      ds.push(dSt[k]!);
      ss.push(sSt[k]!);
    }
  }
  return { shape: sh, dSt: ds, sSt: ss };
}

/** Calls f(dOff, sOff) for every index of `outer` (row-major). */
export function forEachIndex(
  outer: readonly number[],
  dSt: readonly number[],
  sSt: readonly number[],
  dOff: number,
  sOff: number,
  f: (d: number, s: number) => void,
): void {
  const k = outer.length;
  if (k === 0) {
    f(dOff, sOff);
    return;
  }
  const idx = new Array<number>(k).fill(0);
  const total = outer.reduce((a, b) => a * b, 1);
  let d = dOff;
  let s = sOff;
  for (let t = 0; t < total; t++) {
    f(d, s);
    for (let j = k - 1; j >= 0; j--) {
      idx[j]!++;
      d += dSt[j]!;
      s += sSt[j]!;
      if (idx[j]! < outer[j]!) break;
      d -= dSt[j]! * outer[j]!;
      s -= sSt[j]! * outer[j]!;
      idx[j] = 0;
    }
  }
}

/**
 * dst[d0 + i·dA + j·dB] = src[s0 + i·sA + j·sB] for i < m, j < n, walked in TILE×TILE tiles.
 * The three copies below are textually identical on purpose: one function per array type keeps
 * V8's element accesses monomorphic (a shared body would go polymorphic and run ~3× slower).
 */
function tile8(dst: Uint8Array, d0: number, dA: number, dB: number, src: Uint8Array, s0: number, sA: number, sB: number, m: number, n: number): void {
  for (let i0 = 0; i0 < m; i0 += TILE) {
    const i1 = Math.min(m, i0 + TILE);
    for (let j0 = 0; j0 < n; j0 += TILE) {
      const j1 = Math.min(n, j0 + TILE);
      for (let i = i0; i < i1; i++) {
        let d = d0 + i * dA + j0 * dB;
        let s = s0 + i * sA + j0 * sB;
        for (let j = j0; j < j1; j++) {
          dst[d] = src[s]!;
          d += dB;
          s += sB;
        }
      }
    }
  }
}

function tile16(dst: Uint16Array, d0: number, dA: number, dB: number, src: Uint16Array, s0: number, sA: number, sB: number, m: number, n: number): void {
  for (let i0 = 0; i0 < m; i0 += TILE) {
    const i1 = Math.min(m, i0 + TILE);
    for (let j0 = 0; j0 < n; j0 += TILE) {
      const j1 = Math.min(n, j0 + TILE);
      for (let i = i0; i < i1; i++) {
        let d = d0 + i * dA + j0 * dB;
        let s = s0 + i * sA + j0 * sB;
        for (let j = j0; j < j1; j++) {
          dst[d] = src[s]!;
          d += dB;
          s += sB;
        }
      }
    }
  }
}

function tile32(dst: Uint32Array, d0: number, dA: number, dB: number, src: Uint32Array, s0: number, sA: number, sB: number, m: number, n: number): void {
  for (let i0 = 0; i0 < m; i0 += TILE) {
    const i1 = Math.min(m, i0 + TILE);
    for (let j0 = 0; j0 < n; j0 += TILE) {
      const j1 = Math.min(n, j0 + TILE);
      for (let i = i0; i < i1; i++) {
        let d = d0 + i * dA + j0 * dB;
        let s = s0 + i * sA + j0 * sB;
        for (let j = j0; j < j1; j++) {
          dst[d] = src[s]!;
          d += dB;
          s += sB;
        }
      }
    }
  }
}

/** tile32 for 8-byte elements: each element is two adjacent 4-byte units. */
function tile32x2(dst: Uint32Array, d0: number, dA: number, dB: number, src: Uint32Array, s0: number, sA: number, sB: number, m: number, n: number): void {
  for (let i0 = 0; i0 < m; i0 += TILE) {
    const i1 = Math.min(m, i0 + TILE);
    for (let j0 = 0; j0 < n; j0 += TILE) {
      const j1 = Math.min(n, j0 + TILE);
      for (let i = i0; i < i1; i++) {
        let d = d0 + i * dA + j0 * dB;
        let s = s0 + i * sA + j0 * sB;
        for (let j = j0; j < j1; j++) {
          dst[d] = src[s]!;
          dst[d + 1] = src[s + 1]!;
          d += dB;
          s += sB;
        }
      }
    }
  }
}

/**
 * 16-bit transpose in 2×2 blocks moved as 32-bit words: dst[d0 + i·dA + j] = src[s0 + i + j·sB]
 * for even m, n; d0, s0, dA, sB even, as indices into the u16 view of `dst32` / `src32`'s memory
 * (little-endian). Word a = (src[i,j], src[i+1,j]), b = (src[i,j+1], src[i+1,j+1]) become
 * dst row i = (a.lo, b.lo) and row i+1 = (a.hi, b.hi).
 */
function pair16(dst32: Uint32Array, d0: number, dA: number, src32: Uint32Array, s0: number, sB: number, m: number, n: number): void {
  const dA2 = dA >> 1;
  const sB2 = sB >> 1;
  const D0 = d0 >> 1;
  const S0 = s0 >> 1;
  for (let i0 = 0; i0 < m; i0 += TILE) {
    const i1 = Math.min(m, i0 + TILE);
    for (let j0 = 0; j0 < n; j0 += TILE) {
      const j1 = Math.min(n, j0 + TILE);
      for (let i = i0; i < i1; i += 2) {
        let d = D0 + i * dA2 + (j0 >> 1);
        let s = S0 + (i >> 1) + j0 * sB2;
        for (let j = j0; j < j1; j += 2) {
          const a = src32[s]!;
          const b = src32[s + sB2]!;
          dst32[d] = (a & 0xffff) | (b << 16);
          dst32[d + dA2] = (a >>> 16) | (b & 0xffff0000);
          d++;
          s += 2 * sB2;
        }
      }
    }
  }
}

const u32Whole = (t: Uint16Array): Uint32Array => new Uint32Array(t.buffer, 0, t.buffer.byteLength >> 2);

function kernel16(dst: Uint16Array, d0: number, dA: number, dB: number, src: Uint16Array, s0: number, sA: number, sB: number, m: number, n: number): void {
  // absolute u16 indices into the underlying buffers
  const dAbs = dst.byteOffset / 2 + d0;
  const sAbs = src.byteOffset / 2 + s0;
  if (
    LE &&
    dB === 1 &&
    sA === 1 &&
    m >= 2 &&
    n >= 2 &&
    (dAbs | sAbs | dA | sB) % 2 === 0 &&
    dst.buffer.byteLength % 4 === 0 &&
    src.buffer.byteLength % 4 === 0
  ) {
    const me = m & ~1;
    const ne = n & ~1;
    pair16(u32Whole(dst), dAbs, dA, u32Whole(src), sAbs, sB, me, ne);
    if (ne < n) tile16(dst, d0 + ne, dA, 1, src, s0 + ne * sB, 1, sB, me, n - ne); // last column
    if (me < m) tile16(dst, d0 + me * dA, dA, 1, src, s0 + me, 1, sB, m - me, n); // last row
    return;
  }
  tile16(dst, d0, dA, dB, src, s0, sA, sB, m, n);
}

/**
 * Strided copy of `shape` units from (src, sOff, sSt) to (dst, dOff, dSt). 8-byte elements come
 * as a trailing [2] dim of 4-byte units (see ir.ts unitGeom) and are tiled as pairs.
 */
export function stridedCopy(
  dst: Typed,
  dOff: number,
  dSt: readonly number[],
  src: Typed,
  sOff: number,
  sSt: readonly number[],
  shape: readonly number[],
): void {
  if (shape.some((s) => s === 0)) return;
  const c = coalesce(shape, dSt, sSt);
  const nd = c.shape.length;
  if (nd === 0) {
    dst[dOff] = src[sOff]!;
    return;
  }
  const last = nd - 1;
  const n = c.shape[last]!;
  if (c.dSt[last] === 1 && c.sSt[last] === 1 && !(n === 2 && nd >= 3 && dst instanceof Uint32Array)) {
    // contiguous runs
    if (n >= 16) {
      forEachIndex(c.shape.slice(0, last), c.dSt, c.sSt, dOff, sOff, (d, s) => dst.set(src.subarray(s, s + n), d));
    } else {
      forEachIndex(c.shape.slice(0, last), c.dSt, c.sSt, dOff, sOff, (d, s) => {
        for (let j = 0; j < n; j++) dst[d + j] = src[s + j]!;
      });
    }
    return;
  }
  if (nd === 1) {
    const ds = c.dSt[0]!;
    const ss = c.sSt[0]!;
    for (let i = 0; i < n; i++) dst[dOff + i * ds] = src[sOff + i * ss]!;
    return;
  }
  // 8-byte elements: the trailing [2] unit dim rides along inside tile32x2
  const pairs = dst instanceof Uint32Array && n === 2 && c.dSt[last] === 1 && c.sSt[last] === 1;
  const top = pairs ? last - 1 : last; // index of the inner of the two tiled dims
  if (pairs && top === 0) {
    const ds = c.dSt[0]!;
    const ss = c.sSt[0]!;
    const m = c.shape[0]!;
    tile32x2(dst, dOff, 0, ds, src as Uint32Array, sOff, 0, ss, 1, m);
    return;
  }
  // the inner loop walks the destination's smaller stride (sequential writes)
  const swap = Math.abs(c.dSt[top - 1]!) < Math.abs(c.dSt[top]!);
  const [a, b] = swap ? [top, top - 1] : [top - 1, top];
  const m = c.shape[a]!;
  const n2 = c.shape[b]!;
  const dA = c.dSt[a]!;
  const dB = c.dSt[b]!;
  const sA = c.sSt[a]!;
  const sB = c.sSt[b]!;
  const outer = c.shape.slice(0, top - 1);
  if (pairs) {
    forEachIndex(outer, c.dSt, c.sSt, dOff, sOff, (d0, s0) => tile32x2(dst, d0, dA, dB, src as Uint32Array, s0, sA, sB, m, n2));
  } else if (dst instanceof Uint16Array) {
    forEachIndex(outer, c.dSt, c.sSt, dOff, sOff, (d0, s0) => kernel16(dst, d0, dA, dB, src as Uint16Array, s0, sA, sB, m, n2));
  } else if (dst instanceof Uint32Array) {
    forEachIndex(outer, c.dSt, c.sSt, dOff, sOff, (d0, s0) => tile32(dst, d0, dA, dB, src as Uint32Array, s0, sA, sB, m, n2));
  } else {
    forEachIndex(outer, c.dSt, c.sSt, dOff, sOff, (d0, s0) => tile8(dst, d0, dA, dB, src as Uint8Array, s0, sA, sB, m, n2));
  }
}

/** Reference: one element at a time in row-major order of `shape`. */
export function stridedCopyGeneric(
  dst: Typed,
  dOff: number,
  dSt: readonly number[],
  src: Typed,
  sOff: number,
  sSt: readonly number[],
  shape: readonly number[],
): void {
  const nd = shape.length;
  if (shape.some((s) => s === 0)) return;
  if (nd === 0) {
    dst[dOff] = src[sOff]!;
    return;
  }
  const lastN = shape[nd - 1]!;
  const dl = dSt[nd - 1]!;
  const sl = sSt[nd - 1]!;
  forEachIndex(shape.slice(0, nd - 1), dSt, sSt, dOff, sOff, (d, s) => {
    for (let j = 0; j < lastN; j++) dst[d + j * dl] = src[s + j * sl]!;
  });
}
