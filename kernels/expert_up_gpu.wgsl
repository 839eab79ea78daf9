// GPU variant of expert_up.wgsl (chosen for non-fallback adapters, src/gpu/moe.ts): same math,
// bindings and parameters, but shaped for a real GPU, where the skinny grouped GEMM (a handful of
// tokens per expert) is bound by streaming the weights. A workgroup of 256 invocations owns
// RG·RW output rows of one expert (RG = 256 / KL row groups, RW rows each, gate and up) and
// streams those rows' weights along K: the KL lanes of a row group read consecutive 8-byte words
// (4 elements) of a row, so each warp reads whole cache lines. All of the expert's tokens are
// processed in chunks of MT (x is read through the cache, shared by the row groups); each
// invocation keeps RW × (gate, up) × MT partial dot products over its K slice, then the KL
// partials are summed through workgroup memory in a fixed order (deterministic), and the
// activation is applied once per (row, token).
// Dispatch: (ceil(rows / (RG·RW)), 1, experts in piece).
override GDT: u32 = 0u;
override UDT: u32 = 0u;
override GATED: bool = true;
override ACT: u32 = 0u;
override ALPHA: f32 = 1.702;
override LIMIT: f32 = 7.0;
// lanes along K per row group (divides 256; ≥ 8)
override KL: u32 = 16u;

const WG = 256u;
override RW: u32 = 2u; // output rows per invocation (≤ 4)
override MT: u32 = 8u; // tokens per chunk (≤ 16; accumulators ≤ 64, accumulators × row groups ≤ 1024)
override NA = 2u * RW * MT; // accumulators
const RS = 8u;  // accumulators per reduction round

struct P {
  T: u32, K: u32, N: u32, r0: u32,
  rows: u32, e0: u32, E: u32, dense: u32,
  slot: u32, KS: u32, hasBias: u32, inScale: u32,
  hBase: u32, nE: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wg: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> wu: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> lists: array<u32>;
@group(0) @binding(6) var<storage, read> rw: array<f32>;
@group(0) @binding(7) var<storage, read_write> h: array<f32>;

var<workgroup> red: array<f32, 2048>;  // RS × WG partials of one round
var<workgroup> fin: array<f32, 1024>;  // reduced sums: NA × RG (≤ 32 row groups)
var<workgroup> ents: array<u32, 16>;    // entries of the chunk's tokens

// 4 consecutive elements starting at element i (i % 4 == 0) of a weight array of dtype dt
fn ld(dt: u32, wv: vec2<u32>, wv2: vec2<u32>) -> vec4<f32> {
  if (dt == 0u) { return bitcast<vec4<f32>>(vec4<u32>(wv, wv2)); }
  return vec4<f32>(unpack_pair(dt, wv.x), unpack_pair(dt, wv.y));
}
fn load_g(i: u32) -> vec4<f32> {
  if (GDT == 0u) { return ld(0u, wg[i >> 1u], wg[(i >> 1u) + 1u]); }
  return ld(GDT, wg[i >> 2u], vec2<u32>());
}
fn load_u(i: u32) -> vec4<f32> {
  if (UDT == 0u) { return ld(0u, wu[i >> 1u], wu[(i >> 1u) + 1u]); }
  return ld(UDT, wu[i >> 2u], vec2<u32>());
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let RG = WG / KL;
  let kl = li % KL;
  let rg = li / KL;
  let ez = wid.z;
  let e = p.e0 + ez;
  var count = p.T;
  var off = 0u;
  if (p.dense == 0u) { count = lists[e]; off = lists[p.E + e]; }
  let nb = wid.x * RG * RW; // first row (within the piece) of this workgroup
  let K4 = p.K / 4u;
  // weight element index of each of this invocation's rows (clamped to the piece)
  var wrow: array<u32, 4>;
  for (var r = 0u; r < RW; r++) {
    wrow[r] = (ez * p.rows + min(nb + rg * RW + r, p.rows - 1u)) * p.K;
  }

  for (var c0 = 0u; c0 < count; c0 += MT) {
    var tok: array<u32, 16>;
    for (var t = 0u; t < MT; t++) {
      let m = min(c0 + t, count - 1u);
      var en = m * p.KS + p.slot;
      if (p.dense == 0u) { en = lists[2u * p.E + off + m]; }
      tok[t] = (en / p.KS) * K4;
      if (li == 0u) { ents[t] = en; }
    }
    var acc = array<f32, 64>();
    for (var k4 = kl; k4 < K4; k4 += KL) {
      var xs: array<vec4<f32>, 16>;
      for (var t = 0u; t < MT; t++) { xs[t] = x[tok[t] + k4]; }
      for (var r = 0u; r < RW; r++) {
        let wi = wrow[r] + k4 * 4u;
        let u = load_u(wi);
        for (var t = 0u; t < MT; t++) { acc[(RW + r) * MT + t] += dot(xs[t], u); }
        if (GATED) {
          let g = load_g(wi);
          for (var t = 0u; t < MT; t++) { acc[r * MT + t] += dot(xs[t], g); }
        }
      }
    }
    // Sum the KL lanes' partials: rounds of RS accumulators; fin[a * RG + rg] = Σ_lanes acc[a].
    for (var a0 = 0u; a0 < NA; a0 += RS) {
      for (var j = 0u; j < RS; j++) { red[(rg * RS + j) * KL + kl] = acc[a0 + j]; }
      workgroupBarrier();
      if (li < RG * RS) {
        var s = 0.0;
        let b = li * KL;
        for (var l = 0u; l < KL; l++) { s += red[b + l]; }
        let g2 = li / RS;
        fin[(a0 + li % RS) * RG + g2] = s;
      }
      workgroupBarrier();
    }
    // Epilogue: one (row, token) per invocation.
    for (var o = li; o < RG * RW * MT; o += WG) {
      let t = o % MT;
      let rr = o / MT; // row within the workgroup: rg2 * RW + r
      let rg2 = rr / RW;
      let r = rr % RW;
      let n_loc = nb + rr;
      let m = c0 + t;
      if (m < count && n_loc < p.rows) {
        let en = ents[t];
        var s = 1.0;
        if (p.inScale == 1u) { s = rw[en]; }
        var row = m;
        if (p.dense == 0u) { row += off; }
        let n = p.r0 + n_loc;
        var g = fin[(r * MT + t) * RG + rg2] * s;
        var u = fin[((RW + r) * MT + t) * RG + rg2] * s;
        if (p.hasBias == 1u) {
          g += bias[e * p.N + n];
          u += bias[(p.nE + e) * p.N + n];
        }
        h[p.hBase + row * p.N + n] = act(ACT, g, u, ALPHA, LIMIT);
      }
    }
    workgroupBarrier();
  }
}
