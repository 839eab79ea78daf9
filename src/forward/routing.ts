/**
 * Routing and activation math shared by the CPU reference forward (and mirrored in
 * kernels/router_select.wgsl and kernels/expert_up.wgsl). Sources, transformers 5.x:
 *  - softmax → top-k → optional renorm: modeling_mixtral.py / modeling_qwen2_moe.py (Qwen2MoeSparseMoeBlock)
 *  - sigmoid + e_score_correction_bias for selection, group-limited top-k ranked by the sum of each
 *    group's top-2 biased scores, unselected groups masked to 0.0 (not -inf), weights = unbiased
 *    scores, renorm (+1e-20) if norm_topk_prob, × routed_scaling_factor: modeling_deepseek_v3.py
 *    (DeepseekV3MoE.route_tokens_to_experts); the same with unselected groups masked to -inf
 *    (groupMask '-inf'): modeling_kimi_linear.py, modeling_mimo_v2_flash.py, modeling_axk1.py
 *  - softmax scores, groups ranked by their largest score (group_limited_greedy), no renorm unless
 *    norm_topk_prob: modeling_deepseek_v2.py (DeepseekV2Moe)
 *  - top-k of the logits, softmax over the k: modeling_gpt_oss.py (GptOssTopKRouter)
 *  - top-k of the logits, sigmoid of each, scaling the expert input: modeling_llama4.py
 *  - top-k of the logits, sigmoid of each as its weight, renormalised iff norm_topk_prob: modeling_cohere2_moe.py
 *    (Cohere2MoeTopKRouter, expert_selection_fn "sigmoid")
 *  - softmax, top-k, divided by the weights' p-norm (moe_normalize_expert_weights): modeling_dbrx.py (DbrxRouter)
 *  - sigmoid + selection bias, always renormalised, × route_scale: modeling_afmoe.py (AfmoeTokenChoiceRouter)
 *  - sigmoid + selection bias (expert_bias), renormalised with + 1e-6 (renormEps), × routed_scaling_factor:
 *    modeling_lfm2_moe.py (Lfm2MoeSparseMoeBlock.route_tokens_to_experts)
 */
import type { Activation, Routing } from '../families/index.js';
import type { MoeBlockWeights } from './weights.js';

export interface BlockSpec {
  routing: Routing;
  activation: Activation;
}

