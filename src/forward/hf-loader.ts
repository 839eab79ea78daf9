/**
 * Loads one layer's MLP block of a Hugging Face checkpoint into canonical MoeBlockWeights.
 * Layouts (../shared/reference/moe-layouts.md, transformers modeling files):
 *  - Mixtral: block_sparse_moe.gate.weight, experts.<e>.w1 (gate) / w3 (up) / w2 (down)
 *  - Qwen2/3-MoE, OLMoE, DeepSeek-V3, GLM4-MoE: mlp.gate.weight (+ gate.e_score_correction_bias),
 *    mlp.experts.<e>.{gate,up,down}_proj; shared: mlp.shared_expert(s).*, mlp.shared_expert_gate
 *  - GPT-OSS: mlp.router.{weight,bias}; mlp.experts.gate_up_proj [E,H,2I] with gate = even and
 *    up = odd columns (modeling_gpt_oss.py `gate_up[..., ::2]`, `[..., 1::2]`), + bias [E,2I];
 *    down_proj [E,I,H] (+ bias [E,H]); stored as x·W, so transposed here to [out, in]
 *  - transformers v5 fused experts: mlp.experts.gate_up_proj [E,2I,H] = cat(gate, up), down_proj [E,H,I]
 *  - dense: mlp.{gate,up,down}_proj
 * This is deliberately the only place that knows HF tensor names; other layouts build the same
 * structure elsewhere and hand it to the same forward.
 */
import pLimit from 'p-limit';
import { MoekitError } from '../errors.js';
import type { TensorStore } from '../store/types.js';
import type { FloatDtype } from '../store/dtypes.js';
import { familyFacts, type FamilyFacts } from '../families/index.js';
import { bytesOf, dtypeBytes, makeWeight, validateBlock, type ExpertWeights, type MoeBlockWeights, type Weight } from './weights.js';

const FLOAT = new Set(['F32', 'BF16', 'F16']);

async function readWeight(ck: TensorStore, name: string, lazy = false): Promise<Weight> {
  const info = ck.info(name);
  if (!FLOAT.has(info.dtype)) {
    throw new MoekitError('bad-input', `${name} is ${info.dtype}: verify runs on F32/BF16/F16 weights; dequantize the checkpoint first (e.g. moekit convert --dtype bf16)`,
    );
  }
  if (lazy) return { dtype: info.dtype as FloatDtype, shape: info.shape, read: (start, end, into) => ck.read(info, start, end, into) };
  return makeWeight(info.dtype as FloatDtype, info.shape, await ck.read(info));
}

const opt = async (ck: TensorStore, name: string): Promise<Weight | undefined> => (ck.has(name) ? readWeight(ck, name) : undefined);

/** Gather elements of a row-major tensor by index map (dst i ← src idx(i)), keeping the dtype. */
function gatherElems(src: Weight, shape: number[], idx: (i: number) => number): Weight {
  const s = dtypeBytes(src.dtype);
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(n * s);
  if (s === 4) {
    const a = new Uint32Array(bytesOf(src).buffer, bytesOf(src).byteOffset, bytesOf(src).byteLength / 4);
    const b = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) b[i] = a[idx(i)]!;
  } else {
    const a = new Uint16Array(bytesOf(src).buffer.slice(bytesOf(src).byteOffset, bytesOf(src).byteOffset + bytesOf(src).byteLength));
    const b = new Uint16Array(out.buffer);
    for (let i = 0; i < n; i++) b[i] = a[idx(i)]!;
  }
  return makeWeight(src.dtype, shape, out);
}

/** Rows [r0, r1) of expert e of a stacked tensor [E, R, C]. */
function sliceExpert(w: Weight, e: number, r0?: number, r1?: number): Weight {
  const [, R, C] = w.shape as [number, number, number];
  const a = r0 ?? 0;
  const b = r1 ?? R;
  const s = dtypeBytes(w.dtype);
  const start = (e * R + a) * C * s;
  return makeWeight(w.dtype, C === undefined ? [b - a] : [b - a, C], bytesOf(w).subarray(start, start + (b - a) * (C ?? 1) * s));
}

