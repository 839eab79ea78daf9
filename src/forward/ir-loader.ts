/**
 * Verify any layout moekit reads: builds the forward's MoeBlockWeights from the canonical expert IR
 * (src/ir.ts) of a checkpoint, whatever its layout (TE, Megatron, NeMo, flashfusemoe, ...).
 * HF-layout checkpoints keep the independent HF loader (hf-loader.ts), so `verify <hf> <converted>`
 * compares two separately written readers. Dense MLP layers are not part of the expert IR: they
 * pass through conversions under their HF names and are read by the HF loader.
 */
import type { TensorStore } from '../store/types.js';
import { MoekitError } from '../errors.js';
import { familyFacts, type FamilyFacts } from '../families/index.js';
import type { FloatDtype } from '../store/dtypes.js';
import { View, materialize, type ExpertIR, type LayerIR } from '../engine/ir.js';
import { detectLayout, loadMeta, readIR } from '../engine/read.js';
import { loadLayerFromHf, mlpLayers, type LoadedLayer, type LoadOptions } from './hf-loader.js';
import type { ExpertWeights, MoeBlockWeights, Weight } from './weights.js';

export interface LayerSource {
  /** layout id the layers are read through ('hf' for the HF loader) */
  layout: string;
  layers: number[];
  load: (layer: number, opts?: LoadOptions) => Promise<LoadedLayer>;
}

const FLOATS: readonly string[] = ['F32', 'BF16', 'F16'];

/** A View as a forward Weight: contiguous tensor views stay on disk when lazy, others are gathered. */
async function weightOf(ck: TensorStore, v: View, lazy: boolean): Promise<Weight> {
  if (!FLOATS.includes(v.dtype)) throw new MoekitError('bad-input', `${v.label}: dtype ${v.dtype} cannot be verified (dequantize first)`);
  const dtype = v.dtype as FloatDtype;
  const shape = [...v.shape];
  if (lazy && v.storage.kind === 'tensor' && v.isContiguous()) {
    const info = v.storage.info;
    const base = v.offset * (dtype === 'F32' ? 4 : 2);
    return { dtype, shape, read: (s, e, into) => ck.read(info, base + s, base + e, into) };
  }
  return { dtype, shape, data: await materialize(v) };
}

async function expertOf(ck: TensorStore, e: ExpertIR, lazy: boolean): Promise<ExpertWeights> {
  const opt = async (v?: View) => (v ? weightOf(ck, v, false) : undefined);
  return {
    gate: e.gate && (await weightOf(ck, e.gate, lazy)),
    up: await weightOf(ck, e.up, lazy),
    down: await weightOf(ck, e.down, lazy),
    gateBias: await opt(e.gate_bias),
    upBias: await opt(e.up_bias),
    downBias: await opt(e.down_bias),
  };
}

/** MoeBlockWeights of one IR layer. */
export async function blockFromIR(ck: TensorStore, l: LayerIR, hidden: number, lazy: boolean): Promise<MoeBlockWeights> {
  if (!l.router) throw new MoekitError('bad-input', `${ck.dir} layer ${l.layer}: no router weight`);
  if (l.router.shape[0] !== l.experts.length) {
    throw new MoekitError('bad-input', `${ck.dir} layer ${l.layer}: holds ${l.experts.length} of ${l.router.shape[0]} experts (an expert-parallel shard?); verify the merged or sharded folder instead`);
  }
  const w = (v?: View) => (v ? weightOf(ck, v, false) : Promise.resolve(undefined));
  const shared: ExpertWeights[] = [];
  if (l.shared_up && l.shared_down) {
    shared.push(await expertOf(ck, { gate: l.shared_gate_proj, up: l.shared_up, down: l.shared_down }, lazy));
  }
  return {
    hidden,
    router: { weight: (await w(l.router))!, bias: await w(l.router_bias), correctionBias: await w(l.score_bias) },
    experts: await Promise.all(l.experts.map((e) => expertOf(ck, e, lazy))),
    shared,
    sharedGate: await w(l.shared_gate),
  };
}

/** The layers of a checkpoint the forward can run, and a loader for each, for any layout. */
export async function layerSource(ck: TensorStore, config: Record<string, unknown>): Promise<LayerSource> {
  const meta = await loadMeta(ck);
  const spec = detectLayout(ck.names(), meta);
  const dense = mlpLayers(ck, config);
  if (!spec || spec.families) {
    return { layout: 'hf', layers: dense, load: (layer, opts) => loadLayerFromHf(ck, config, layer, opts) };
  }
  const ir = readIR(ck, spec, meta);
  const byLayer = new Map(ir.layers.map((l) => [l.layer, l]));
  const base = familyFacts(config);
  if (base.routing.scoreFunc === 'sparsemixer') throw new MoekitError('bad-input', `${base.family}: sparsemixer routing is not supported by verify yet`);
  // moekit.json's routing facts win over config.json's (they describe what was converted).
  const facts: FamilyFacts = { ...base, routing: meta.routing ?? base.routing, activation: meta.activation ?? base.activation };
  const layers = [...new Set([...dense, ...byLayer.keys()])].sort((a, b) => a - b);
  return {
    layout: spec.id,
    layers,
    load: async (layer, opts) => {
      const l = byLayer.get(layer);
      if (!l) return loadLayerFromHf(ck, config, layer, opts);
      return { weights: await blockFromIR(ck, l, facts.hiddenSize, opts?.lazy ?? false), facts, kind: 'moe' };
    },
  };
}
