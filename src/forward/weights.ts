/**
 * In-memory weights of one MLP block (MoE or dense) in CANONICAL orientation, the input of both
 * forwards (src/forward/cpu.ts, src/gpu/moe.ts). Matrices are nn.Linear weights [out, in]
 * (y = x·Wᵀ): router [E, H], expert gate/up [I, H], down [H, I]. Each weight keeps its raw
 * bytes and dtype (F32 / BF16 / F16) so the GPU can upload 16-bit weights packed and unpack them
 * in the shader. A weight is either held in memory (`data`) or left on disk behind a byte-range
 * reader (`read`), so the GPU forward can stream expert matrices piece by piece (overlapping
 * disk reads with uploads, and never holding a whole layer in memory: a DeepSeek-V3 layer is
 * 22 GB in bf16); `materialize` loads them for the CPU forward. Whoever builds this structure (the HF loader below, or a layout-independent
 * loader) owns the file names; the forwards only see this.
 */
import { MoekitError } from '../errors.js';
import type { FloatDtype } from '../store/dtypes.js';
import { toFloat32 } from '../engine/cast.js';

export interface Weight {
  dtype: FloatDtype;
  shape: number[];
  /** raw little-endian bytes, exactly numel·size(dtype) of them, when held in memory */
  data?: Uint8Array;
  /** reads bytes [start, end) (into `into` when given), for weights left on disk */
  read?: (start: number, end: number, into?: Buffer) => Promise<Uint8Array>;
}

/** One gated (gate + up) or non-gated (up only, e.g. ReLU²) MLP expert. */
export interface ExpertWeights {
  /** [I, H]; absent for non-gated activations */
  gate?: Weight;
  /** [I, H] */
  up: Weight;
  /** [H, I] */
  down: Weight;
  gateBias?: Weight;
  upBias?: Weight;
  downBias?: Weight;
}

export interface RouterWeights {
  /** [E, H] */
  weight: Weight;
  /** [E]: added to the logits (GPT-OSS router bias) */
  bias?: Weight;
  /** [E]: added to the scores for expert selection only (DeepSeek-V3 e_score_correction_bias) */
  correctionBias?: Weight;
  /** [H]: multiplies the router input per feature (Gemma-4 router.scale) */
  scale?: Weight;
  /** [E]: multiplies each selected expert's routing weight (Gemma-4 per_expert_scale) */
  expertScale?: Weight;
}

export interface MoeBlockWeights {
  hidden: number;
  /** absent for a dense MLP block */
  router?: RouterWeights;
  /** routed experts (empty for a dense block) */
  experts: ExpertWeights[];
  /** always-on experts added to the output with weight 1 (a dense MLP is one of these) */
  shared: ExpertWeights[];
  /** Qwen2-MoE: the shared output is scaled by sigmoid(x·shared_gateᵀ); [1, H] */
  sharedGate?: Weight;
  /** JetMoE: a bias [H] added to the block's output once per token */
  outBias?: Weight;
  /** Gemma-4: RMSNorm weights [H] on the experts' input and on the block's output (the router reads the raw input) */
  preNorm?: Weight;
  postNorm?: Weight;
}

export const dtypeBytes = (d: FloatDtype): number => (d === 'F32' ? 4 : 2);

export const weightNbytes = (w: Weight): number => w.shape.reduce((a, b) => a * b, 1) * dtypeBytes(w.dtype);

/** The bytes of an in-memory weight (lazy ones must be materialized first). */
export function bytesOf(w: Weight): Uint8Array {
  if (!w.data) throw new MoekitError('internal', `internal: weight [${w.shape}] is not in memory (materialize the block first)`);
  return w.data;
}

/** Bytes [start, end) of a weight, from memory or from disk. */
export function readRange(w: Weight, start: number, end: number, into?: Buffer): Promise<Uint8Array> {
  if (w.data) return Promise.resolve(w.data.subarray(start, end));
  if (!w.read) throw new MoekitError('internal', `internal: weight [${w.shape}] has neither data nor a reader`);
  return w.read(start, end, into);
}

async function loadWeight(w: Weight): Promise<Weight> {
  return w.data ? w : { dtype: w.dtype, shape: w.shape, data: await readRange(w, 0, weightNbytes(w)) };
}

