/**
 * `verify` of a sharded checkpoint: the forward gathers each MoE layer's experts from the ranks
 * (the merged IR's views over the rank files) and reads dense MLP layers from rank 0, which always
 * holds the non-expert tensors under their own names.
 */
import { MoekitError } from '../../errors.js';
import { familyFacts } from '../../families/index.js';
import { layerSourceOf, type LoadedLayer, type LoadOptions } from '../../forward/ir-loader.js';
import { openSharded } from './sharded.js';

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
    throw new MoekitError('bad-input', `${path}: the shard manifest has no source config.json (verify needs the model's routing facts)`);
  }
  const rank0 = sh.ranks.find((r) => r.plan.index === 0)!.ck;
  const base = familyFacts(config);
  const facts = { ...base, routing: sh.ir.routing ?? base.routing, activation: sh.ir.activation ?? base.activation };
  const src = layerSourceOf(sh.ir, sh.manifest.layout, rank0, facts, path);
  return { config, layers: () => src.layers, load: (l, o) => src.load(l, o), close: () => sh.close() };
}
