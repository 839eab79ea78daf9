/** Safetensors dtypes moekit understands, with their element size in bytes. */
export const DTYPE_SIZES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
} as const;

export type Dtype = keyof typeof DTYPE_SIZES;

export function isDtype(s: unknown): s is Dtype {
  return typeof s === 'string' && Object.hasOwn(DTYPE_SIZES, s);
}

export function dtypeSize(d: Dtype): number {
  return DTYPE_SIZES[d];
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

export function byteSize(dtype: Dtype, shape: readonly number[]): number {
  return numel(shape) * DTYPE_SIZES[dtype];
}

/** Float dtypes that the cast routines convert between. */
export type FloatDtype = 'F32' | 'F16' | 'BF16';
export const FLOAT_DTYPES: readonly FloatDtype[] = ['F32', 'F16', 'BF16'];

/** Parse a CLI dtype name (f32, bf16, float16, ...) into a float dtype. */
export function parseFloatDtype(s: string): FloatDtype {
  const k = s.trim().toLowerCase();
  if (k === 'f32' || k === 'float32' || k === 'fp32') return 'F32';
  if (k === 'f16' || k === 'float16' || k === 'fp16' || k === 'half') return 'F16';
  if (k === 'bf16' || k === 'bfloat16') return 'BF16';
  throw new Error(`unknown dtype '${s}' (expected f32, f16 or bf16)`);
}
