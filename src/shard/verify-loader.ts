/**
 * `verify` of a sharded checkpoint: the forward gathers each MoE layer's experts from the ranks
 * (the merged IR's views over the rank files) into the same MoeBlockWeights the HF loader builds;
 * dense MLP layers are read from rank 0 (which always holds the non-expert tensors) by the HF
 * loader, since non-expert tensors keep their HF names in every layout.
 */
import { MoekitError } from '../errors.js';
import { familyFacts } from '../family.js';
import { materialize, type ExpertIR, type View } from '../ir.js';
import type { FloatDtype } from '../safetensors/dtypes.js';
import { loadLayerFromHf, mlpLayers, type LoadedLayer } from '../forward/hf-loader.js';
import { makeWeight, validateBlock, type ExpertWeights, type MoeBlockWeights, type Weight } from '../forward/weights.js';
import { openSharded, type Sharded } from './sharded.js';

export interface VerifySide {
  config: Record<string, unknown>;
  layers(): number[];
  load(layer: number): Promise<LoadedLayer>;
  close(): Promise<void>;
}

const FLOAT = new Set(['F32', 'BF16', 'F16']);

async function weight(sh: Sharded, v: View | undefined, what: string): Promise<Weight | undefined> {
  if (!v) return undefined;
  if (!FLOAT.has(v.dtype)) throw new MoekitError(`${what} is ${v.dtype}: verify runs on F32/BF16/F16 weights`);
  return makeWeight(v.dtype as FloatDtype, [...v.shape], await materialize(sh.reader, v));
}

async function expert(sh: Sharded, e: ExpertIR, what: string): Promise<ExpertWeights> {
  return {
    gate: await weight(sh, e.gate, `${what} gate`),
    up: (await weight(sh, e.up, `${what} up`))!,
    down: (await weight(sh, e.down, `${what} down`))!,
    gateBias: await weight(sh, e.gate_bias, `${what} gate bias`),
    upBias: await weight(sh, e.up_bias, `${what} up bias`),
    downBias: await weight(sh, e.down_bias, `${what} down bias`),
  };
}

export async function openShardedForVerify(path: string): Promise<VerifySide> {
  const sh = await openSharded(path);
  const config = sh.manifest.source.config;
  if (!config) {
    await sh.close();
    throw new MoekitError(`${path}: the shard manifest has no source config.json (verify needs the model's routing facts)`);
  }
  const rank0 = sh.ranks.find((r) => r.plan.index === 0)!.ck;
  const moe = new Map(sh.ir.layers.map((l) => [l.layer, l]));
  return {
    config,
    layers: () => [...new Set([...mlpLayers(rank0, config), ...moe.keys()])].sort((a, b) => a - b),
    load: async (layer) => {
      const l = moe.get(layer);
      if (!l) return loadLayerFromHf(rank0, config, layer);
      const facts = familyFacts(config);
      const where = `${path} layer ${layer}`;
      const experts: ExpertWeights[] = [];
      for (const [i, e] of l.experts.entries()) experts.push(await expert(sh, e, `${where} expert ${i}`));
      const shared: ExpertWeights[] = [];
      if (l.shared_up && l.shared_down) {
        shared.push(await expert(sh, { gate: l.shared_gate_proj, up: l.shared_up, down: l.shared_down }, `${where} shared expert`));
      }
      const w: MoeBlockWeights = {
        hidden: facts.hiddenSize,
        router: {
          weight: (await weight(sh, l.router, `${where} router`))!,
          bias: await weight(sh, l.router_bias, `${where} router bias`),
          correctionBias: await weight(sh, l.score_bias, `${where} score-correction bias`),
        },
        experts,
        shared,
        sharedGate: await weight(sh, l.shared_gate, `${where} shared-expert gate`),
      };
      if (!l.router) throw new MoekitError(`${where}: no router`);
      validateBlock(w, where);
      return { weights: w, facts, kind: 'moe' };
    },
    close: () => sh.close(),
  };
}
