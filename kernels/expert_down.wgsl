// Grouped GEMM, second half of the expert MLP: for each expert e of this weight piece and token m
// of its list, contrib[entry(m), n] = w_entry · (h[row(m)] · down[n] + bd[n]) for the piece's rows
// n ∈ [r0, r0 + rows); down is nn.Linear [H, I] (K = I contiguous). Same register-blocked shape
// as expert_up.wgsl. Each (token, slot) entry has its own contrib row, written by exactly one
// expert, so no atomics: combine.wgsl sums the slots in a fixed order.
override DDT: u32 = 0u; // down weight dtype (0 f32, 1 bf16, 2 f16)

struct P {
  T: u32, K: u32, N: u32, r0: u32,
  rows: u32, e0: u32, E: u32, dense: u32,
  slot: u32, KS: u32, hasBias: u32, inScale: u32,
  hBase: u32, nE: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> h: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wd: array<u32>;
// down biases of this expert group [nE_all, N] (f32)
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> lists: array<u32>;
@group(0) @binding(5) var<storage, read> rw: array<f32>;
@group(0) @binding(6) var<storage, read_write> contrib: array<f32>;

fn load_d(i: u32) -> vec4<f32> {
  if (DDT == 0u) {
    return vec4<f32>(bitcast<f32>(wd[i]), bitcast<f32>(wd[i + 1u]), bitcast<f32>(wd[i + 2u]), bitcast<f32>(wd[i + 3u]));
  }
  let j = i >> 1u;
  return vec4<f32>(unpack_pair(DDT, wd[j]), unpack_pair(DDT, wd[j + 1u]));
}

@compute @workgroup_size(16, 4, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let ez = wid.z;
  let e = p.e0 + ez;
  var count = p.T;
  var off = 0u;
  if (p.dense == 0u) { count = lists[e]; off = lists[p.E + e]; }
  let m0 = (wid.y * 4u + lid.y) * 4u;
  let n0 = (wid.x * 16u + lid.x) * 4u;
  if (m0 >= count || n0 >= p.rows) { return; }

  let K4 = p.K / 4u;
  let hb = p.hBase / 4u;
  var hr: array<u32, 4>;
  for (var i = 0u; i < 4u; i++) {
    hr[i] = hb + (min(m0 + i, count - 1u) + off) * K4;
  }
  let wb = (ez * p.rows + n0) * p.K;
  var acc: array<vec4<f32>, 4>;
  for (var k = 0u; k < K4; k++) {
    let a0 = h[hr[0] + k];
    let a1 = h[hr[1] + k];
    let a2 = h[hr[2] + k];
    let a3 = h[hr[3] + k];
    for (var j = 0u; j < 4u; j++) {
      let w = load_d(wb + j * p.K + k * 4u);
      acc[j] += vec4<f32>(dot(a0, w), dot(a1, w), dot(a2, w), dot(a3, w));
    }
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + i;
    if (m >= count) { break; }
    var en = m * p.KS + p.slot;
    if (p.dense == 0u) { en = lists[2u * p.E + off + m]; }
    var s = rw[en];
    if (p.inScale == 1u) { s = 1.0; }
    for (var j = 0u; j < 4u; j++) {
      let n = p.r0 + n0 + j;
      var y = acc[j][i];
      if (p.hasBias == 1u) { y += bias[e * p.N + n]; }
      contrib[en * p.N + n] = s * y;
    }
  }
}
