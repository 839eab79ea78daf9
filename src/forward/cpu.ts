/**
 * Plain TypeScript reference forward of one MLP block (f32 weights, f64 accumulation): the
 * oracle the WebGPU kernels are tested against, and `moekit verify --cpu`.
 * out[t] = Σ_slots w_slot · expert_slot(x[t]·s_slot) + Σ_shared g_t · shared(x[t]) (+ JetMoE's output bias)
 * with routing and activations from ./routing.ts.
 */
import { activate, rmsNorm, routeToken, type BlockSpec } from './routing.js';
import { addOutputBias, expertI, weightF32, type ExpertWeights, type MoeBlockWeights } from './weights.js';

export interface ForwardResult {
  /** [T, H] */
  out: Float32Array;
  /** tokens routed to each routed expert */
  expertCounts: number[];
}

interface DecodedExpert {
  I: number;
  gate?: Float32Array;
  up: Float32Array;
  down: Float32Array;
  gb?: Float32Array;
  ub?: Float32Array;
  db?: Float32Array;
}

const decode = (e: ExpertWeights): DecodedExpert => ({
  I: expertI(e),
  gate: e.gate && weightF32(e.gate),
  up: weightF32(e.up),
  down: weightF32(e.down),
  gb: e.gateBias && weightF32(e.gateBias),
  ub: e.upBias && weightF32(e.upBias),
  db: e.downBias && weightF32(e.downBias),
});

/** acc[0..H) += scale · expert(x) */
function runExpert(e: DecodedExpert, spec: BlockSpec, x: Float32Array, H: number, scale: number, acc: Float64Array): void {
  const h = new Float64Array(e.I);
  for (let i = 0; i < e.I; i++) {
    let u = e.ub ? e.ub[i]! : 0;
    let g = e.gb ? e.gb[i]! : 0;
    const o = i * H;
    for (let k = 0; k < H; k++) u += x[k]! * e.up[o + k]!;
    if (e.gate) for (let k = 0; k < H; k++) g += x[k]! * e.gate[o + k]!;
    h[i] = Math.fround(activate(spec.activation, Math.fround(g), Math.fround(u)));
  }
  for (let n = 0; n < H; n++) {
    let y = e.db ? e.db[n]! : 0;
    const o = n * e.I;
    for (let i = 0; i < e.I; i++) y += h[i]! * e.down[o + i]!;
    acc[n]! += scale * y;
  }
}

/** Expert selection of every token: ids [T·K] and weights [T·K] (what the router chose). */
export interface Routed {
  K: number;
  ids: Uint32Array;
  weights: Float32Array;
  /** per token: the gap between the last selected and the best unselected selection score */
  margin: Float64Array;
}

/**
 * What the router reads of one token: the token itself, or (Gemma-4, Fast-LLM) RMSNorm(x) without a
 * weight, × the router's per-feature scale, × a constant, each step rounded to f32 like transformers.
 */
function routerInput(xt: Float32Array, r: BlockSpec['routing'], scale?: Float32Array): Float32Array {
  if (!r.routerNorm && !scale && r.routerInputScale === undefined) return xt;
  const n = r.routerNorm ? rmsNorm(xt, r.normEps ?? 1e-6) : xt;
  const c = r.routerInputScale ?? 1;
  return n.map((v, i) => Math.fround(Math.fround(v * (scale ? scale[i]! : 1)) * c));
}

