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
// activation is applied once per (row, token). With RW = 2 an invocation also owns row nb + RG + rg:
// each x vec4 read from workgroup memory then feeds twice the multiply-adds. With C > 1, C workgroups
// side by side in dispatch order share a row block and take its token chunks c, c + C, …: an expert
// with more than 16 tokens has its weights streamed by them at about the same time (from L2 for all
// but the first) instead of once per chunk. Dispatch: (ceil(rows / (RG·RW))·C, 1, experts in piece).
override GDT: u32 = 0u;
override UDT: u32 = 0u;
override GATED: bool = true;
override ACT: u32 = 0u;
override ALPHA: f32 = 1.702;
override LIMIT: f32 = 7.0;
override KL: u32 = 8u; // lanes along K per row group (8, 16 or 32)
override RW: u32 = 1u; // rows per invocation (1, or 2: rows nb + rg and nb + RG + rg share each x load)
override C: u32 = 1u; // workgroups per row block, side by side in dispatch order: workgroup c takes token chunks c, c + C, … (their weight reads meet in L2)

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
@group(0) @binding(2) var<storage, read> wg: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> wu: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> lists: array<u32>;
@group(0) @binding(6) var<storage, read> rw: array<f32>;
@group(0) @binding(7) var<storage, read_write> h: array<f32>;

var<workgroup> sm: array<vec4<f32>, XQ>;
var<workgroup> trow: array<u32, 16>; // first vec4 of each chunk token's x row
var<workgroup> ents: array<u32, 16>; // entry t·KS + slot of each chunk token

// 8 consecutive elements starting at element i (i % 8 == 0), as two vec4s
struct W8 { a: vec4<f32>, b: vec4<f32> }
fn load_g(i: u32) -> W8 {
  if (GDT == 0u) { return W8(bitcast<vec4<f32>>(wg[i >> 2u]), bitcast<vec4<f32>>(wg[(i >> 2u) + 1u])); }
  let w = wg[i >> 3u];
  return W8(vec4<f32>(unpack_pair(GDT, w.x), unpack_pair(GDT, w.y)), vec4<f32>(unpack_pair(GDT, w.z), unpack_pair(GDT, w.w)));
}
fn load_u(i: u32) -> W8 {
  if (UDT == 0u) { return W8(bitcast<vec4<f32>>(wu[i >> 2u]), bitcast<vec4<f32>>(wu[(i >> 2u) + 1u])); }
  let w = wu[i >> 3u];
  return W8(vec4<f32>(unpack_pair(UDT, w.x), unpack_pair(UDT, w.y)), vec4<f32>(unpack_pair(UDT, w.z), unpack_pair(UDT, w.w)));
}

// Partial sums of 4 tokens: up (a) and gate (b) of the invocation's first row, up (c) and gate (d) of its second.
struct AB { a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32> }
// One step's weights: the two runs of 4 elements (…a, …b) of up and gate of the first row (u, g) and the second (v, f).
struct Wt { ua: vec4<f32>, ub: vec4<f32>, ga: vec4<f32>, gb: vec4<f32>, va: vec4<f32>, vb: vec4<f32>, fa: vec4<f32>, fb: vec4<f32> }

// The step's weights at the lane's vec4s q, q + 1 along K (8 consecutive elements, one 16-byte load per row).
fn load_w(wrow: u32, wrow2: u32, q: u32) -> Wt {
  var w = Wt();
  let u = load_u(wrow + q * 4u);
  w.ua = u.a;
  w.ub = u.b;
  if (GATED) {
    let g = load_g(wrow + q * 4u);
    w.ga = g.a;
    w.gb = g.b;
  }
  if (RW == 2u) {
    let v = load_u(wrow2 + q * 4u);
    w.va = v.a;
    w.vb = v.b;
    if (GATED) {
      let f = load_g(wrow2 + q * 4u);
      w.fa = f.a;
      w.fb = f.b;
    }
  }
  return w;
}

// Tokens t0 .. t0 + 3 of the tile: x at sm[t·TQ + s] and sm[t·TQ + s + KL], each loaded once for all rows.
fn step4(acc: AB, t0: u32, TQ: u32, s: u32, w: Wt) -> AB {
  let i = t0 * TQ + s;
  let x0 = sm[i];
  let y0 = sm[i + KL];
  let x1 = sm[i + TQ];
  let y1 = sm[i + TQ + KL];
  let x2 = sm[i + 2u * TQ];
  let y2 = sm[i + 2u * TQ + KL];
  let x3 = sm[i + 3u * TQ];
  let y3 = sm[i + 3u * TQ + KL];
  var r = acc;
  r.a = dot4t(acc.a, x0, y0, x1, y1, x2, y2, x3, y3, w.ua, w.ub);
  if (GATED) { r.b = dot4t(acc.b, x0, y0, x1, y1, x2, y2, x3, y3, w.ga, w.gb); }
  if (RW == 2u) {
    r.c = dot4t(acc.c, x0, y0, x1, y1, x2, y2, x3, y3, w.va, w.vb);
    if (GATED) { r.d = dot4t(acc.d, x0, y0, x1, y1, x2, y2, x3, y3, w.fa, w.fb); }
  }
  return r;
}

