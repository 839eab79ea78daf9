// Per-token expert selection and weights; mirrors src/forward/routing.ts (see there for the
// transformers sources of each rule). One invocation per token.
// mode: 0 softmax over all E then top-k (Mixtral, Qwen); 1 sigmoid (DeepSeek-V3: selection on
// score + correction bias, optionally group-limited); 2 top-k of logits, softmax over the k
// (GPT-OSS); 3 top-k of logits, sigmoid of each, used to scale the expert input (Llama4).
// maskInf 1: experts of unselected groups score -inf, not 0.0 (Kimi-Linear, MiMo-V2-Flash, A.X-K1).
// Writes ids[t*K + j] and rw[t*KS + j] (j < K), rw[t*KS + j] = 1 for the shared slots j >= K.
const MAX_E: u32 = 512u;

struct P {
  T: u32, E: u32, K: u32, KS: u32,
  mode: u32, nGroup: u32, topkGroup: u32, norm: u32,
  hasCorr: u32, scale: f32, maskInf: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> corr: array<f32>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> rw: array<f32>;

var<private> score: array<f32, MAX_E>;
var<private> choice: array<f32, MAX_E>;
var<private> taken: array<u32, MAX_E>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x;
  if (t >= p.T) { return; }
  let E = p.E;
  let L = t * E;
  if (p.mode == 0u) {
    var m = logits[L];
    for (var i = 1u; i < E; i++) { m = max(m, logits[L + i]); }
    var s = 0.0;
    for (var i = 0u; i < E; i++) { let v = exp(logits[L + i] - m); score[i] = v; s += v; }
    for (var i = 0u; i < E; i++) { score[i] = score[i] / s; }
  } else if (p.mode == 1u) {
    for (var i = 0u; i < E; i++) { score[i] = sigmoid_f(logits[L + i]); }
  } else {
    for (var i = 0u; i < E; i++) { score[i] = logits[L + i]; }
  }
  for (var i = 0u; i < E; i++) {
    var c = score[i];
    if (p.hasCorr == 1u) { c += corr[i]; }
    choice[i] = c;
    taken[i] = 0u;
  }
  // Group-limited selection (modeling_deepseek_v3.py): rank groups by the sum of their top-2
  // choice scores, keep topk_group groups, mask the rest to 0.0 (masked_fill(~mask, 0.0)) or, with
  // maskInf, below every finite score (masked_fill(~mask, float('-inf'))).
  if (p.nGroup > 1u) {
    let per = E / p.nGroup;
    var keep = array<u32, 64>();
    var gs = array<f32, 64>();
    for (var g = 0u; g < p.nGroup; g++) {
      var b1 = -3.4e38; var b2 = -3.4e38;
      for (var i = g * per; i < (g + 1u) * per; i++) {
        let v = choice[i];
        if (v > b1) { b2 = b1; b1 = v; } else if (v > b2) { b2 = v; }
      }
      gs[g] = select(b1 + b2, b1, per < 2u);
    }
    for (var j = 0u; j < p.topkGroup; j++) {
      var best = 0u; var found = false;
      for (var g = 0u; g < p.nGroup; g++) {
        if (keep[g] == 0u && (!found || gs[g] > gs[best])) { best = g; found = true; }
      }
      keep[best] = 1u;
    }
    let masked = select(0.0, -3.4e38, p.maskInf == 1u);
    for (var i = 0u; i < E; i++) { if (keep[i / per] == 0u) { choice[i] = masked; } }
  }
  // top-k, ties to the lower index (src/forward/routing.ts topk)
  var wsum = 0.0;
  var wmax = -3.4e38;
  for (var j = 0u; j < p.K; j++) {
    var best = 0u; var found = false;
    for (var i = 0u; i < E; i++) {
      if (taken[i] == 0u && (!found || choice[i] > choice[best])) { best = i; found = true; }
    }
    taken[best] = 1u;
    ids[t * p.K + j] = best;
    let v = score[best];
    rw[t * p.KS + j] = v;
    wmax = max(wmax, v);
  }
  if (p.mode == 2u) {
    for (var j = 0u; j < p.K; j++) { let v = exp(rw[t * p.KS + j] - wmax); rw[t * p.KS + j] = v; wsum += v; }
    for (var j = 0u; j < p.K; j++) { rw[t * p.KS + j] = rw[t * p.KS + j] / wsum; }
  } else if (p.mode == 3u) {
    for (var j = 0u; j < p.K; j++) { rw[t * p.KS + j] = sigmoid_f(rw[t * p.KS + j]); }
  } else if (p.norm == 1u) {
    for (var j = 0u; j < p.K; j++) { wsum += rw[t * p.KS + j]; }
    if (p.mode == 1u) { wsum += 1e-20; }
    for (var j = 0u; j < p.K; j++) { rw[t * p.KS + j] = rw[t * p.KS + j] / wsum; }
  }
  for (var j = 0u; j < p.K; j++) { rw[t * p.KS + j] = rw[t * p.KS + j] * p.scale; }
  for (var j = p.K; j < p.KS; j++) { rw[t * p.KS + j] = 1.0; }
}
