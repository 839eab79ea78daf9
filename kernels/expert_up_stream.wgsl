// Real-GPU expert up projection (variant 'stream' when K % (8·KL) == 0, src/gpu/moe.ts): same
// math, bindings and parameters as expert_up.wgsl. The skinny grouped GEMM (a handful of tokens
// per expert) is bound by streaming the weights, so every weight element is read from memory
// once, coalesced, and used for all of the expert's tokens (16 at a time): a workgroup of 256
// invocations owns RG = 256 / KL rows of one expert (gate and up). Per step the KL lanes of a row
// group read two runs of KL consecutive 4-element words of the row (whole cache lines), unpack
// bf16 in registers, and multiply them with the chunk's tokens, staged tile by tile along K in
// workgroup memory. The accumulators are named vec4s, explicitly zeroed per chunk (no arrays, so
// they can stay in registers; a bare `var a: T;` in the loop was not re-zeroed on lavapipe). The
// KL partials are summed through workgroup memory in a fixed order (deterministic) and the
// activation is applied once per (row, token). Dispatch: (ceil(rows / RG), 1, experts in piece).
override GDT: u32 = 0u;
override UDT: u32 = 0u;
override GATED: bool = true;
override ACT: u32 = 0u;
override ALPHA: f32 = 1.702;
override LIMIT: f32 = 7.0;
override KL: u32 = 8u; // lanes along K per row group (8, 16 or 32)

const WG = 256u;
const MT = 16u; // tokens per chunk
const XQ = 2040u; // vec4s of workgroup memory (with trow, ents: 32 KiB): x tiles, then the reduction

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

var<workgroup> sm: array<vec4<f32>, XQ>;
var<workgroup> trow: array<u32, 16>; // first vec4 of each chunk token's x row
var<workgroup> ents: array<u32, 16>; // entry t·KS + slot of each chunk token

// 4 consecutive elements starting at element i (i % 4 == 0)
fn load_g(i: u32) -> vec4<f32> {
  if (GDT == 0u) { return bitcast<vec4<f32>>(vec4<u32>(wg[i >> 1u], wg[(i >> 1u) + 1u])); }
  let w = wg[i >> 2u];
  return vec4<f32>(unpack_pair(GDT, w.x), unpack_pair(GDT, w.y));
}
fn load_u(i: u32) -> vec4<f32> {
  if (UDT == 0u) { return bitcast<vec4<f32>>(vec4<u32>(wu[i >> 1u], wu[(i >> 1u) + 1u])); }
  let w = wu[i >> 2u];
  return vec4<f32>(unpack_pair(UDT, w.x), unpack_pair(UDT, w.y));
}

// Partial sums of 4 tokens for the two weight rows (A: up, B: gate) of this step.
struct AB { a: vec4<f32>, b: vec4<f32> }

// Tokens t0 .. t0 + 3 of the tile: x at sm[t·TQ + s] and sm[t·TQ + s + KL].
fn step4(acc: AB, t0: u32, TQ: u32, s: u32, ua: vec4<f32>, ub: vec4<f32>, ga: vec4<f32>, gb: vec4<f32>) -> AB {
  let i = t0 * TQ + s;
  let x0 = sm[i];
  let y0 = sm[i + KL];
  let x1 = sm[i + TQ];
  let y1 = sm[i + TQ + KL];
  let x2 = sm[i + 2u * TQ];
  let y2 = sm[i + 2u * TQ + KL];
  let x3 = sm[i + 3u * TQ];
  let y3 = sm[i + 3u * TQ + KL];
  var r: AB;
  r.a = vec4<f32>(dot8(acc.a.x, x0, y0, ua, ub), dot8(acc.a.y, x1, y1, ua, ub), dot8(acc.a.z, x2, y2, ua, ub), dot8(acc.a.w, x3, y3, ua, ub));
  if (GATED) {
    r.b = vec4<f32>(dot8(acc.b.x, x0, y0, ga, gb), dot8(acc.b.y, x1, y1, ga, gb), dot8(acc.b.z, x2, y2, ga, gb), dot8(acc.b.w, x3, y3, ga, gb));
  }
  return r;
}