// Sum over the KL lanes of one accumulator set, for the two (row group, token) outputs o = li, li + WG.
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

// Activation of output o (row nb + o / MT, token o % MT of the chunk) from its lane sums of up (u) and gate (g).
fn emit(o: u32, nb: u32, nv: u32, c0: u32, off: u32, e: u32, g0: f32, u0: f32) {
  let t = o % MT;
  let n_loc = nb + o / MT;
  if (o / MT < WG / KL && t < nv && n_loc < p.rows) {
    let en = ents[t];
    var sc = 1.0;
    if (p.inScale == 1u) { sc = rw[en]; }
    var row = c0 + t;
    if (p.dense == 0u) { row += off; }
    let n = p.r0 + n_loc;
    var g = g0 * sc;
    var u = u0 * sc;
    if (p.hasBias == 1u) {
      g += bias[e * p.N + n];
      u += bias[(p.nE + e) * p.N + n];
    }
    h[p.hBase + row * p.N + n] = act(ACT, g, u, ALPHA, LIMIT);
  }
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
  let nb = (wid.x / C) * RG * RW;
  let K4 = p.K / 4u;
  let J = K4 / (2u * KL); // steps along K (the host checks K % (8·KL) == 0)
  let TQ = XQ / MT; // vec4s of each token's x per tile
  let TJ = TQ / (2u * KL); // steps per tile
  let wrow = (ez * p.rows + min(nb + rg, p.rows - 1u)) * p.K;
  let wrow2 = (ez * p.rows + min(nb + RG + rg, p.rows - 1u)) * p.K;

  for (var c0 = (wid.x % C) * MT; c0 < count; c0 += C * MT) {
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
    // each step's weights are loaded a step ahead (wn): the loads stay in flight across the previous
    // step's multiply-adds and the tiles' barriers (the load past the last step repeats it)
    var wn = load_w(wrow, wrow2, 2u * kl);
    for (var j0 = 0u; j0 < J; j0 += TJ) {
      let jn = min(TJ, J - j0);
      workgroupBarrier();
      let q0 = j0 * 2u * KL;
      let nq = jn * 2u * KL;
      // x vec4 q of a step's 2·KL goes to slot (q % 2)·KL + q / 2: the lane reading vec4s 2·kl and
      // 2·kl + 1 of the weights finds their x at kl and kl + KL (no bank conflicts, as before)
      for (var i = li; i < MT * TQ; i += WG) {
        let q = i % TQ;
        let r = q % (2u * KL);
        if (q < nq) { sm[i - r + (r % 2u) * KL + r / 2u] = x[trow[i / TQ] + q0 + q]; }
      }
      workgroupBarrier();
      for (var jj = 0u; jj < jn; jj++) {
        let w = wn;
        wn = load_w(wrow, wrow2, min(j0 + jj + 1u, J - 1u) * 2u * KL + 2u * kl);
        let s = jj * 2u * KL + kl;
        ab0 = step4(ab0, 0u, TQ, s, w);
        if (nv > 4u) { ab1 = step4(ab1, 4u, TQ, s, w); }
        if (nv > 8u) { ab2 = step4(ab2, 8u, TQ, s, w); }
        if (nv > 12u) { ab3 = step4(ab3, 12u, TQ, s, w); }
      }
    }
    let su = lane_sums(li, kl, rg, ab0.a, ab1.a, ab2.a, ab3.a);
    var sg = vec2<f32>();
    if (GATED) { sg = lane_sums(li, kl, rg, ab0.b, ab1.b, ab2.b, ab3.b); }
    var sv = vec2<f32>();
    var sf = vec2<f32>();
    if (RW == 2u) {
      sv = lane_sums(li, kl, rg, ab0.c, ab1.c, ab2.c, ab3.c);
      if (GATED) { sf = lane_sums(li, kl, rg, ab0.d, ab1.d, ab2.d, ab3.d); }
    }
    for (var j = 0u; j < 2u; j++) {
      let o = li + j * WG;
      emit(o, nb, nv, c0, off, e, sg[j], su[j]);
      if (RW == 2u) { emit(o, nb + RG, nv, c0, off, e, sf[j], sv[j]); }
    }
  }
}
