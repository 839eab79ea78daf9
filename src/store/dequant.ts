/**
 * A quantized checkpoint seen as a plain float one: every quantized weight group of the scheme
 * (src/quant/scheme.ts) appears as one tensor of the dequantized name, shape and `dtype`, decoded
 * unit by unit (rows, or an expert's slab) on each read; the scale / packed tensors it is made of,
 * and static activation scales, are hidden; everything else passes through untouched. config()
 * drops `quantization_config`. The whole engine (convert, verify, shard) reads it like any store.
 */
import { castFloat } from '../engine/cast.js';
import type { QGroup, QuantScheme } from '../quant/scheme.js';
import type { FloatDtype } from './dtypes.js';
import { DTYPE_SIZES, numel } from './dtypes.js';
import { DerivedStore } from './derived.js';
import type { TensorInfo, TensorStore } from './types.js';

export class DequantStore extends DerivedStore {
  private readonly virtual = new Map<string, QGroup>();

  constructor(
    inner: TensorStore,
    readonly scheme: QuantScheme,
    readonly dtype: FloatDtype,
  ) {
    super(inner, 'dequantized');
    const size = DTYPE_SIZES[dtype];
    // each group takes the place of its first stored part, so tensor order follows the source
    const byFirst = new Map([...scheme.groups.values()].map((g) => [g.parts[0]!, g]));
    for (const t of inner.tensors.values()) {
      const g = byFirst.get(t.name);
      if (g) {
        this.tensors.set(g.name, { name: g.name, dtype, shape: g.shape, nbytes: numel(g.shape) * size });
        this.virtual.set(g.name, g);
      } else if (!scheme.hidden.has(t.name)) this.tensors.set(t.name, t);
    }
  }

  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const info = typeof t === 'string' ? this.info(t) : t;
    const g = this.virtual.get(info.name);
    if (!g) return this.inner.read(info, start, end, into);
    const stop = end ?? info.nbytes;
    const size = DTYPE_SIZES[this.dtype];
    const unitBytes = g.unit * size;
    const u0 = Math.floor(start / unitBytes);
    const u1 = Math.ceil(stop / unitBytes);
    let bytes: Buffer;
    // a read of whole units into an aligned buffer is decoded in place
    const whole = into && start === u0 * unitBytes && stop === u1 * unitBytes && into.byteOffset % size === 0 && into.byteLength >= stop - start;
    if (g.decodeAs) bytes = await g.decodeAs(u0, u1, this.dtype, whole ? into.subarray(0, stop - start) : undefined);
    else {
      const f = await g.decode(u0, u1);
      bytes = castFloat(new Uint8Array(f.buffer, f.byteOffset, f.byteLength), 'F32', this.dtype);
    }
    const part = bytes.subarray(start - u0 * unitBytes, stop - u0 * unitBytes);
    if (!into) return part;
    if (part.buffer !== into.buffer || part.byteOffset !== into.byteOffset) part.copy(into);
    return into.subarray(0, part.byteLength);
  }

  override async config(): Promise<Record<string, unknown> | undefined> {
    const c = await this.inner.config();
    if (!c) return c;
    const { quantization_config: _q, ...rest } = c;
    return rest;
  }
}
