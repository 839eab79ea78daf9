/**
 * Row bands of an assembled slab: a slab too large for the run's memory budget is built and
 * written as consecutive bands of its leading dim, each assembled from the parts of the sources
 * that land in it. Bands keep the output bytes and their order unchanged; what they cost is
 * reading a transposed source once per band (each band needs a strip of every source row).
 * Parts whose rows cannot be told from one index dim leave the slab whole.
 */
import { byteSize } from '../store/dtypes.js';
import { View } from './ir.js';
import type { SlabPlan } from './plan.js';

type Assembled = Extract<SlabPlan, { kind: 'assemble' }>;
type Part = Assembled['parts'][number];

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** How a part's destination maps onto slab rows: index dim k moves q rows per step from row `base`; k = -1: all in row `base`. */
function rowsOf(dst: View, rowElems: number): { k: number; q: number; base: number } | undefined {
  const inRow = dst.offset % rowElems;
  const base = Math.floor(dst.offset / rowElems);
  let k = -1;
  let reach = inRow;
  for (let d = 0; d < dst.ndim; d++) {
    const n = dst.shape[d]!;
    if (n === 1) continue;
    const st = dst.strides[d]!;
    if (st >= rowElems && st % rowElems === 0 && k < 0) k = d;
    else reach += (n - 1) * st;
  }
  if (reach >= rowElems) return undefined;
  return { k, q: k < 0 ? 0 : dst.strides[k]! / rowElems, base };
}

/** The part restricted to slab rows [r0, r1), placed in a band that starts at row r0; undefined when none of it is there. */
function partIn(p: Part, map: { k: number; q: number; base: number }, r0: number, r1: number, rowElems: number, band: View): Part | undefined {
  let src = p.src;
  let dst = p.dst;
  if (map.k < 0) {
    if (map.base < r0 || map.base >= r1) return undefined;
  } else {
    const n = dst.shape[map.k]!;
    const a = Math.max(0, Math.ceil((r0 - map.base) / map.q));
    const b = Math.min(n, Math.ceil((r1 - map.base) / map.q));
    if (a >= b) return undefined;
    src = src.slice(map.k, a, b);
    dst = dst.slice(map.k, a, b);
  }
  return { src, dst: new View(band.storage, dst.dtype, dst.offset - r0 * rowElems, dst.shape, dst.strides) };
}

/** The slab as bands of at most `maxBytes` (at least one row each), or the slab itself when it fits or cannot be split. */
export function bandSlab(s: Assembled, maxBytes: number): Assembled[] {
  const bytes = byteSize(s.dtype, s.shape);
  const R = s.shape[0] ?? 1;
  if (bytes <= maxBytes || R < 2) return [s];
  const rowElems = numel(s.shape.slice(1));
  const maps = s.parts.map((p) => rowsOf(p.dst, rowElems));
  if (maps.some((m) => m === undefined)) return [s];
  const rows = Math.max(1, Math.floor(maxBytes / (bytes / R)));
  const bands: Assembled[] = [];
  for (let r0 = 0; r0 < R; r0 += rows) {
    const r1 = Math.min(R, r0 + rows);
    const shape = [r1 - r0, ...s.shape.slice(1)];
    const probe = View.ofBuffer(Buffer.alloc(0), s.dtype, shape);
    const parts: Part[] = [];
    for (let k = 0; k < s.parts.length; k++) {
      const p = partIn(s.parts[k]!, maps[k]!, r0, r1, rowElems, probe);
      if (p) parts.push(p);
    }
    if (parts.reduce((a, p) => a + p.dst.numel, 0) !== numel(shape)) return [s];
    bands.push({ kind: 'assemble', dtype: s.dtype, shape, parts });
  }
  return bands;
}
