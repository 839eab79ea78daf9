/**
 * Per-tensor transforms: small named ops a plan applies to a tensor's bytes on their way to the
 * writer, chunk by chunk (a chunk always holds whole elements). Each op is data in the plan
 * (`--dry-run` prints its name) and a pure function here, testable alone. A new op (dequantize,
 * quantize, an upcycling scale) is one more entry in OPS.
 */
import type { FloatDtype } from '../store/dtypes.js';
import { castFloat } from './cast.js';

export interface CastOp {
  op: 'cast';
  from: FloatDtype;
  to: FloatDtype;
}

export type Transform = CastOp & { readonly name: string };

/** Cast between F32, F16 and BF16, rounding to nearest even and keeping NaN and ±Inf. */
export function castTransform(from: FloatDtype, to: FloatDtype): Transform {
  return { op: 'cast', from, to, name: `cast ${from}→${to}` };
}

const OPS: { [K in Transform['op']]: (t: Extract<Transform, { op: K }>, data: Uint8Array) => Uint8Array } = {
  cast: (t, data) => castFloat(data, t.from, t.to),
};

/** Apply transforms in order; returns `data` itself when there are none. */
export function applyTransforms(ts: readonly Transform[], data: Uint8Array): Uint8Array {
  let out = data;
  for (const t of ts) out = OPS[t.op](t, out);
  return out;
}