// Sum over the KL lanes of one accumulator set, for the two (row group, token) outputs o = li, li + 256.
fn lane_sums(li: u32, kl: u32, rg: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> vec2<f32> {
  workgroupBarrier();
  let b = rg * 4u * KL + kl;
  sm[b] = v0;
  sm[b + KL] = v1;
  sm[b + 2u * KL] = v2;
  sm[b + 3u * KL] = v3;
  workgroupBarrier();
  var out = vec2<f32>();
  for (var j = 0u; j < 2u; j++) {
    let o = li + j * WG;
    let rg2 = o / MT;
    let t = o % MT;
    if (rg2 < WG / KL) {
      let c = (rg2 * 4u + t / 4u) * KL;
      var s = 0.0;
      for (var l = 0u; l < KL; l++) { s += sm[c + l][t % 4u]; }
      out[j] = s;
    }
  }
  return out;
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
  let nb = wid.x * RG;
  let K4 = p.K / 4u;
  let J = K4 / (2u * KL); // steps along K (the host checks K % (8·KL) == 0)
  let TQ = XQ / MT; // vec4s of each token's x per tile
  let TJ = TQ / (2u * KL); // steps per tile
  let wrow = (ez * p.rows + min(nb + rg, p.rows - 1u)) * p.K;

  for (var c0 = 0u; c0 < count; c0 += MT) {
    let nv = min(MT, count - c0);
    workgroupBarrier();
    if (li < MT) {
      let m = c0 + min(li, nv - 1u);
      var en = m * p.KS + p.slot;
      if (p.dense == 0u) { en = lists[2u * p.E + off + m]; }
      trow[li] = (en / p.KS) * K4;
      ents[li] = en;
    }
    workgroupBarrier();
    var ab0 = AB();
    var ab1 = AB();
    var ab2 = AB();
    var ab3 = AB();
    for (var j0 = 0u; j0 < J; j0 += TJ) {
      let jn = min(TJ, J - j0);
      workgroupBarrier();
      let q0 = j0 * 2u * KL;
      let nq = jn * 2u * KL;
      for (var i = li; i < MT * TQ; i += WG) {
        let q = i % TQ;
        if (q < nq) { sm[i] = x[trow[i / TQ] + q0 + q]; }
      }
      workgroupBarrier();
      for (var jj = 0u; jj < jn; jj++) {
        let q = (j0 + jj) * 2u * KL + kl; // the lane's first vec4 along K; the second is q + KL
        let ua = load_u(wrow + q * 4u);
        let ub = load_u(wrow + (q + KL) * 4u);
        var ga = vec4<f32>();
        var gb = vec4<f32>();
        if (GATED) {
          ga = load_g(wrow + q * 4u);
          gb = load_g(wrow + (q + KL) * 4u);
        }
        let s = jj * 2u * KL + kl;
        ab0 = step4(ab0, 0u, TQ, s, ua, ub, ga, gb);
        if (nv > 4u) { ab1 = step4(ab1, 4u, TQ, s, ua, ub, ga, gb); }
        if (nv > 8u) { ab2 = step4(ab2, 8u, TQ, s, ua, ub, ga, gb); }
        if (nv > 12u) { ab3 = step4(ab3, 12u, TQ, s, ua, ub, ga, gb); }
      }
    }
    let su = lane_sums(li, kl, rg, ab0.a, ab1.a, ab2.a, ab3.a);
    var sg = vec2<f32>();
    if (GATED) { sg = lane_sums(li, kl, rg, ab0.b, ab1.b, ab2.b, ab3.b); }
    for (var j = 0u; j < 2u; j++) {
      let o = li + j * WG;
      let t = o % MT;
      let n_loc = nb + o / MT;
      if (o / MT < RG && t < nv && n_loc < p.rows) {
        let en = ents[t];
        var sc = 1.0;
        if (p.inScale == 1u) { sc = rw[en]; }
        var row = c0 + t;
        if (p.dense == 0u) { row += off; }
        let n = p.r0 + n_loc;
        var g = sg[j] * sc;
        var u = su[j] * sc;
        if (p.hasBias == 1u) {
          g += bias[e * p.N + n];
          u += bias[(p.nE + e) * p.N + n];
        }
        h[p.hBase + row * p.N + n] = act(ACT, g, u, ALPHA, LIMIT);
      }
    }
  }
}
