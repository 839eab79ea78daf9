/**
 * The forward's view of a checkpoint, for any layout: MoE layers are read through the layout specs
 * (converters/, HF layouts included) into the canonical IR and turned into MoeBlockWeights; dense
 * MLP layers through converters/dense-mlp.ts. No tensor name is known here: names live only in the
 * specs. The independent judge of what this builds is transformers' own block outputs
 * (reference.safetensors), which the tests compare against.
 */
import type { TensorInfo, TensorStore } from '../store/types.js';
import { MoekitError } from '../errors.js';
import { familyFacts, type FamilyFacts } from '../families/index.js';
import type { FloatDtype } from '../store/dtypes.js';
import { materialize, type ExpertIR, type LayerIR, type ModelIR, type View } from '../engine/ir.js';
import { detectStoreLayout, loadMeta, quantizedTensors, readDenseMlps, readIR, type DenseMlp } from '../engine/read.js';
import { dtypeBytes, validateBlock, type ExpertWeights, type MoeBlockWeights, type Weight } from './weights.js';

export interface LoadedLayer {
  weights: MoeBlockWeights;
  facts: FamilyFacts;
  kind: 'moe' | 'dense';
}

export interface LoadOptions {
  /** leave expert matrices on disk behind byte-range readers (both forwards stream them; strided
   * views are gathered row block by row block); the store must stay open while the block is used. */
  lazy?: boolean;
}

export interface LayerSource {
  /** layout id the MoE layers are read through ('dense' when there are none) */
  layout: string;
  layers: number[];
  load: (layer: number, opts?: LoadOptions) => Promise<LoadedLayer>;
  /** the tensors no forward reads (attention, norms, embeddings, lm_head, ...): checked byte for byte */
  others: { store: TensorStore; info: TensorInfo }[];
}

const FLOATS: readonly string[] = ['F32', 'BF16', 'F16'];

/**
 * Bytes [s, e) of a strided 2-D view in canonical row-major order, gathered from the rows they
 * cover (the forwards ask for whole row blocks), so a transposed layout streams like a contiguous
 * one instead of loading a whole layer.
 */
async function gatherRows(v: View, s: number, e: number, into?: Buffer): Promise<Uint8Array> {
  const rowBytes = v.shape[1]! * dtypeBytes(v.dtype as FloatDtype);
  const r0 = Math.floor(s / rowBytes);
  const r1 = Math.ceil(e / rowBytes);
  const exact = r0 * rowBytes === s && r1 * rowBytes === e;
  const out = await materialize(v.slice(0, r0, r1), exact ? into : undefined);
  return exact ? out : out.subarray(s - r0 * rowBytes, e - r0 * rowBytes);
}

/** A View as a forward Weight: contiguous tensor views stay on disk when lazy, others are gathered. */
async function weightOf(v: View, lazy: boolean): Promise<Weight> {
  if (!FLOATS.includes(v.dtype)) throw new MoekitError('unsupported', `${v.label}: dtype ${v.dtype} cannot be verified: verify runs on F32/BF16/F16 weights`);
  const dtype = v.dtype as FloatDtype;
  const shape = [...v.shape];
  if (lazy && v.storage.kind === 'tensor' && v.isContiguous()) {
    const { store, info } = v.storage;
    const base = v.offset * dtypeBytes(dtype);
    return { dtype, shape, read: (s, e, into) => store.read(info, base + s, base + e, into) };
  }
  if (lazy && v.storage.kind === 'tensor' && v.ndim === 2) return { dtype, shape, read: (s, e, into) => gatherRows(v, s, e, into) };
  return { dtype, shape, data: await materialize(v) };
}

async function expertOf(e: ExpertIR, lazy: boolean): Promise<ExpertWeights> {
  const opt = async (v?: View) => (v ? weightOf(v, false) : undefined);
  return {
    gate: e.gate && (await weightOf(e.gate, lazy)),
    up: await weightOf(e.up, lazy),
    down: await weightOf(e.down, lazy),
    gateBias: await opt(e.gate_bias),
    upBias: await opt(e.up_bias),
    downBias: await opt(e.down_bias),
  };
}

