/**
 * Bit-exact float conversions among F32, F16 and BF16.
 * Narrowing rounds to nearest, ties to even; NaN stays NaN (quiet, sign kept), ±Inf stays ±Inf;
 * values beyond the target's range become ±Inf as IEEE 754 requires.
 */
import type { FloatDtype } from '../store/dtypes.js';
import { DTYPE_SIZES } from '../store/dtypes.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) {
    // NaN: keep sign and top payload bits, force the quiet bit so it cannot round to Inf.
    return ((bits >>> 16) | 0x0040) & 0xffff;
  }
  const rounded = bits + 0x7fff + ((bits >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

export function bf16ToF32Bits(h: number): number {
  return (h << 16) >>> 0;
}

export function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) {
    if (mant !== 0) return sign | 0x7e00 | (mant >>> 13); // NaN, quiet
    return sign | 0x7c00; // Inf
  }
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow
  if (e <= 0) {
    // subnormal half (or zero)
    if (e < -10) return sign; // too small: rounds to zero
    mant |= 0x800000;
    const shift = 14 - e; // 14..24
    const half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    let r = half;
    if (rem > halfway || (rem === halfway && (half & 1) === 1)) r += 1;
    return sign | r;
  }
  let r = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1) === 1)) r += 1; // may carry into exponent (to Inf): correct
  return sign | r;
}

export function f16ToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0) {
    if (mant === 0) return sign >>> 0;
    // subnormal: normalise
    let e = -1;
    do {
      mant <<= 1;
      e++;
    } while ((mant & 0x400) === 0);
    mant &= 0x3ff;
    return (sign | ((127 - 15 - e) << 23) | (mant << 13)) >>> 0;
  }
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  return (sign | ((exp - 15 + 127) << 23) | (mant << 13)) >>> 0;
}

export function f32ToBits(x: number): number {
  f32[0] = x;
  return u32[0]!;
}

export function bitsToF32(b: number): number {
  u32[0] = b;
  return f32[0]!;
}

/** Decode any float buffer into a Float32Array (copy). */
export function toFloat32(buf: Uint8Array, dtype: FloatDtype | 'F64'): Float32Array {
  const n = buf.byteLength / (dtype === 'F64' ? 8 : DTYPE_SIZES[dtype]);
  const out = new Float32Array(n);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dtype === 'F32') {
    for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
  } else if (dtype === 'F64') {
    for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
  } else {
    const o32 = new Uint32Array(out.buffer);
    if (dtype === 'BF16') for (let i = 0; i < n; i++) o32[i] = bf16ToF32Bits(dv.getUint16(i * 2, true));
    else for (let i = 0; i < n; i++) o32[i] = f16ToF32Bits(dv.getUint16(i * 2, true));
  }
  return out;
}

/** Cast a little-endian float buffer between F32, F16 and BF16. Returns a new Buffer. */
export function castFloat(buf: Uint8Array, from: FloatDtype, to: FloatDtype): Buffer {
  if (from === to) return Buffer.from(buf);
  const n = buf.byteLength / DTYPE_SIZES[from];
  const src = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out = Buffer.alloc(n * DTYPE_SIZES[to]);
  const dst = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let i = 0; i < n; i++) {
    let bits: number;
    if (from === 'F32') bits = src.getUint32(i * 4, true);
    else if (from === 'BF16') bits = bf16ToF32Bits(src.getUint16(i * 2, true));
    else bits = f16ToF32Bits(src.getUint16(i * 2, true));
    if (to === 'F32') dst.setUint32(i * 4, bits, true);
    else if (to === 'BF16') dst.setUint16(i * 2, f32BitsToBf16(bits), true);
    else dst.setUint16(i * 2, f32BitsToF16(bits), true);
  }
  return out;
}