/** A copy of the block with every weight in memory (matrices too unless `matrices` is false). */
export async function materialize(b: MoeBlockWeights, matrices = true): Promise<MoeBlockWeights> {
  const opt = async (w?: Weight) => (w ? loadWeight(w) : undefined);
  const mat = async (w: Weight) => (matrices ? loadWeight(w) : w);
  const expert = async (e: ExpertWeights): Promise<ExpertWeights> => ({
    gate: e.gate && (await mat(e.gate)),
    up: await mat(e.up),
    down: await mat(e.down),
    gateBias: await opt(e.gateBias),
    upBias: await opt(e.upBias),
    downBias: await opt(e.downBias),
  });
  return {
    hidden: b.hidden,
    router: b.router && {
      weight: await loadWeight(b.router.weight),
      bias: await opt(b.router.bias),
      correctionBias: await opt(b.router.correctionBias),
      scale: await opt(b.router.scale),
      expertScale: await opt(b.router.expertScale),
    },
    experts: await Promise.all(b.experts.map(expert)),
    shared: await Promise.all(b.shared.map(expert)),
    sharedGate: await opt(b.sharedGate),
    outBias: await opt(b.outBias),
    preNorm: await opt(b.preNorm),
    postNorm: await opt(b.postNorm),
  };
}

/** out[t] += outBias for every token (JetMoE's block bias); in memory already (materialize keeps it). */
export function addOutputBias(b: MoeBlockWeights, out: Float32Array, T: number): void {
  if (!b.outBias) return;
  const bias = weightF32(b.outBias);
  const H = b.hidden;
  for (let t = 0; t < T; t++) for (let k = 0; k < H; k++) out[t * H + k]! += bias[k]!;
}

export function weightF32(w: Weight): Float32Array {
  return toFloat32(bytesOf(w), w.dtype);
}

/** Intermediate size of an expert (rows of up). */
export const expertI = (e: ExpertWeights): number => e.up.shape[0]!;

/** True if any weight of the block is stored in 16 bits. */
export function blockIs16Bit(b: MoeBlockWeights): boolean {
  const ws: (Weight | undefined)[] = [b.router?.weight, b.sharedGate];
  for (const e of [...b.experts, ...b.shared]) ws.push(e.gate, e.up, e.down);
  return ws.some((w) => w !== undefined && w.dtype !== 'F32');
}

/** Check shapes against each other; throws a one-line MoekitError naming the first mismatch. */
export function validateBlock(b: MoeBlockWeights, where: string): void {
  const H = b.hidden;
  const want = (w: Weight | undefined, shape: number[], what: string) => {
    if (!w) return;
    if (w.shape.length !== shape.length || w.shape.some((d, i) => d !== shape[i])) {
      throw new MoekitError('bad-input', `${where}: ${what} has shape [${w.shape}], expected [${shape}]`);
    }
  };
  const E = b.experts.length;
  if (b.router) {
    want(b.router.weight, [E, H], 'router weight');
    want(b.router.bias, [E], 'router bias');
    want(b.router.correctionBias, [E], 'router score-correction bias');
    want(b.router.scale, [H], 'router input scale');
    want(b.router.expertScale, [E], 'per-expert routing scale');
  } else if (E > 0) {
    throw new MoekitError('bad-input', `${where}: ${E} routed experts but no router`);
  }
  want(b.sharedGate, [1, H], 'shared expert gate');
  want(b.outBias, [H], 'block output bias');
  want(b.preNorm, [H], 'expert input norm');
  want(b.postNorm, [H], 'block output norm');
  const all = [...b.experts.map((e, i) => [e, `expert ${i}`] as const), ...b.shared.map((e, i) => [e, `shared expert ${i}`] as const)];
  for (const [e, name] of all) {
    const I = e.up.shape[0] ?? 0;
    want(e.up, [I, H], `${name} up`);
    want(e.gate, [I, H], `${name} gate`);
    want(e.down, [H, I], `${name} down`);
    want(e.gateBias, [I], `${name} gate bias`);
    want(e.upBias, [I], `${name} up bias`);
    want(e.downBias, [H], `${name} down bias`);
  }
  const gated = all.map(([e]) => e.gate !== undefined);
  if (gated.some((g) => g !== gated[0])) throw new MoekitError('bad-input', `${where}: some experts have a gate projection and some do not`);
  const iR = b.experts.map(expertI);
  if (iR.some((i) => i !== iR[0]))
    throw new MoekitError('bad-input', `${where}: routed experts have different intermediate sizes (${[...new Set(iR)].join(', ')})`);
}
