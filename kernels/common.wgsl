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

// erf with |error| < 1.2e-7 (Numerical Recipes erfc); same formula as src/forward/routing.ts
fn erf_f(x: f32) -> f32 {
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
      t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
  return select(r - 1.0, 1.0 - r, x >= 0.0);
}

// Expert activations (kind: 0 SwiGLU, 1 GeGLU (erf), 2 GeGLU (tanh), 3 ReLU², 4 SwiGLU-OAI,
// 5 clamped SwiGLU); see activate() in src/forward/routing.ts for the sources. Kernels pass their
// override constants, so the switch folds away at pipeline creation.
fn act(kind: u32, g: f32, u: f32, alpha: f32, limit: f32) -> f32 {
  switch kind {
    case 1u: { return 0.5 * g * (1.0 + erf_f(g * 0.70710678118654752)) * u; }
    case 2u: {
      let a = clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -15.0, 15.0);
      return 0.5 * g * (1.0 + tanh(a)) * u;
    }
    case 3u: { let r = max(u, 0.0); return r * r; }
    case 4u: {
      let gc = min(g, limit);
      let uc = clamp(u, -limit, limit);
      return (uc + 1.0) * gc * sigmoid_f(alpha * gc);
    }
    case 5u: {
      let gc = min(g, limit);
      return gc * sigmoid_f(gc) * clamp(u, -limit, limit);
    }
    default: { return g * sigmoid_f(g) * u; }
  }
}

// acc + a·wa + b·wb over 8 lanes, in a fixed order (the stream expert kernels' inner product)
fn dot8(acc: f32, a: vec4<f32>, b: vec4<f32>, wa: vec4<f32>, wb: vec4<f32>) -> f32 {
  var s = fma(a.x, wa.x, acc);
  s = fma(a.y, wa.y, s);
  s = fma(a.z, wa.z, s);
  s = fma(a.w, wa.w, s);
  s = fma(b.x, wb.x, s);
  s = fma(b.y, wb.y, s);
  s = fma(b.z, wb.z, s);
  return fma(b.w, wb.w, s);
}

// dot8 for 4 tokens (x_t, y_t: token t's two runs) against one row's weights, into the 4 lanes of acc
fn dot4t(acc: vec4<f32>, x0: vec4<f32>, y0: vec4<f32>, x1: vec4<f32>, y1: vec4<f32>, x2: vec4<f32>, y2: vec4<f32>, x3: vec4<f32>, y3: vec4<f32>, wa: vec4<f32>, wb: vec4<f32>) -> vec4<f32> {
  return vec4<f32>(dot8(acc.x, x0, y0, wa, wb), dot8(acc.y, x1, y1, wa, wb), dot8(acc.z, x2, y2, wa, wb), dot8(acc.w, x3, y3, wa, wb));
}
