// logits[t, e] = x[t] · W[e] (+ b[e]) for a small [E, H] matrix (router, shared-expert gate).
// One workgroup per (expert, token): its 64 lanes take every 64th vec4 along H and are summed in a
// fixed tree order (deterministic; the one-invocation-per-logit loop took 0.13–0.20 ms of a
// Mixtral layer's 3.3 ms on an H100, its 4096 dependent loads in a row). H % 4 == 0.
// transformers: nn.Linear(hidden, E, bias=...)
override WDT: u32 = 0u;

struct P { T: u32, E: u32, H: u32, hasBias: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> logits: array<f32>;

fn load4(i: u32) -> vec4<f32> {
  if (WDT == 0u) {
    return vec4<f32>(bitcast<f32>(w[i]), bitcast<f32>(w[i + 1u]), bitcast<f32>(w[i + 2u]), bitcast<f32>(w[i + 3u]));
  }
  let j = i >> 1u;
  return vec4<f32>(unpack_pair(WDT, w[j]), unpack_pair(WDT, w[j + 1u]));
}

var<workgroup> part: array<vec4<f32>, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let e = wid.x;
  let t = wid.y;
  if (e >= p.E || t >= p.T) { return; }
  let K4 = p.H / 4u;
  var acc = vec4<f32>(0.0);
  for (var k = li; k < K4; k += 64u) {
    acc += x[t * K4 + k] * load4(e * p.H + k * 4u);
  }
  part[li] = acc;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (li < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    let a = part[0];
    var r = (a.x + a.y) + (a.z + a.w);
    if (p.hasBias == 1u) { r += b[e]; }
    logits[t * p.E + e] = r;
  }
}
