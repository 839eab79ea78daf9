/**
 * `verify` of a sharded checkpoint: the forward gathers each MoE layer's experts from the ranks
 * (the merged IR's views over the rank files) into the same MoeBlockWeights the HF loader builds;
 * dense MLP layers are read from rank 0 (which always holds the non-expert tensors) by the HF
 * loader, since non-expert tensors keep their HF names in every layout.
 */
import { MoekitError } from '../../errors.js';
import { familyFacts } from '../../families/index.js';
import { loadLayerFromHf, mlpLayers, type LoadedLayer, type LoadOptions } from '../../forward/hf-loader.js';
import { blockFromIR } from '../../forward/ir-loader.js';
import { validateBlock } from '../../forward/weights.js';
import { openSharded, type Sharded } from './sharded.js';

export interface VerifySide {
  config: Record<string, unknown>;
  layers(): number[];
  load(layer: number, opts?: LoadOptions): Promise<LoadedLayer>;
  close(): Promise<void>;
}

export async function openShardedForVerify(path: string): Promise<VerifySide> {
  const sh = await openSharded(path);
  const config = sh.manifest.source.config;
  if (!config) {
    await sh.close();
    throw new MoekitError('unsupported', `${path}: the shard manifest has no source config.json (verify needs the model's routing facts)`);
  }
  const rank0 = sh.ranks.find((r) => r.plan.index === 0)!.ck;
  const moe = new Map(sh.ir.layers.map((l) => [l.layer, l]));
  return {
    config,
    layers: () => [...new Set([...mlpLayers(rank0, config), ...moe.keys()])].sort((a, b) => a - b),
    load: async (layer, opts) => {
      const l = moe.get(layer);
      if (!l) return loadLayerFromHf(rank0, config, layer, opts);
      const facts = familyFacts(config);
      const where = `${path} layer ${layer}`;
      const w = await blockFromIR(sh.reader, l, facts.hiddenSize, opts?.lazy ?? false);
      validateBlock(w, where);
      return { weights: w, facts, kind: 'moe' };
    },
    close: () => sh.close(),
  };
}