/** Indices of the k largest values (ties: lower index first), in descending order. */
export function topk(v: ArrayLike<number>, k: number, allowed?: (i: number) => boolean): number[] {
  const out: number[] = [];
  const taken = new Uint8Array(v.length);
  for (let j = 0; j < k; j++) {
    let best = -1;
    for (let i = 0; i < v.length; i++) {
      if (taken[i] || (allowed && !allowed(i))) continue;
      if (best < 0 || v[i]! > v[best]!) best = i;
    }
    if (best < 0) break;
    taken[best] = 1;
    out.push(best);
  }
  return out;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/**
 * PhiMoE's sparsemixer at inference (transformers modeling_phimoe.py `sparsemixer`, eval branch):
 * expert 1 is the argmax; its weight is the softmax at it over only the experts whose relative gap
 * (max − s) / max(|s|, max) is within 2·jitter_eps; expert 2 is the argmax of the others, weighted
 * the same way among them. Always two experts; the weights are not renormalised.
 */
function sparsemixer(s: Float64Array, eps: number): { ids: number[]; weights: number[] } {
  const E = s.length;
  const pick = (masked: Float64Array) => {
    const i = topk(masked, 1)[0]!;
    const m = masked[i]!;
    let den = 0;
    for (let e = 0; e < E; e++) if (masked[e]! !== -Infinity && (m - s[e]!) / Math.max(Math.abs(s[e]!), m) <= 2 * eps) den += Math.exp(masked[e]! - m);
    return { i, w: 1 / den };
  };
  const first = pick(s);
  const rest = Float64Array.from(s);
  rest[first.i] = -Infinity;
  const second = pick(rest);
  return { ids: [first.i, second.i], weights: [first.w, second.w] };
}

/** Route one token: experts and their weights (slot order), and whether weights scale the input. */
export function routeToken(logits: Float64Array, r: Routing, correction?: Float32Array): { ids: number[]; weights: number[] } {
  const E = logits.length;
  const k = r.topK;
  if (r.scoreFunc === 'sparsemixer') return sparsemixer(logits, r.jitterEps ?? 0.01);
  if (r.scoreFunc === 'topk_softmax' || r.scoreFunc === 'topk_sigmoid_input' || r.scoreFunc === 'topk_sigmoid') {
    const ids = topk(logits, k);
    if (r.scoreFunc === 'topk_sigmoid_input') return { ids, weights: ids.map((i) => sigmoid(logits[i]!) * r.routedScalingFactor) };
    if (r.scoreFunc === 'topk_sigmoid') {
      const w = ids.map((i) => sigmoid(logits[i]!));
      const s = r.normTopkProb ? w.reduce((a, b) => a + b, 0) : 1;
      return { ids, weights: w.map((x) => (x / s) * r.routedScalingFactor) };
    }
    const m = Math.max(...ids.map((i) => logits[i]!));
    const ex = ids.map((i) => Math.exp(logits[i]! - m));
    const s = ex.reduce((a, b) => a + b, 0);
    return { ids, weights: ex.map((x) => (x / s) * r.routedScalingFactor) };
  }
  const scores = new Float64Array(E);
  if (r.scoreFunc === 'softmax') {
    let m = -Infinity;
    for (const x of logits) m = Math.max(m, x);
    let s = 0;
    for (let i = 0; i < E; i++) s += scores[i] = Math.exp(logits[i]! - m);
    for (let i = 0; i < E; i++) scores[i]! /= s;
  } else {
    for (let i = 0; i < E; i++) scores[i] = sigmoid(logits[i]!);
  }
  const choice = Float64Array.from(scores, (s, i) => s + (correction ? correction[i]! : 0));
  if (r.nGroup > 1) {
    const G = r.nGroup;
    const per = E / G;
    const gs: number[] = [];
    const n = r.groupScore === 'max' ? 1 : Math.min(2, per);
    for (let g = 0; g < G; g++) {
      const best = topk(choice.subarray(g * per, (g + 1) * per), n);
      gs.push(best.reduce((a, i) => a + choice[g * per + i]!, 0));
    }
    const keep = new Set(topk(gs, r.topkGroup));
    // masked_fill(~mask, 0.0), or float('-inf'): with 0.0 a masked expert outranks a kept one whose biased score is negative
    const masked = r.groupMask === '-inf' ? -Infinity : 0;
    for (let i = 0; i < E; i++) if (!keep.has(Math.floor(i / per))) choice[i] = masked;
  }
  const ids = topk(choice, k);
  let weights = ids.map((i) => scores[i]!);
  if (r.normTopkProb) {
    const p = r.normP ?? 1;
    const s =
      p === 1
        ? weights.reduce((a, b) => a + b, 0) + (r.renormEps ?? (r.scoreFunc === 'sigmoid' ? 1e-20 : 0))
        : weights.reduce((a, w) => a + Math.abs(w) ** p, 0) ** (1 / p);
    weights = weights.map((w) => w / s);
  }
  return { ids, weights: weights.map((w) => w * r.routedScalingFactor) };
}

/** erf, |error| < 1.2e-7 (Numerical Recipes erfc, Chebyshev fit); the same formula is in the WGSL. */
function erf(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r =
    t *
    Math.exp(
      -z * z -
        1.26551223 +
        t *
          (1.00002368 +
            t *
              (0.37409196 +
                t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? 1 - r : r - 1;
}

/**
 * Activation of one hidden unit from its gate and up pre-activations (transformers ACT2FN and
 * the MLP forwards): SwiGLU silu(g)·u; GeGLU gelu(g)·u (exact erf or tanh approximation);
 * ReLU² relu(u)² (non-gated, g unused); SwiGLU-OAI (modeling_gpt_oss.py _apply_gate):
 * g ≤ limit, |u| ≤ limit, (u + 1)·g·σ(α·g); clamped SwiGLU (DeepSeek-V4 swiglu_limit):
 * silu(min(g, limit))·clamp(u, ±limit).
 */
export function activate(a: Activation, g: number, u: number): number {
  switch (a.kind) {
    case 'swiglu':
      return g * sigmoid(g) * u;
    case 'geglu':
      return 0.5 * g * (1 + erf(g / Math.SQRT2)) * u;
    case 'geglu_tanh':
      return 0.5 * g * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (g + 0.044715 * g * g * g))) * u;
    case 'relu2': {
      const r = Math.max(u, 0);
      return r * r;
    }
    case 'swiglu_oai': {
      const lim = a.limit ?? 7;
      const gc = Math.min(g, lim);
      const uc = Math.min(Math.max(u, -lim), lim);
      return (uc + 1) * gc * sigmoid((a.alpha ?? 1.702) * gc);
    }
    case 'swiglu_clamped': {
      const lim = a.limit ?? Infinity;
      const gc = Math.min(g, lim);
      return gc * sigmoid(gc) * Math.min(Math.max(u, -lim), lim);
    }
  }
}

/** The router kernel's modes (kernels/router_select.wgsl `mode`): the score functions it implements. */
export const KERNEL_MODES = { softmax: 0, sigmoid: 1, topk_softmax: 2, topk_sigmoid_input: 3 } as const;

/**
 * Whether the WebGPU router kernel can route this block itself: its rule is one of KERNEL_MODES' with
 * none of the extras the kernel lacks, and (given the block) its router has no input or per-expert
 * scale. The others are routed on the CPU and the selection is given to the kernels.
 */
export function kernelRoutes(r: Routing, w?: MoeBlockWeights): boolean {
  return (
    r.scoreFunc in KERNEL_MODES &&
    r.groupScore !== 'max' &&
    (r.normP ?? 1) === 1 &&
    (r.sharedScale ?? 1) === 1 &&
    r.renormEps === undefined &&
    !r.routerNorm &&
    r.routerInputScale === undefined &&
    !w?.router?.scale &&
    !w?.router?.expertScale
  );
}

/** RMSNorm of one row in f32 as transformers computes it: x · (mean(x²) + eps)^-0.5 (· weight when given). */
export function rmsNorm(x: Float32Array, eps: number, weight?: Float32Array): Float32Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = Math.fround((ss / x.length + eps) ** -0.5);
  return x.map((v, i) => Math.fround(v * r) * (weight ? weight[i]! : 1));
}
