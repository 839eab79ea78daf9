// logits[t, e] = x[t] · W[e] (+ b[e]) for a small [E, H] matrix (router, shared-expert gate).
// One invocation per (expert, token); H % 4 == 0. transformers: nn.Linear(hidden, E, bias=...)
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

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let e = gid.x;
  let t = gid.y;
  if (e >= p.E || t >= p.T) { return; }
  let K4 = p.H / 4u;
  var acc = vec4<f32>(0.0);
  for (var k = 0u; k < K4; k++) {
    acc += x[t * K4 + k] * load4(e * p.H + k * 4u);
  }
  var s = (acc.x + acc.y) + (acc.z + acc.w);
  if (p.hasBias == 1u) { s += b[e]; }
  logits[t * p.E + e] = s;
}
