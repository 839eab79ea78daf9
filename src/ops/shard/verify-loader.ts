/**
 * `verify` of a sharded checkpoint: the forward gathers each MoE layer's experts from the ranks
 * (the merged IR's views over the rank files) and reads dense MLP layers from rank 0, which always
 * holds the non-expert tensors under their own names.
 */
import type { QuantMethod } from '../../quant/scheme.js';
import { MoekitError } from '../../errors.js';
import { layerSourceOf, type LoadedLayer, type LoadOptions } from '../../forward/ir-loader.js';
import { openSharded, verifyChecksums } from './sharded.js';
import type { CoverageSide } from '../coverage.js';
import { DequantStore } from '../../store/dequant.js';

export interface VerifySide {
  config: Record<string, unknown>;
  layers(): number[];
  load(layer: number, opts?: LoadOptions): Promise<LoadedLayer>;
  /** what verify checks outside the forward */
  coverage: CoverageSide;
  close(): Promise<void>;
  /** the side's quantization scheme, when it is read dequantized */
  quantized?: QuantMethod;
}

export async function openShardedForVerify(path: string): Promise<VerifySide> {
  const sh = await openSharded(path, { dequantize: true });
  const config = sh.manifest.source.config;
  if (!config) {
    await sh.close();
    throw new MoekitError('bad-input', `${path}: the shard manifest has no source config.json (verify needs the model's routing facts)`);
  }
  const rank0 = sh.ranks.find((r) => r.plan.index === 0)!.view;
  const src = layerSourceOf(sh.ir, sh.manifest.layout, rank0, config, path);
  // block-FP8 ranks are read dequantized: their tensors outside the blocks compare within E4M3 precision
  const schemes = sh.ranks.map((r) => (r.view instanceof DequantStore ? r.view.scheme : undefined));
  const lossy = schemes[0]?.method === 'fp8-block' ? new Set(schemes.flatMap((q) => [...(q?.groups.keys() ?? [])])) : undefined;
  const coverage: CoverageSide = {
    others: src.others,
    all: sh.ranks.flatMap((r) => [...r.view.tensors.values()].map((info) => ({ store: r.view, info }))),
    checksums: () => verifyChecksums(sh),
    lossy,
  };
  return { config, layers: () => src.layers, load: (l, o) => src.load(l, o), coverage, close: () => sh.close(), quantized: schemes[0]?.method };
}