function sliceVec(w: Weight, e: number, i0: number, n: number, stride = 1): Weight {
  const cols = w.shape[1]!;
  return gatherElems(w, [n], (i) => e * cols + i0 + i * stride);
}

/** Reads go through this limiter: several large positioned reads in flight overlap I/O and page faults. */
const limit = pLimit(8);

async function gatedMlp(ck: TensorStore, p: string, names: [string, string, string], lazy: boolean): Promise<ExpertWeights> {
  const [g, u, d] = names;
  const [gate, up, down, gateBias, upBias, downBias] = await Promise.all([
    limit(() => readWeight(ck, `${p}.${g}.weight`, lazy)),
    limit(() => readWeight(ck, `${p}.${u}.weight`, lazy)),
    limit(() => readWeight(ck, `${p}.${d}.weight`, lazy)),
    opt(ck, `${p}.${g}.bias`),
    opt(ck, `${p}.${u}.bias`),
    opt(ck, `${p}.${d}.bias`),
  ]);
  return { gate, up, down, gateBias, upBias, downBias };
}

/** All experts of a layer, read concurrently, in expert order. */
const gatedExperts = (ck: TensorStore, E: number, prefix: (e: number) => string, names: [string, string, string], lazy: boolean): Promise<ExpertWeights[]> =>
  Promise.all(Array.from({ length: E }, (_, e) => gatedMlp(ck, prefix(e), names, lazy)));

export interface LoadedLayer {
  weights: MoeBlockWeights;
  facts: FamilyFacts;
  kind: 'moe' | 'dense';
}

/** Layer indices with an MLP block we can run (every layer of a known family). */
export function mlpLayers(ck: TensorStore, config: Record<string, unknown>): number[] {
  const facts = familyFacts(config);
  const out: number[] = [];
  for (let i = 0; i < facts.numLayers; i++) {
    const p = `model.layers.${i}.`;
    if ([...ck.tensors.keys()].some((n) => n.startsWith(p) && /\.(mlp|block_sparse_moe|feed_forward)\./.test(n))) out.push(i);
  }
  return out;
}

export interface LoadOptions {
  /** leave expert matrices on disk behind byte-range readers (the GPU forward streams them); the
   * TensorStore must stay open while the block is used. Fused layouts that need reordering load eagerly. */
  lazy?: boolean;
}

