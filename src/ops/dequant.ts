/**
 * `moekit dequant`: a quantized checkpoint (block FP8, MXFP4, int4 pack-quantized, NVFP4; see
 * src/quant/scheme.ts) written as a plain float one, optionally in another expert layout: convert
 * run on the dequantized view of the source (src/store/dequant.ts). Quantized weights become
 * `dtype`; their scale tensors and static activation scales disappear; every other tensor is
 * copied byte for byte; config.json loses `quantization_config` so transformers loads a plain model.
 */
import { MoekitError } from '../errors.js';
import { detectScheme, type QuantMethod } from '../quant/scheme.js';
import { DequantStore } from '../store/dequant.js';
import type { FloatDtype } from '../store/dtypes.js';
import { openWrapped } from '../store/derived.js';
import type { TensorStore } from '../store/types.js';
import { convertStore, type ConvertSummary } from './convert.js';
import type { WriteOptions } from './options.js';

export interface DequantOptions extends WriteOptions {
  /** dtype of the dequantized weights (default BF16) */
  dtype?: FloatDtype;
  /** expert layout of the output (default: the source's own) */
  to?: string;
}

export interface DequantSummary extends ConvertSummary {
  method: QuantMethod;
  /** weights dequantized */
  dequantized: number;
  /** static activation scales left out */
  dropped: number;
}

/** The dequantized view of an open store, or the store itself when nothing in it is quantized. */
export async function dequantized(store: TensorStore, dtype: FloatDtype): Promise<TensorStore> {
  const scheme = await detectScheme(store, await store.config());
  return scheme ? new DequantStore(store, scheme, dtype) : store;
}

export async function dequant(src: string, dst: string, opts: DequantOptions = {}): Promise<DequantSummary> {
  const store = await openWrapped(src, async (inner) => {
    const d = await dequantized(inner, opts.dtype ?? 'BF16');
    if (d instanceof DequantStore) return d;
    throw new MoekitError(
      'bad-input',
      `${src} holds no quantized weights (no FP8 + *_scale_inv, *_blocks, *.weight_packed or NVFP4 tensors); nothing to dequantize`,
    );
  });
  const { scheme } = store;
  const s = await convertStore(store, src, dst, { ...opts, to: opts.to ?? 'hf', dtype: undefined, recordDtype: store.dtype });
  return { ...s, dtype: store.dtype, identity: false, method: scheme.method, dequantized: scheme.groups.size, dropped: scheme.dropped.length };
}
