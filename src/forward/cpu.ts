/**
 * Plain TypeScript reference forward of one MLP block (f32 weights, f64 accumulation): the
 * oracle the WebGPU kernels are tested against, and `moekit verify --cpu`.
 * out[t] = Σ_slots w_slot · expert_slot(x[t]·s_slot) + Σ_shared g_t · shared(x[t])
 * with routing and activations from ./routing.ts.
 */
import { activate, routeToken, type BlockSpec } from './routing.js';
import { expertI, weightF32, type ExpertWeights, type MoeBlockWeights } from './weights.js';

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

export function forwardCpu(w: MoeBlockWeights, spec: BlockSpec, x: Float32Array, T: number): ForwardResult {
  const H = w.hidden;
  const experts = w.experts.map(decode);
  const shared = w.shared.map(decode);
  const router = w.router && weightF32(w.router.weight);
  const rbias = w.router?.bias && weightF32(w.router.bias);
  const corr = w.router?.correctionBias && weightF32(w.router.correctionBias);
  const sgate = w.sharedGate && weightF32(w.sharedGate);
  const E = experts.length;
  const out = new Float32Array(T * H);
  const expertCounts = new Array<number>(E).fill(0);
  const acc = new Float64Array(H);
  const inputScaled = spec.routing.scoreFunc === 'topk_sigmoid_input';
  for (let t = 0; t < T; t++) {
    const xt = x.subarray(t * H, (t + 1) * H);
    acc.fill(0);
    if (router && E > 0) {
      const logits = new Float64Array(E);
      for (let e = 0; e < E; e++) {
        let s = rbias ? rbias[e]! : 0;
        for (let k = 0; k < H; k++) s += xt[k]! * router[e * H + k]!;
        logits[e] = Math.fround(s);
      }
      const { ids, weights } = routeToken(logits, spec.routing, corr);
      ids.forEach((id, j) => {
        expertCounts[id]!++;
        const wj = Math.fround(weights[j]!);
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
      });
    }
    if (shared.length > 0) {
      const sh = new Float64Array(H);
      for (const s of shared) runExpert(s, spec, xt, H, 1, sh);
      let g = 1;
      if (sgate) {
        let d = 0;
        for (let k = 0; k < H; k++) d += xt[k]! * sgate[k]!;
        g = 1 / (1 + Math.exp(-d));
      }
      for (let n = 0; n < H; n++) acc[n]! += g * sh[n]!;
    }
    for (let n = 0; n < H; n++) out[t * H + n] = acc[n]!;
  }
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
