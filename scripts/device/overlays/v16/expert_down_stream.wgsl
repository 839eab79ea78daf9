// Real-GPU expert down projection (variant 'stream' with expert_up_stream.wgsl, src/gpu/moe.ts): same math,
// bindings and parameters as expert_down.wgsl, same shape as expert_up_stream.wgsl (one matrix,
// two rows per invocation: nb + rg and nb + RG + rg, no activation; the tokens' h rows are
// contiguous), plus split-K: workgroup row s = wid.y of S takes the K steps [s·J/S, (s+1)·J/S) and
// writes its partial sums (routing weight applied, bias in split 0) to contrib[(s·T·KS + entry)·N
// + n]; combine.wgsl adds the S splits in order (deterministic).
// RW = 2 adds rows nb + 2·RG + rg and nb + 3·RG + rg; C as in expert_up_stream.wgsl.
// Dispatch: (ceil(rows / (2·RG·RW))·C, S, experts in piece).
override DDT: u32 = 0u;
override KL: u32 = 8u; // lanes along K per row group (8, 16 or 32)
override S: u32 = 1u; // splits along K
override RW: u32 = 1u; // row pairs per invocation (1: rows nb + rg, nb + RG + rg; 2: also nb + 2·RG + rg, nb + 3·RG + rg)
override C: u32 = 1u; // workgroups per row block, side by side in dispatch order: workgroup c takes token chunks c, c + C, … (their weight reads meet in L2)

const WG = 256u;
const MT = 16u;
const XQ = 2040u;

