/**
 * `moekit quant --format fp8-block`: a float checkpoint written as a DeepSeek-V3-style block-FP8 one
 * (src/store/quantize.ts), streamed through convert. The inverse of `moekit dequant` up to E4M3
 * precision per block.
 */
import { MoekitError } from '../errors.js';
import { detectScheme } from '../quant/scheme.js';
import { Fp8QuantStore, type QuantSelect } from '../store/quantize.js';
import { openWrapped } from '../store/derived.js';
import { convertStore, type ConvertSummary } from './convert.js';
import type { WriteOptions } from './options.js';

export interface QuantOptions extends WriteOptions, QuantSelect {
  format: 'fp8-block';
  /** block edge (default 128) */
  block?: number;
}

export interface QuantSummary extends ConvertSummary {
  format: string;
  block: number;
  /** weights quantized */
  quantized: number;
}

export async function quant(src: string, dst: string, opts: QuantOptions): Promise<QuantSummary> {
  if (opts.format !== 'fp8-block') throw new MoekitError('usage', `unknown --format '${opts.format}' (known: fp8-block)`);
  const block = opts.block ?? 128;
  if (!Number.isInteger(block) || block < 1) throw new MoekitError('usage', `--block must be a positive integer (got ${block})`);
  const store = await openWrapped(src, async (inner) => {
    if (await detectScheme(inner, await inner.config()))
      throw new MoekitError('bad-input', `${src} is already quantized; dequantize it first (moekit dequant ${src} -o <dst>)`);
    return new Fp8QuantStore(inner, block, opts);
  });
  const s = await convertStore(store, src, dst, { ...opts, to: 'hf', dtype: undefined, format: undefined });
  return { ...s, identity: false, format: opts.format, block, quantized: store.quantized };
}