/** MoeBlockWeights of one IR layer. */
async function blockFromIR(l: LayerIR, hidden: number, lazy: boolean, where: string): Promise<MoeBlockWeights> {
  if (!l.router) throw new MoekitError('bad-input', `${where} layer ${l.layer}: no router weight`);
  if (l.router.shape[0] !== l.experts.length) {
    throw new MoekitError(
      'unsupported',
      `${where} layer ${l.layer}: holds ${l.experts.length} of ${l.router.shape[0]} experts (an expert-parallel shard?); verify the merged or sharded folder instead`,
    );
  }
  const w = (v?: View) => (v ? weightOf(v, false) : Promise.resolve(undefined));
  const shared: ExpertWeights[] = [];
  if (l.shared_up && l.shared_down) shared.push(await expertOf({ gate: l.shared_gate_proj, up: l.shared_up, down: l.shared_down }, lazy));
  return {
    hidden,
    router: {
      weight: (await w(l.router))!,
      bias: await w(l.router_bias),
      correctionBias: await w(l.score_bias),
      scale: await w(l.router_scale),
      expertScale: await w(l.expert_scale),
    },
    experts: await Promise.all(l.experts.map((e) => expertOf(e, lazy))),
    shared,
    sharedGate: await w(l.shared_gate),
    outBias: await w(l.out_bias),
    preNorm: await w(l.pre_norm),
    postNorm: await w(l.post_norm),
  };
}

async function denseBlock(d: DenseMlp, hidden: number, lazy: boolean): Promise<MoeBlockWeights> {
  return { hidden, experts: [], shared: [await expertOf({ gate: d.gate, up: d.up, down: d.down }, lazy)] };
}

/**
 * The layers the forward can run and a loader for each: MoE layers from `ir`, dense MLP layers
 * read from `denseStore` (rank 0 of a sharded checkpoint: non-expert tensors keep their names).
 */
export function layerSourceOf(ir: ModelIR | undefined, layout: string, denseStore: TensorStore, config: Record<string, unknown>, where: string): LayerSource {
  const base = familyFacts(config);
  // the IR's routing facts (moekit.json's) win over config.json's: they describe what was converted
  const facts: FamilyFacts = { ...base, routing: ir?.routing ?? base.routing, activation: ir?.activation ?? base.activation };
  const moe = new Map((ir?.layers ?? []).map((l) => [l.layer, l]));
  const dense = readDenseMlps(denseStore, new Set(moe.keys()));
  const inBlocks = new Set<string>();
  for (const d of dense.values()) for (const v of [d.gate, d.up, d.down]) if (v) inBlocks.add(v.label);
  const rest = ir ? ir.passthrough : [...denseStore.tensors.values()].map((info) => ({ store: denseStore, info }));
  return {
    layout,
    others: rest.filter((t) => !inBlocks.has(t.info.name)),
    layers: [...new Set([...moe.keys(), ...dense.keys()])].sort((a, b) => a - b),
    load: async (layer, opts) => {
      const lazy = opts?.lazy ?? false;
      const l = moe.get(layer);
      if (l) {
        const weights = await blockFromIR(l, facts.hiddenSize, lazy, where);
        if (facts.numExperts && weights.experts.length !== facts.numExperts) {
          throw new MoekitError('bad-input', `${where} layer ${layer}: router has ${weights.experts.length} experts but config.json says ${facts.numExperts}`);
        }
        validateBlock(weights, `${where} layer ${layer}`);
        return { weights, facts, kind: 'moe' };
      }
      const d = dense.get(layer);
      if (!d) throw new MoekitError('usage', `${where}: layer ${layer} has no MLP block`);
      const weights = await denseBlock(d, facts.hiddenSize, lazy);
      validateBlock(weights, `${where} layer ${layer}`);
      return { weights, facts, kind: 'dense' };
    },
  };
}

/** The layers of a checkpoint the forward can run, and a loader for each, for any layout. */
export async function layerSource(store: TensorStore, config: Record<string, unknown>): Promise<LayerSource> {
  const meta = await loadMeta(store);
  const spec = detectStoreLayout(store, meta);
  const q = spec && quantizedTensors(store);
  if (q) throw new MoekitError('unsupported', `${store.dir} is quantized (${q}); verify runs on F32/BF16/F16 weights: dequantize it first`);
  const ir = spec ? readIR(store, spec, meta) : undefined;
  return layerSourceOf(ir, spec?.id ?? 'dense', store, config, store.dir);
}