struct P {
  T: u32, K: u32, N: u32, r0: u32,
  rows: u32, e0: u32, E: u32, dense: u32,
  slot: u32, KS: u32, hasBias: u32, inScale: u32,
  hBase: u32, nE: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> h: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wd: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> lists: array<u32>;
@group(0) @binding(5) var<storage, read> rw: array<f32>;
@group(0) @binding(6) var<storage, read_write> contrib: array<f32>;

var<workgroup> sm: array<vec4<f32>, XQ>;
var<workgroup> ents: array<u32, 16>;

// 8 consecutive elements starting at element i (i % 8 == 0), as two vec4s
struct W8 { a: vec4<f32>, b: vec4<f32> }
fn load_d(i: u32) -> W8 {
  if (DDT == 0u) { return W8(bitcast<vec4<f32>>(wd[i >> 2u]), bitcast<vec4<f32>>(wd[(i >> 2u) + 1u])); }
  let w = wd[i >> 3u];
  return W8(vec4<f32>(unpack_pair(DDT, w.x), unpack_pair(DDT, w.y)), vec4<f32>(unpack_pair(DDT, w.z), unpack_pair(DDT, w.w)));
}

// Partial sums of 4 tokens for the invocation's rows: a, b (row pair 0), c, d (row pair 1).
struct AB { a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32> }
// One step's weights: the two runs of 4 elements (…a, …b) of each row.
struct Wt { aa: vec4<f32>, ab: vec4<f32>, ba: vec4<f32>, bb: vec4<f32>, ca: vec4<f32>, cb: vec4<f32>, da: vec4<f32>, db: vec4<f32> }

// The step's weights at the lane's first vec4 q along K for the rows starting at wa, wb, wc, wd2.
fn load_w(wa: u32, wb: u32, wc: u32, wd2: u32, q: u32) -> Wt {
  var w = Wt();
  let a = load_d(wa + q * 4u);
  w.aa = a.a;
  w.ab = a.b;
  let b = load_d(wb + q * 4u);
  w.ba = b.a;
  w.bb = b.b;
  if (RW == 2u) {
    let c = load_d(wc + q * 4u);
    w.ca = c.a;
    w.cb = c.b;
    let d = load_d(wd2 + q * 4u);
    w.da = d.a;
    w.db = d.b;
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
  r.a = dot4t(acc.a, x0, y0, x1, y1, x2, y2, x3, y3, w.aa, w.ab);
  r.b = dot4t(acc.b, x0, y0, x1, y1, x2, y2, x3, y3, w.ba, w.bb);
  if (RW == 2u) {
    r.c = dot4t(acc.c, x0, y0, x1, y1, x2, y2, x3, y3, w.ca, w.cb);
    r.d = dot4t(acc.d, x0, y0, x1, y1, x2, y2, x3, y3, w.da, w.db);
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

// (row, token) output o of one of the two row sets: routing weight, bias in split 0, into contrib.
fn store(o: u32, nb: u32, nv: u32, e: u32, sp: u32, y0: f32) {
  let t = o % MT;
  let n_loc = nb + o / MT;
  if (t < nv && n_loc < p.rows) {
    let en = ents[t];
    var sc = rw[en];
    if (p.inScale == 1u) { sc = 1.0; }
    let n = p.r0 + n_loc;
    var y = y0;
    if (p.hasBias == 1u && sp == 0u) { y += bias[e * p.N + n]; }
    contrib[(sp * p.T * p.KS + en) * p.N + n] = sc * y;
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
  let nb = (wid.x / C) * 2u * RW * RG;
  let K4 = p.K / 4u;
  let J = K4 / (2u * KL); // steps along K (the host checks K % (8·KL) == 0)
  let jA = wid.y * J / S;
  let jB = (wid.y + 1u) * J / S;
  let TQ = XQ / MT;
  let TJ = TQ / (2u * KL);
  let hb = p.hBase / 4u + off * K4;
  let wa = (ez * p.rows + min(nb + rg, p.rows - 1u)) * p.K;
  let wb = (ez * p.rows + min(nb + RG + rg, p.rows - 1u)) * p.K;
  let wc = (ez * p.rows + min(nb + 2u * RG + rg, p.rows - 1u)) * p.K;
  let wd2 = (ez * p.rows + min(nb + 3u * RG + rg, p.rows - 1u)) * p.K;

  for (var c0 = (wid.x % C) * MT; c0 < count; c0 += C * MT) {
    let nv = min(MT, count - c0);
    workgroupBarrier();
    if (li < MT) {
      let m = c0 + min(li, nv - 1u);
      var en = m * p.KS + p.slot;
      if (p.dense == 0u) { en = lists[2u * p.E + off + m]; }
      ents[li] = en;
    }
    var ab0 = AB();
    var ab1 = AB();
    var ab2 = AB();
    var ab3 = AB();
    // each step's weights are loaded a step ahead (wn): the loads stay in flight across the previous
    // step's multiply-adds and the tiles' barriers (the load past the last step repeats it)
    var wn = load_w(wa, wb, wc, wd2, jA * 2u * KL + 2u * kl);
    for (var j0 = jA; j0 < jB; j0 += TJ) {
      let jn = min(TJ, jB - j0);
      workgroupBarrier();
      let q0 = j0 * 2u * KL;
      let nq = jn * 2u * KL;
      for (var i = li; i < MT * TQ; i += WG) {
        let q = i % TQ;
        let r = q % (2u * KL);
        if (q < nq) { sm[i - r + (r % 2u) * KL + r / 2u] = h[hb + (c0 + min(i / TQ, nv - 1u)) * K4 + q0 + q]; }
      }
      workgroupBarrier();
      for (var jj = 0u; jj < jn; jj++) {
        let w = wn;
        wn = load_w(wa, wb, wc, wd2, min(j0 + jj + 1u, jB - 1u) * 2u * KL + 2u * kl);
        let s = jj * 2u * KL + kl;
        ab0 = step4(ab0, 0u, TQ, s, w);
        if (nv > 4u) { ab1 = step4(ab1, 4u, TQ, s, w); }
        if (nv > 8u) { ab2 = step4(ab2, 8u, TQ, s, w); }
        if (nv > 12u) { ab3 = step4(ab3, 12u, TQ, s, w); }
      }
    }
    let sa = lane_sums(li, kl, rg, ab0.a, ab1.a, ab2.a, ab3.a);
    let sb = lane_sums(li, kl, rg, ab0.b, ab1.b, ab2.b, ab3.b);
    var sc = vec2<f32>();
    var sd = vec2<f32>();
    if (RW == 2u) {
      sc = lane_sums(li, kl, rg, ab0.c, ab1.c, ab2.c, ab3.c);
      sd = lane_sums(li, kl, rg, ab0.d, ab1.d, ab2.d, ab3.d);
    }
    for (var j = 0u; j < 2u; j++) {
      let o = li + j * WG;
      if (o / MT < RG) {
        store(o, nb, nv, e, wid.y, sa[j]);
        store(o, nb + RG, nv, e, wid.y, sb[j]);
        if (RW == 2u) {
          store(o, nb + 2u * RG, nv, e, wid.y, sc[j]);
          store(o, nb + 3u * RG, nv, e, wid.y, sd[j]);
        }
      }
    }
  }
}
