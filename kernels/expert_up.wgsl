// Grouped GEMM, first half of the expert MLP: for each expert e of this weight piece and each
// token m of its list, h[row(m), n] = act(x[tok]·gate[n] + bg[n], x[tok]·up[n] + bu[n]) for the
// piece's rows n ∈ [r0, r0 + rows). Weights are nn.Linear [I, H] rows (K-contiguous), so both
// operands stream along K with vec4 loads. No workgroup memory: each invocation keeps a 4-token ×
// 4-row register block of gate and up accumulators (the fast shape on llvmpipe, platform-notes.md).
// Dispatch: (ceil(rows / 64), ceil(T / 16), experts in piece); invocations past the expert's
// token count return at once (experts with zero tokens cost one empty workgroup column).
override GDT: u32 = 0u;      // gate weight dtype (0 f32, 1 bf16, 2 f16)
override UDT: u32 = 0u;      // up weight dtype
override GATED: bool = true; // false: non-gated MLP (ReLU²), gate unused
// 0 SwiGLU, 1 GeGLU (erf), 2 GeGLU (tanh), 3 ReLU², 4 SwiGLU-OAI, 5 clamped SwiGLU
override ACT: u32 = 0u;
override ALPHA: f32 = 1.702;
override LIMIT: f32 = 7.0;

struct P {
  T: u32, K: u32, N: u32, r0: u32,
  rows: u32, e0: u32, E: u32, dense: u32,
  slot: u32, KS: u32, hasBias: u32, inScale: u32,
  hBase: u32, nE: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wg: array<u32>;
@group(0) @binding(3) var<storage, read> wu: array<u32>;
// biases of this expert group (nE experts): gate [nE, N] then up [nE, N] (f32)
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> lists: array<u32>;
@group(0) @binding(6) var<storage, read> rw: array<f32>;
@group(0) @binding(7) var<storage, read_write> h: array<f32>;

fn load_g(i: u32) -> vec4<f32> {
  if (GDT == 0u) {
    return vec4<f32>(bitcast<f32>(wg[i]), bitcast<f32>(wg[i + 1u]), bitcast<f32>(wg[i + 2u]), bitcast<f32>(wg[i + 3u]));
  }
  let j = i >> 1u;
  return vec4<f32>(unpack_pair(GDT, wg[j]), unpack_pair(GDT, wg[j + 1u]));
}
fn load_u(i: u32) -> vec4<f32> {
  if (UDT == 0u) {
    return vec4<f32>(bitcast<f32>(wu[i]), bitcast<f32>(wu[i + 1u]), bitcast<f32>(wu[i + 2u]), bitcast<f32>(wu[i + 3u]));
  }
  let j = i >> 1u;
  return vec4<f32>(unpack_pair(UDT, wu[j]), unpack_pair(UDT, wu[j + 1u]));
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

  var tok: array<u32, 4>;
  var ent: array<u32, 4>;
  for (var i = 0u; i < 4u; i++) {
    let m = min(m0 + i, count - 1u);
    var en = m * p.KS + p.slot;
    if (p.dense == 0u) { en = lists[2u * p.E + off + m]; }
    ent[i] = en;
    tok[i] = en / p.KS;
  }
  let K4 = p.K / 4u;
  let wb = (ez * p.rows + n0) * p.K;
  var ag: array<vec4<f32>, 4>;
  var au: array<vec4<f32>, 4>;
  for (var k = 0u; k < K4; k++) {
    let x0 = x[tok[0] * K4 + k];
    let x1 = x[tok[1] * K4 + k];
    let x2 = x[tok[2] * K4 + k];
    let x3 = x[tok[3] * K4 + k];
    for (var j = 0u; j < 4u; j++) {
      let wi = wb + j * p.K + k * 4u;
      let u = load_u(wi);
      au[j] += vec4<f32>(dot(x0, u), dot(x1, u), dot(x2, u), dot(x3, u));
      if (GATED) {
        let g = load_g(wi);
        ag[j] += vec4<f32>(dot(x0, g), dot(x1, g), dot(x2, g), dot(x3, g));
      }
    }
  }
  for (var i = 0u; i < 4u; i++) {
    if (m0 + i >= count) { break; }
    var s = 1.0;
    if (p.inScale == 1u) { s = rw[ent[i]]; }
    var row = m0 + i;
    if (p.dense == 0u) { row += off; }
    for (var j = 0u; j < 4u; j++) {
      let n = p.r0 + n0 + j;
      var g = ag[j][i] * s;
      var u = au[j][i] * s;
      if (p.hasBias == 1u) {
        g += bias[e * p.N + n];
        u += bias[(p.nE + e) * p.N + n];
      }
      h[p.hBase + row * p.N + n] = act(ACT, g, u, ALPHA, LIMIT);
    }
  }
}