export async function loadLayerFromHf(ck: TensorStore, config: Record<string, unknown>, layer: number, opts: LoadOptions = {}): Promise<LoadedLayer> {
  const lazy = opts.lazy ?? false;
  const facts = familyFacts(config);
  if (facts.routing.scoreFunc === 'sparsemixer') throw new MoekitError('bad-input', `${facts.family}: sparsemixer routing is not supported by verify yet`);
  const H = facts.hiddenSize;
  const L = `model.layers.${layer}`;
  const where = `${ck.dir} layer ${layer}`;
  const has = (n: string) => ck.has(n);
  let w: MoeBlockWeights;
  let kind: 'moe' | 'dense' = 'moe';

  if (has(`${L}.block_sparse_moe.gate.weight`)) {
    // modeling_mixtral.py: MixtralBlockSparseTop2MLP w1 = gate, w3 = up, w2 = down
    const p = `${L}.block_sparse_moe`;
    const router = { weight: await readWeight(ck, `${p}.gate.weight`), correctionBias: await opt(ck, `${p}.e_score_correction_bias`) };
    const E = router.weight.shape[0]!;
    const experts = await gatedExperts(ck, E, (e) => `${p}.experts.${e}`, ['w1', 'w3', 'w2'], lazy);
    w = { hidden: H, router, experts, shared: [] };
  } else if (has(`${L}.mlp.router.weight`) && has(`${L}.mlp.experts.gate_up_proj`)) {
    // modeling_gpt_oss.py GptOssExperts: gate_up = x @ gate_up_proj[e] + bias; interleaved gate/up
    const p = `${L}.mlp`;
    const router = { weight: await readWeight(ck, `${p}.router.weight`), bias: await opt(ck, `${p}.router.bias`) };
    const gu = await readWeight(ck, `${p}.experts.gate_up_proj`);
    const dn = await readWeight(ck, `${p}.experts.down_proj`);
    const guB = await opt(ck, `${p}.experts.gate_up_proj_bias`);
    const dnB = await opt(ck, `${p}.experts.down_proj_bias`);
    const [E, Hg, I2] = gu.shape as [number, number, number];
    if (Hg !== H || dn.shape[0] !== E || dn.shape[1] !== I2 / 2 || dn.shape[2] !== H) {
      throw new MoekitError('bad-input', `${where}: gate_up_proj [${gu.shape}] / down_proj [${dn.shape}] do not match hidden ${H}`);
    }
    const I = I2 / 2;
    const experts: ExpertWeights[] = [];
    for (let e = 0; e < E; e++) {
      const base = e * H * I2;
      experts.push({
        gate: gatherElems(gu, [I, H], (k) => base + (k % H) * I2 + 2 * Math.floor(k / H)),
        up: gatherElems(gu, [I, H], (k) => base + (k % H) * I2 + 2 * Math.floor(k / H) + 1),
        down: gatherElems(dn, [H, I], (k) => e * I * H + (k % I) * H + Math.floor(k / I)),
        gateBias: guB && sliceVec(guB, e, 0, I, 2),
        upBias: guB && sliceVec(guB, e, 1, I, 2),
        downBias: dnB && sliceVec(dnB, e, 0, H),
      });
    }
    w = { hidden: H, router, experts, shared: [] };
  } else if (has(`${L}.mlp.gate.weight`)) {
    const p = `${L}.mlp`;
    const router = { weight: await readWeight(ck, `${p}.gate.weight`), correctionBias: await opt(ck, `${p}.gate.e_score_correction_bias`) };
    const E = router.weight.shape[0]!;
    const experts: ExpertWeights[] = [];
    if (has(`${p}.experts.gate_up_proj`)) {
      // transformers v5 fused layout: gate_up_proj [E, 2I, H] = cat(gate, up); down_proj [E, H, I]
      const gu = await readWeight(ck, `${p}.experts.gate_up_proj`);
      const dn = await readWeight(ck, `${p}.experts.down_proj`);
      const I = gu.shape[1]! / 2;
      for (let e = 0; e < E; e++) experts.push({ gate: sliceExpert(gu, e, 0, I), up: sliceExpert(gu, e, I, 2 * I), down: sliceExpert(dn, e) });
    } else {
      experts.push(...(await gatedExperts(ck, E, (e) => `${p}.experts.${e}`, ['gate_proj', 'up_proj', 'down_proj'], lazy)));
    }
    const shared: ExpertWeights[] = [];
    for (const s of ['shared_expert', 'shared_experts']) {
      if (has(`${p}.${s}.gate_proj.weight`)) shared.push(await gatedMlp(ck, `${p}.${s}`, ['gate_proj', 'up_proj', 'down_proj'], lazy));
    }
    w = { hidden: H, router, experts, shared, sharedGate: await opt(ck, `${p}.shared_expert_gate.weight`) };
    // A missing shared expert (or shared gate) is not an error here: the block is run as stored,
    // so a conversion that dropped it shows up as a failing layer in verify.
  } else if (has(`${L}.mlp.gate_proj.weight`)) {
    w = { hidden: H, experts: [], shared: [await gatedMlp(ck, `${L}.mlp`, ['gate_proj', 'up_proj', 'down_proj'], lazy)] };
    kind = 'dense';
  } else {
    const quant = [...ck.tensors.keys()].find((n) => n.startsWith(`${L}.mlp.`) && /_blocks$|_scales$|weight_packed$/.test(n));
    if (quant) throw new MoekitError('bad-input', `${where}: ${quant} is quantized; dequantize the checkpoint first`);
    throw new MoekitError('bad-input', `${where}: no MLP block found (looked for block_sparse_moe.gate, mlp.gate, mlp.router, mlp.gate_proj)`);
  }
  if (kind === 'moe' && facts.numExperts && w.experts.length !== facts.numExperts) {
    throw new MoekitError('bad-input', `${where}: router has ${w.experts.length} experts but config.json says ${facts.numExperts}`);
  }
  validateBlock(w, where);
  return { weights: w, facts, kind };
}