/** Route T tokens with the block's router (on the CPU, in f64 accumulation, f32 logits as the kernels). */
export function routeAll(w: MoeBlockWeights, spec: BlockSpec, x: Float32Array, T: number): Routed | undefined {
  if (!w.router || w.experts.length === 0) return undefined;
  const H = w.hidden;
  const E = w.experts.length;
  const K = spec.routing.topK;
  const router = weightF32(w.router.weight);
  const rbias = w.router.bias && weightF32(w.router.bias);
  const corr = w.router.correctionBias && weightF32(w.router.correctionBias);
  const inScale = w.router.scale && weightF32(w.router.scale);
  const eScale = w.router.expertScale && weightF32(w.router.expertScale);
  const rt = spec.routing;
  const r: Routed = { K, ids: new Uint32Array(T * K), weights: new Float32Array(T * K), margin: new Float64Array(T) };
  for (let t = 0; t < T; t++) {
    const xt = routerInput(x.subarray(t * H, (t + 1) * H), rt, inScale);
    const logits = new Float64Array(E);
    for (let e = 0; e < E; e++) {
      let s = rbias ? rbias[e]! : 0;
      for (let k = 0; k < H; k++) s += xt[k]! * router[e * H + k]!;
      logits[e] = Math.fround(s);
    }
    const { ids, weights } = routeToken(logits, spec.routing, corr);
    const score = (e: number) => logits[e]! + (corr ? corr[e]! : 0);
    const chosen = new Set(ids);
    const worstIn = Math.min(...ids.map(score));
    let bestOut = -Infinity;
    for (let e = 0; e < E; e++) if (!chosen.has(e)) bestOut = Math.max(bestOut, score(e));
    r.margin[t] = worstIn - bestOut;
    ids.forEach((id, j) => {
      r.ids[t * K + j] = id;
      r.weights[t * K + j] = Math.fround(weights[j]!) * (eScale ? eScale[id]! : 1);
    });
  }
  return r;
}

/** The shared experts' weight for one token: sigmoid(x · shared_expert_gate) (Qwen2-MoE), or 1 without a gate. */
export function sharedGate(sgate: Float32Array | undefined, xt: Float32Array): number {
  if (!sgate) return 1;
  let d = 0;
  for (let k = 0; k < xt.length; k++) d += xt[k]! * sgate[k]!;
  return 1 / (1 + Math.exp(-d));
}

/** Run one block for T tokens; `forced` replaces the block's own routing (the same experts and weights on both sides of a comparison). */
export function forwardCpu(w: MoeBlockWeights, spec: BlockSpec, x: Float32Array, T: number, forced?: Routed): ForwardResult {
  const H = w.hidden;
  const experts = w.experts.map(decode);
  const shared = w.shared.map(decode);
  const sgate = w.sharedGate && weightF32(w.sharedGate);
  const E = experts.length;
  const out = new Float32Array(T * H);
  const expertCounts = new Array<number>(E).fill(0);
  const acc = new Float64Array(H);
  const inputScaled = spec.routing.scoreFunc === 'topk_sigmoid_input';
  const routed = forced ?? routeAll(w, spec, x, T);
  for (let t = 0; t < T; t++) {
    const xt = x.subarray(t * H, (t + 1) * H);
    acc.fill(0);
    if (routed && E > 0) {
      for (let j = 0; j < routed.K; j++) {
        const id = routed.ids[t * routed.K + j]!;
        const wj = routed.weights[t * routed.K + j]!;
        expertCounts[id]!++;
        if (inputScaled)
          runExpert(
            experts[id]!,
            spec,
            xt.map((v) => Math.fround(v * wj)),
            H,
            1,
            acc,
          );
        else runExpert(experts[id]!, spec, xt, H, wj, acc);
      }
    }
    if (shared.length > 0) {
      const sh = new Float64Array(H);
      for (const s of shared) runExpert(s, spec, xt, H, 1, sh);
      const g = sharedGate(sgate, xt) * (spec.routing.sharedScale ?? 1);
      for (let n = 0; n < H; n++) acc[n]! += g * sh[n]!;
    }
    for (let n = 0; n < H; n++) out[t * H + n] = acc[n]!;
  }
  addOutputBias(w, out, T);
  return { out, expertCounts };
}

/** max|a−b| and max|a−b| / max|ref| */
export function compare(a: Float32Array, ref: Float32Array): { maxAbs: number; maxRel: number; refMax: number } {
  let maxAbs = 0;
  let refMax = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(a[i]! - ref[i]!);
    if (!(d <= maxAbs)) maxAbs = Number.isNaN(d) ? Infinity : d;
    refMax = Math.max(refMax, Math.abs(ref[i]!));
  }
  return { maxAbs, maxRel: refMax > 0 ? maxAbs / refMax : maxAbs, refMax };
}
