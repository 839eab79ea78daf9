/**
 * Blocks whose experts read a normalised input and whose output is normalised again (Gemma-4:
 * experts(pre_feedforward_layernorm_2(x)) → post_feedforward_layernorm_2, while the router reads the raw
 * x; modeling_gemma4.py Gemma4TextDecoderLayer). Every forward (CPU, WebGPU) runs through this one
 * wrapper: the routing is taken on the raw input, the forward runs the experts on RMSNorm(x)·pre, and
 * its output becomes RMSNorm(out)·post, each row in f32 as transformers' Gemma4RMSNorm computes it.
 */
import type { ForwardResult, Routed } from './cpu.js';
import { routeAll } from './cpu.js';
import { rmsNorm, type BlockSpec } from './routing.js';
import { materialize, weightF32, type MoeBlockWeights } from './weights.js';

type Run<R extends ForwardResult> = (w: MoeBlockWeights, x: Float32Array, forced?: Routed) => Promise<R>;

function normRows(x: Float32Array, H: number, eps: number, weight: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let t = 0; t < x.length / H; t++) out.set(rmsNorm(x.subarray(t * H, (t + 1) * H), eps, weight), t * H);
  return out;
}

export async function withBlockNorms<R extends ForwardResult>(
  w: MoeBlockWeights,
  spec: BlockSpec,
  x: Float32Array,
  T: number,
  forced: Routed | undefined,
  run: Run<R>,
): Promise<R> {
  if (!w.preNorm && !w.postNorm) return run(w, x, forced);
  const small = await materialize(w, false);
  const eps = spec.routing.normEps ?? 1e-6;
  const routed = forced ?? routeAll(small, spec, x, T);
  const xe = small.preNorm ? normRows(x, w.hidden, eps, weightF32(small.preNorm)) : x;
  const r = await run({ ...w, preNorm: undefined, postNorm: undefined }, xe, routed);
  if (small.postNorm) r.out = normRows(r.out, w.hidden, eps, weightF32(small.postNorm));
  return r;
}
