// Weighted scatter-add, deterministic: out[t] = Σ_{j<K} contrib[t·KS + j] (routing weights are
// already applied) + g_t · Σ_{s} contrib[t·KS + K + s], with g_t = sigmoid(x[t]·shared_gate)
// (Qwen2MoeSparseMoeBlock) or 1. Slots are summed in a fixed order. Split-K down kernels
// (expert_down_stream.wgsl) leave S partials of each slot, S blocks of T·KS rows apart, added in order.
struct P { T: u32, H4: u32, K: u32, KS: u32, hasGate: u32, S: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> contrib: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> sgl: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n = gid.x;
  let t = gid.y;
  if (n >= p.H4 || t >= p.T) { return; }
  var acc = vec4<f32>(0.0);
  let SB = p.T * p.KS * p.H4;
  for (var j = 0u; j < p.K; j++) {
    for (var s = 0u; s < p.S; s++) { acc += contrib[s * SB + (t * p.KS + j) * p.H4 + n]; }
  }
  var sh = vec4<f32>(0.0);
  for (var j = p.K; j < p.KS; j++) {
    for (var s = 0u; s < p.S; s++) { sh += contrib[s * SB + (t * p.KS + j) * p.H4 + n]; }
  }
  var g = 1.0;
  if (p.hasGate == 1u) { g = sigmoid_f(sgl[t]); }
  out[t * p.H4 + n] = acc + g * sh;
}
