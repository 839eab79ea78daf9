/**
 * In-memory weights of one MLP block (MoE or dense) in CANONICAL orientation, the input of both
 * forwards (src/forward/cpu.ts, src/gpu/moe.ts). Matrices are nn.Linear weights [out, in]
 * (y = x·Wᵀ): router [E, H], expert gate/up [I, H], down [H, I]. Each weight keeps its raw
 * bytes and dtype (F32 / BF16 / F16) so the GPU can upload 16-bit weights packed and unpack them
 * in the shader. Whoever builds this structure (the HF loader below, or a layout-independent
 * loader) owns the file names; the forwards only see this.
 */
import { MoekitError } from '../errors.js';
import type { FloatDtype } from '../safetensors/dtypes.js';
import { toFloat32 } from '../safetensors/cast.js';

export interface Weight {
  dtype: FloatDtype;
  shape: number[];
  /** raw little-endian bytes, exactly numel·size(dtype) of them */
  data: Uint8Array;
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
}

export const dtypeBytes = (d: FloatDtype): number => (d === 'F32' ? 4 : 2);

export function weightF32(w: Weight): Float32Array {
  return toFloat32(w.data, w.dtype);
}

export function makeWeight(dtype: FloatDtype, shape: number[], data: Uint8Array): Weight {
  const n = shape.reduce((a, b) => a * b, 1);
  if (data.byteLength !== n * dtypeBytes(dtype)) {
    throw new MoekitError(`internal: weight of shape [${shape}] ${dtype} has ${data.byteLength} bytes, expected ${n * dtypeBytes(dtype)}`);
  }
  return { dtype, shape, data };
}

/** Intermediate size of an expert (rows of up). */
export const expertI = (e: ExpertWeights): number => e.up.shape[0]!;

/** True if any weight of the block is stored in 16 bits. */
export function blockIs16Bit(b: MoeBlockWeights): boolean {
  const ws: (Weight | undefined)[] = [b.router?.weight, b.sharedGate];
  for (const e of [...b.experts, ...b.shared]) ws.push(e.gate, e.up, e.down);
  return ws.some((w) => w !== undefined && w.dtype !== 'F32');
}

/** Total bytes of the block's weights (what a verify has to read from disk). */
export function blockBytes(b: MoeBlockWeights): number {
  let n = 0;
  const add = (w?: Weight) => (n += w ? w.data.byteLength : 0);
  add(b.router?.weight);
  add(b.router?.bias);
  add(b.router?.correctionBias);
  add(b.sharedGate);
  for (const e of [...b.experts, ...b.shared]) [e.gate, e.up, e.down, e.gateBias, e.upBias, e.downBias].forEach(add);
  return n;
}

/** Check shapes against each other; throws a one-line MoekitError naming the first mismatch. */
export function validateBlock(b: MoeBlockWeights, where: string): void {
  const H = b.hidden;
  const want = (w: Weight | undefined, shape: number[], what: string) => {
    if (!w) return;
    if (w.shape.length !== shape.length || w.shape.some((d, i) => d !== shape[i])) {
      throw new MoekitError(`${where}: ${what} has shape [${w.shape}], expected [${shape}]`);
    }
  };
  const E = b.experts.length;
  if (b.router) {
    want(b.router.weight, [E, H], 'router weight');
    want(b.router.bias, [E], 'router bias');
    want(b.router.correctionBias, [E], 'router score-correction bias');
  } else if (E > 0) {
    throw new MoekitError(`${where}: ${E} routed experts but no router`);
  }
  want(b.sharedGate, [1, H], 'shared expert gate');
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
  if (gated.some((g) => g !== gated[0])) throw new MoekitError(`${where}: some experts have a gate projection and some do not`);
  const iR = b.experts.map(expertI);
  if (iR.some((i) => i !== iR[0])) throw new MoekitError(`${where}: routed experts have different intermediate sizes (${[...new Set(iR)].join(', ')})`);
}
