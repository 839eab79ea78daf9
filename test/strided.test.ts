/**
 * The specialised strided-copy paths (coalesced runs, tiled transposes, the 16-bit pair transpose,
 * 8-byte pairs) must produce exactly what the element-by-element reference produces, including on
 * odd sizes, shapes that are not multiples of the tile, misaligned offsets and stepped slices.
 */
import { describe, expect, it } from 'vitest';
import { stridedCopy, stridedCopyGeneric, coalesce, type Typed } from '../src/engine/strided.js';
import { View, copyView, contiguousStrides, materialize } from '../src/engine/ir.js';
import type { Dtype } from '../src/store/dtypes.js';

function rand(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafeSlow(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    b[i] = s & 0xff;
  }
  return b;
}

const ctor = { 1: Uint8Array, 2: Uint16Array, 4: Uint32Array } as const;
const view = (b: Buffer, unit: 1 | 2 | 4): Typed => new ctor[unit](b.buffer, b.byteOffset, b.byteLength / unit);

/** Run fast and reference copies into two identical (randomly pre-filled) destinations; they must agree byte for byte. */
function agree(unit: 1 | 2 | 4, srcUnits: number, dstUnits: number, dOff: number, dSt: number[], sOff: number, sSt: number[], shape: number[], seed = 1): void {
  const src = rand(srcUnits * unit, seed);
  const d1 = rand(dstUnits * unit, seed + 7);
  const d2a = Buffer.allocUnsafeSlow(d1.length);
  d1.copy(d2a);
  stridedCopy(view(d1, unit), dOff, dSt, view(src, unit), sOff, sSt, shape);
  stridedCopyGeneric(view(d2a, unit), dOff, dSt, view(src, unit), sOff, sSt, shape);
  expect(d1.equals(d2a)).toBe(true);
}

describe('stridedCopy matches the generic walk', () => {
  const sizes: [number, number][] = [
    [1, 1],
    [2, 2],
    [3, 5],
    [31, 33],
    [32, 32],
    [33, 64],
    [64, 65],
    [70, 2],
    [2, 70],
    [130, 97],
  ];
  for (const unit of [1, 2, 4] as const) {
    for (const [r, c] of sizes) {
      it(`${unit}-byte transpose [${r},${c}] → [${c},${r}]`, () => {
        // dst[c, r] = src[r, c]: walk dst shape [c, r]
        agree(unit, r * c, r * c, 0, [r, 1], 0, [1, c], [c, r], r * 31 + c);
      });
      it(`${unit}-byte transpose [${r},${c}] into a wider row (slice of a fused slab) at odd and even offsets`, () => {
        for (const off of [0, 1, 2, 3]) {
          const ld = 2 * r + 3; // destination row stride
          // dst rows of width ld, column block starting at `off`
          agree(unit, r * c + 5, c * ld + off + r, off, [ld, 1], 5, [1, c], [c, r], off + 11);
          agree(unit, r * c + 5, c * (2 * r) + r, r, [2 * r, 1], 4, [1, c], [c, r], off + 13);
        }
      });
      it(`${unit}-byte interleaved (step 2) transpose [${r},${c}]`, () => {
        // gate rows go to even columns of a [c, 2r] slab: dst strides [2r, 2]; up at offset 1
        agree(unit, r * c, c * 2 * r, 0, [2 * r, 2], 0, [1, c], [c, r], r + c);
        agree(unit, r * c, c * 2 * r, 1, [2 * r, 2], 0, [1, c], [c, r], r + c + 1);
        // the read side of an interleaved source: rows 1, 3, 5 … of a [2r, c] tensor, transposed
        agree(unit, 2 * r * c, r * c, 0, [r, 1], c, [1, 2 * c], [c, r], r * c);
      });
    }
  }

  it('batched transposes (stacked [E, r, c] → [E, c, r]) and 8-byte pairs', () => {
    agree(2, 3 * 34 * 66, 3 * 34 * 66, 0, [34 * 66, 34, 1], 0, [34 * 66, 1, 66], [3, 66, 34]);
    agree(2, 3 * 35 * 67, 3 * 35 * 67, 0, [35 * 67, 35, 1], 0, [35 * 67, 1, 67], [3, 67, 35]);
    // 8-byte elements as [.., 2] units: [r, c] f64 transpose
    for (const [r, c] of [
      [5, 7],
      [33, 40],
      [64, 64],
    ] as const) {
      agree(4, r * c * 2, r * c * 2, 0, [r * 2, 2, 1], 0, [2, c * 2, 1], [c, r, 2], r);
      agree(4, r * c * 2, r * c * 2, 0, [2, c * 2, 1], 0, [2, c * 2, 1], [r, c, 2], c); // plain copy
    }
  });

  it('contiguous runs, short runs, reversed-free strided vectors', () => {
    agree(2, 100 * 40, 100 * 40, 0, [40, 1], 0, [40, 1], [100, 40]);
    agree(2, 100 * 40, 100 * 80, 3, [80, 1], 7, [40, 1], [99, 5]); // runs of 5
    agree(1, 1000, 1000, 0, [3], 1, [2], [300]);
    agree(4, 1000, 1000, 0, [1], 1, [3], [300]);
  });

  it('coalesces contiguous neighbours and drops unit dims', () => {
    expect(coalesce([2, 3, 4], [12, 4, 1], [12, 4, 1])).toEqual({ shape: [24], dSt: [1], sSt: [1] });
    expect(coalesce([2, 1, 3, 4], [12, 99, 1, 3], [12, 99, 4, 1])).toEqual({ shape: [2, 3, 4], dSt: [12, 1, 3], sSt: [12, 4, 1] });
  });
});

describe('copyView through the fast paths equals the reference on views', () => {
  const cases: { dtype: Dtype; es: number }[] = [
    { dtype: 'BF16', es: 2 },
    { dtype: 'F32', es: 4 },
    { dtype: 'F64', es: 8 },
    { dtype: 'U8', es: 1 },
  ];
  for (const { dtype, es } of cases) {
    it(`${dtype}: fused gate/up [H, 2I] slab from two [I, H] tensors, concat and interleaved`, async () => {
      const I = 37;
      const H = 66;
      const g = rand(I * H * es, 3);
      const u = rand(I * H * es, 4);
      const gv = View.ofBuffer(g, dtype, [I, H]);
      const uv = View.ofBuffer(u, dtype, [I, H]);
      for (const inter of [false, true]) {
        const slab = Buffer.alloc(H * 2 * I * es);
        const sv = View.ofBuffer(slab, dtype, [H, 2 * I]);
        const gl = inter ? sv.slice(1, 0, 2 * I, 2) : sv.slice(1, 0, I);
        const ul = inter ? sv.slice(1, 1, 2 * I, 2) : sv.slice(1, I, 2 * I);
        await copyView(gv, gl.T);
        await copyView(uv, ul.T);
        // read back through the views and compare with the sources, element by element
        const gb = await materialize(gl.T);
        const ub = await materialize(ul.T);
        expect(gb.equals(g)).toBe(true);
        expect(ub.equals(u)).toBe(true);
        // and an independent check of one element position
        for (const [i, h] of [
          [0, 0],
          [I - 1, H - 1],
          [5, 17],
          [36, 1],
        ] as const) {
          const col = inter ? 2 * i : i;
          expect(slab.subarray((h * 2 * I + col) * es, (h * 2 * I + col + 1) * es).equals(g.subarray((i * H + h) * es, (i * H + h + 1) * es))).toBe(true);
        }
      }
      expect(contiguousStrides([2, 3])).toEqual([3, 1]);
    });
  }
});
