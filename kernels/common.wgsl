// Shared helpers, prepended by the host (src/gpu/kernels.ts) to every kernel of this folder.
// Weights are bound as array<u32>; dtype codes: 0 = f32, 1 = bf16, 2 = f16. 16-bit weights
// hold two elements per word, element 2j in the low half (little-endian).

// bf16 → f32 is exact: the bf16 bits are the f32's high half (platform-notes.md).
fn unpack_pair(dt: u32, w: u32) -> vec2<f32> {
  if (dt == 1u) {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
  }
  return unpack2x16float(w);
}

fn sigmoid_f(x: f32) -> f32 {
  return 1.0 / (1.0 + exp(-x));
}
