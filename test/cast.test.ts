import { describe, expect, it } from 'vitest';
import { bf16ToF32Bits, castFloat, f16ToF32Bits, f32BitsToBf16, f32BitsToF16, f32ToBits, bitsToF32 } from '../src/engine/cast.js';

const hex = (n: number) => '0x' + n.toString(16).padStart(4, '0');

describe('f32 → bf16 (round to nearest, ties to even)', () => {
  const cases: [number, number, string][] = [
    [0x3f800000, 0x3f80, '1.0'],
    [0xbf800000, 0xbf80, '-1.0'],
    [0x00000000, 0x0000, '+0'],
    [0x80000000, 0x8000, '-0'],
    [0x7f800000, 0x7f80, '+Inf'],
    [0xff800000, 0xff80, '-Inf'],
    [0x3f808000, 0x3f80, 'tie, even stays (1.00390625 → 1.0)'],
    [0x3f818000, 0x3f82, 'tie, odd rounds up'],
    [0x3f808001, 0x3f81, 'just above half rounds up'],
    [0x3f807fff, 0x3f80, 'just below half rounds down'],
    [0x7f7fffff, 0x7f80, 'max f32 overflows to Inf'],
    [0x40490fdb, 0x4049, 'pi'],
    [0x00000001, 0x0000, 'smallest subnormal rounds to 0'],
    [0x00400000, 0x0040, 'subnormal kept'],
  ];
  for (const [bits, want, what] of cases) {
    it(what, () => expect(hex(f32BitsToBf16(bits >>> 0))).toBe(hex(want)));
  }
  it('NaN stays NaN (quiet), including a payload that would round to Inf', () => {
    for (const nan of [0x7fc00000, 0x7f800001, 0xffffffff, 0x7fffffff]) {
      const h = f32BitsToBf16(nan);
      expect((h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0).toBe(true);
      expect(h & 0x8000).toBe((nan >>> 16) & 0x8000);
    }
  });
  it('bf16 → f32 is exact', () => {
    expect(bitsToF32(bf16ToF32Bits(0x3f80))).toBe(1);
    expect(bitsToF32(bf16ToF32Bits(0xc049))).toBe(-3.140625);
    expect(Number.isNaN(bitsToF32(bf16ToF32Bits(0x7fc1)))).toBe(true);
  });
});

describe('f32 ↔ f16', () => {
  const cases: [number, number, string][] = [
    [1.0, 0x3c00, '1.0'],
    [-2.0, 0xc000, '-2'],
    [65504, 0x7bff, 'max half'],
    [65520, 0x7c00, 'rounds to Inf at 65520 (tie to even)'],
    [65519.99, 0x7bff, 'below the tie stays max'],
    [2 ** -14, 0x0400, 'min normal'],
    [2 ** -24, 0x0001, 'min subnormal'],
    [2 ** -25, 0x0000, 'half of min subnormal ties to even (0)'],
    [1.5 * 2 ** -25, 0x0001, 'above half of min subnormal rounds up'],
    [3 * 2 ** -25, 0x0002, '1.5 × min subnormal ties to even (2)'],
    [1 + 2 ** -11, 0x3c00, '1 + half ulp ties to even (down)'],
    [1 + 3 * 2 ** -11, 0x3c02, '1 + 1.5 ulp ties to even (up)'],
    [0.1, 0x2e66, '0.1'],
    [Infinity, 0x7c00, '+Inf'],
    [-Infinity, 0xfc00, '-Inf'],
    [-0, 0x8000, '-0'],
  ];
  for (const [x, want, what] of cases) {
    it(what, () => expect(hex(f32BitsToF16(f32ToBits(x)))).toBe(hex(want)));
  }
  it('NaN stays NaN', () => {
    const h = f32BitsToF16(0x7f800001);
    expect((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0).toBe(true);
  });
  it('every f16 value survives f16 → f32 → f16 exactly', () => {
    for (let h = 0; h < 0x10000; h++) {
      const back = f32BitsToF16(f16ToF32Bits(h));
      if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) expect((back & 0x7c00) === 0x7c00 && (back & 0x3ff) !== 0).toBe(true);
      else expect(back).toBe(h);
    }
  });
  it('f16 subnormals decode exactly', () => {
    expect(bitsToF32(f16ToF32Bits(0x0001))).toBe(2 ** -24);
    expect(bitsToF32(f16ToF32Bits(0x03ff))).toBe(1023 * 2 ** -24);
    expect(bitsToF32(f16ToF32Bits(0x8200))).toBe(-512 * 2 ** -24);
  });
});

describe('castFloat on buffers', () => {
  it('f32 → bf16 → f32 keeps bf16-representable values and rounds others once', () => {
    const src = new Float32Array([1, -0.5, 3.140625, 1.00390625, 1.005859375, Infinity, -Infinity, NaN]);
    const bf = castFloat(new Uint8Array(src.buffer), 'F32', 'BF16');
    expect([...new Uint16Array(bf.buffer, bf.byteOffset, 8)].map(hex)).toEqual([
      '0x3f80',
      '0xbf00',
      '0x4049',
      '0x3f80',
      '0x3f81',
      '0x7f80',
      '0xff80',
      '0x7fc0',
    ]);
    const back = new Float32Array(castFloat(bf, 'BF16', 'F32').buffer.slice(0));
    expect([...back.slice(0, 7)]).toEqual([1, -0.5, 3.140625, 1, 1.0078125, Infinity, -Infinity]);
    expect(Number.isNaN(back[7])).toBe(true);
  });
  it('bf16 → f16 rounds once through f32', () => {
    // bf16 0x3f81 = 1.0078125 is exact in f16 (0x3c08); bf16 0x4780 = 65536 overflows f16 to Inf.
    const bf = new Uint16Array([0x3f81, 0x4780, 0x0001]);
    const h = castFloat(new Uint8Array(bf.buffer), 'BF16', 'F16');
    expect([...new Uint16Array(h.buffer, h.byteOffset, 3)].map(hex)).toEqual(['0x3c08', '0x7c00', '0x0000']);
  });
});
