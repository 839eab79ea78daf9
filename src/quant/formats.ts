/**
 * Element formats of quantized MoE checkpoints, decoded to f32 (and FP8-E4M3 encoded):
 *   - FP8 E4M3 ("fn": bias 7, no infinities, S.1111.111 is NaN, max 448) and E5M2 (IEEE-like,
 *     bias 15), as torch.float8_e4m3fn / float8_e5m2 define them;
 *   - E8M0 scales (OCP MX spec; transformers' MXFP4 and uint8 block-FP8 scales): 2^(s − 127),
 *     255 is NaN;
 *   - E2M1 (FP4: {0, 0.5, 1, 1.5, 2, 3, 4, 6}, sign in bit 3), packed two per byte, the earlier
 *     element in the low nibble (transformers' integrations/mxfp4.py, ModelOpt NVFP4);
 *   - int4 packed eight per int32 along the input dim, least-significant nibble first, stored as
 *     q + 8 (compressed-tensors `pack-quantized`, pack_to_int32 / unpack_from_int32).
 */

function e4m3(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  if (e === 0xf && m === 7) return Number.NaN;
  return e === 0 ? s * (m / 8) * 2 ** -6 : s * (1 + m / 8) * 2 ** (e - 7);
}

function e5m2(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> 2) & 0x1f;
  const m = b & 3;
  if (e === 0x1f) return m === 0 ? s * Number.POSITIVE_INFINITY : Number.NaN;
  return e === 0 ? s * (m / 4) * 2 ** -14 : s * (1 + m / 4) * 2 ** (e - 15);
}

const table = (f: (b: number) => number) => Float32Array.from({ length: 256 }, (_, b) => f(b));

/** byte → value */
export const E4M3 = table(e4m3);
export const E5M2 = table(e5m2);
export const E8M0 = table((s) => (s === 255 ? Number.NaN : 2 ** (s - 127)));
/** nibble → value */
const E2M1 = Float32Array.from({ length: 16 }, (_, n) => (n & 8 ? -1 : 1) * [0, 0.5, 1, 1.5, 2, 3, 4, 6][n & 7]!);

export const E4M3_MAX = 448;

/**
 * f32 → FP8 E4M3 byte: round to nearest, ties to even code, saturating to ±448; NaN → 0x7f. On
 * the f32 bits: a normal result rounds the 23-bit mantissa to 3 (the carry runs into the exponent),
 * then rebiases 127 → 7; below 2^-6 the value is a count of 2^-9 steps, rounded to even.
 *
 * Made by makeToE4M3, whose source is self-contained (its scratch is its own): the block-FP8
 * workers (fp8-pool.ts) evaluate that source, and a bundler may rename module-level names.
 */
export const toE4M3 = makeToE4M3();

/** A toE4M3 with its own f32 scratch (see toE4M3). */
export function makeToE4M3(): (x: number) => number {
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  return function toE4M3(x: number): number {
    f32[0] = x;
    const bits = u32[0]!;
    const sign = (bits >>> 24) & 0x80;
    const abs = bits & 0x7fffffff;
    if (abs > 0x7f800000) return 0x7f; // NaN
    if (abs >= 0x43e00000) return sign | 126; // ≥ 448: saturate (no infinities in E4M3fn)
    if (abs >= 0x3c800000) {
      // ≥ 2^-6: normal
      const r = (abs + 0x7ffff + ((abs >>> 20) & 1)) >>> 20;
      return sign | Math.min(126, r - ((127 - 7) << 3));
    }
    f32[0] = x < 0 ? -x : x;
    const v = f32[0]! * 512; // exact: a power-of-two scaling of an f32 far from the f32 range's ends
    let q = Math.floor(v);
    const d = v - q;
    if (d > 0.5 || (d === 0.5 && (q & 1) === 1)) q++;
    return sign | q;
  };
}

/** Two E2M1 values per byte (low nibble first) → f32, `n` values from `src` starting at byte 0. */
export function unpackE2M1(src: Uint8Array, n: number, out: Float32Array, at = 0): void {
  for (let i = 0; i < n; i++) {
    const b = src[i >> 1]!;
    out[at + i] = E2M1[i & 1 ? b >> 4 : b & 15]!;
  }
}

/** Eight int4 per int32 (LSB first, stored q + 8) → q as numbers, `n` values. */
export function unpackInt4(words: Int32Array | Uint32Array, n: number, out: Float32Array, at = 0): void {
  for (let i = 0; i < n; i++) out[at + i] = ((words[i >> 3]! >>> ((i & 7) * 4)) & 15) - 8;
}
