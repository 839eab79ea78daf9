/**
 * Per-tensor transforms: small named ops a plan applies to a tensor's bytes on their way to the
 * writer, chunk by chunk (a chunk always holds whole elements). Each op is data in the plan
 * (`--dry-run` prints its name) and a pure function here, testable alone. A new op (dequantize,
 * quantize, an upcycling scale) is one more entry in OPS.
 */
import type { FloatDtype } from '../store/dtypes.js';
import { castFloat, toFloat32 } from './cast.js';

export interface CastOp {
  op: 'cast';
  from: FloatDtype;
  to: FloatDtype;
}

export interface ScaleOp {
  op: 'scale';
  dtype: FloatDtype;
  /** every element is multiplied by this (in f32, rounded back to nearest even) */
  factor: number;
}

export type Transform = (CastOp | ScaleOp) & { readonly name: string };

/** Cast between F32, F16 and BF16, rounding to nearest even and keeping NaN and ±Inf. */
export function castTransform(from: FloatDtype, to: FloatDtype): Transform {
  return { op: 'cast', from, to, name: `cast ${from}→${to}` };
}

/** Multiply every element by `factor` (upcycling's compensation of the routing weights): exact for powers of two. */
export function scaleTransform(dtype: FloatDtype, factor: number): Transform {
  return { op: 'scale', dtype, factor, name: `scale ×${factor}` };
}

function scale(t: ScaleOp, data: Uint8Array): Uint8Array {
  const x = toFloat32(data, t.dtype);
  for (let i = 0; i < x.length; i++) x[i] = x[i]! * t.factor;
  const f32 = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  return t.dtype === 'F32' ? f32 : castFloat(f32, 'F32', t.dtype);
}

const OPS: { [K in Transform['op']]: (t: Extract<Transform, { op: K }>, data: Uint8Array) => Uint8Array } = {
  cast: (t, data) => castFloat(data, t.from, t.to),
  scale,
};

/** Apply transforms in order; returns `data` itself when there are none. */
export function applyTransforms(ts: readonly Transform[], data: Uint8Array): Uint8Array {
  let out = data;
  for (const t of ts) out = t.op === 'cast' ? OPS.cast(t, out) : OPS.scale(t, out);
  return out;
}
