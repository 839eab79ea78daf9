// Token → expert lists. One invocation per routed expert e: scans the T·K selections in token
// order (deterministic), writes lists[e] = count, lists[E + e] = offset (selections of experts
// < e), and lists[2E + offset + m] = entry t·KS + j of its m-th token.
struct P { T: u32, E: u32, K: u32, KS: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> lists: array<u32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let e = gid.x;
  if (e >= p.E) { return; }
  let n = p.T * p.K;
  var off = 0u;
  var cnt = 0u;
  for (var i = 0u; i < n; i++) {
    let id = ids[i];
    off += select(0u, 1u, id < e);
    cnt += select(0u, 1u, id == e);
  }
  lists[e] = cnt;
  lists[p.E + e] = off;
  var m = 0u;
  for (var i = 0u; i < n; i++) {
    if (ids[i] == e) {
      lists[2u * p.E + off + m] = (i / p.K) * p.KS + (i % p.K);
      m++;
    }
  }
}
