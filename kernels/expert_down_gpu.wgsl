// GPU variant of expert_down.wgsl (chosen for non-fallback adapters, src/gpu/moe.ts): same math,
// bindings and parameters; same shape as expert_up_gpu.wgsl. A workgroup of 256 invocations owns
// RG·RW output rows of one expert (RG = 256 / KL row groups, RW rows each); the KL lanes of a
// row group stream consecutive 8-byte words of a row along K (= I), tokens' h rows are read
// through the cache in chunks of MT tokens, and the KL partial sums are reduced through workgroup
// memory in a fixed order (deterministic).
// Dispatch: (ceil(rows / (RG·RW)), 1, experts in piece).
override DDT: u32 = 0u;
override KL: u32 = 64u;

const WG = 256u;
override RW: u32 = 4u; // output rows per invocation (≤ 4)
override MT: u32 = 8u; // tokens per chunk (≤ 16; accumulators ≤ 64, accumulators × row groups ≤ 1024)
override NA = RW * MT; // accumulators
const RS = 8u;

struct P {
  T: u32, K: u32, N: u32, r0: u32,
  rows: u32, e0: u32, E: u32, dense: u32,
  slot: u32, KS: u32, hasBias: u32, inScale: u32,
  hBase: u32, nE: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> h: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wd: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> lists: array<u32>;
@group(0) @binding(5) var<storage, read> rw: array<f32>;
@group(0) @binding(6) var<storage, read_write> contrib: array<f32>;

var<workgroup> red: array<f32, 2048>;
var<workgroup> fin: array<f32, 1024>;
var<workgroup> ents: array<u32, 16>;

fn load_d(i: u32) -> vec4<f32> {
  if (DDT == 0u) { return bitcast<vec4<f32>>(vec4<u32>(wd[i >> 1u], wd[(i >> 1u) + 1u])); }
  let w = wd[i >> 2u];
  return vec4<f32>(unpack_pair(DDT, w.x), unpack_pair(DDT, w.y));
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
  let nb = wid.x * RG * RW;
  let K4 = p.K / 4u;
  let hb = p.hBase / 4u;
  var wrow: array<u32, 4>;
  for (var r = 0u; r < RW; r++) {
    wrow[r] = (ez * p.rows + min(nb + rg * RW + r, p.rows - 1u)) * p.K;
  }

  for (var c0 = 0u; c0 < count; c0 += MT) {
    var hr: array<u32, 16>;
    for (var t = 0u; t < MT; t++) {
      let m = min(c0 + t, count - 1u);
      hr[t] = hb + (m + off) * K4;
      if (li == 0u) {
        var en = m * p.KS + p.slot;
        if (p.dense == 0u) { en = lists[2u * p.E + off + m]; }
        ents[t] = en;
      }
    }
    var acc = array<f32, 64>();
    for (var k4 = kl; k4 < K4; k4 += KL) {
      var xs: array<vec4<f32>, 16>;
      for (var t = 0u; t < MT; t++) { xs[t] = h[hr[t] + k4]; }
      for (var r = 0u; r < RW; r++) {
        let w = load_d(wrow[r] + k4 * 4u);
        for (var t = 0u; t < MT; t++) { acc[r * MT + t] += dot(xs[t], w); }
      }
    }
    for (var a0 = 0u; a0 < NA; a0 += RS) {
      for (var j = 0u; j < RS; j++) { red[(rg * RS + j) * KL + kl] = acc[a0 + j]; }
      workgroupBarrier();
      if (li < RG * RS) {
        var s = 0.0;
        let b = li * KL;
        for (var l = 0u; l < KL; l++) { s += red[b + l]; }
        fin[(a0 + li % RS) * RG + li / RS] = s;
      }
      workgroupBarrier();
    }
    for (var o = li; o < RG * RW * MT; o += WG) {
      let t = o % MT;
      let rr = o / MT;
      let rg2 = rr / RW;
      let r = rr % RW;
      let n_loc = nb + rr;
      let m = c0 + t;
      if (m < count && n_loc < p.rows) {
        let en = ents[t];
        var s = rw[en];
        if (p.inScale == 1u) { s = 1.0; }
        let n = p.r0 + n_loc;
        var y = fin[(r * MT + t) * RG + rg2];
        if (p.hasBias == 1u) { y += bias[e * p.N + n]; }
        contrib[en * p.N + n] = s * y;
      }
    }
    workgroupBarrier();
  }
}
