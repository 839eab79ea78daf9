import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { f32BitsToBf16, f32BitsToF16, f32ToBits, toFloat32 } from '../src/engine/cast.js';
import { layerSource } from '../src/forward/ir-loader.js';
import { compare, forwardCpu } from '../src/forward/cpu.js';
import { forwardFast } from '../src/forward/cpu-fast.js';
import { WasmPool } from '../src/forward/wasm-pool.js';
import { materialize, type MoeBlockWeights, type Weight } from '../src/forward/weights.js';
import { familyFacts } from '../src/families/index.js';
import { gaussian } from '../src/ops/random.js';
import { ROOT, generatedKernelsDiffer, runCli } from './helpers.js';

const FIX = join(ROOT, 'fixtures', 'hf');
const WITH_REF = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'deepseek_v3', 'gpt_oss', 'llama_dense', 'qwen3_dense', 'granitemoe', 'llama4_text', 'phimoe'];

describe('CPU forward (WebAssembly SIMD) vs transformers outputs and the f64 oracle', () => {
  for (const [name, refName, tol] of [
    ...WITH_REF.map((n) => [n, n, 1e-5] as const),
    ['mixtral_bf16', 'mixtral', 2e-2] as const,
    ['deepseek_v3_bf16', 'deepseek_v3', 2e-2] as const,
  ]) {
    it(`${name}: every layer matches ${refName}/reference.safetensors (rel ≤ ${tol}) and the oracle (rel ≤ 1e-5)`, async () => {
      const ck = await openStore(join(FIX, name));
      const ref = await openStore(join(FIX, refName, 'reference.safetensors'));
      const get = async (n: string) => toFloat32(await ref.read(n), 'F32');
      const x = await get('input');
      const T = ref.info('input').shape[0]!;
      const src = await layerSource(ck, (await ck.config())!);
      const layers = src.layers.filter((l) => ref.has(`layers.${l}.output`));
      expect(layers.length).toBeGreaterThan(0);
      for (const l of layers) {
        const { weights, facts } = await src.load(l, { lazy: true });
        const fast = await forwardFast(weights, facts, x, T);
        const torch = compare(fast.out, await get(`layers.${l}.output`));
        expect(torch.maxRel, `${name} layer ${l} vs transformers`).toBeLessThanOrEqual(tol);
        const oracle = forwardCpu(await materialize(weights), facts, x, T);
        expect(compare(fast.out, oracle.out).maxRel, `${name} layer ${l} vs oracle`).toBeLessThanOrEqual(1e-5);
        expect(fast.expertCounts).toEqual(oracle.expertCounts);
      }
      await ck.close();
      await ref.close();
    });
  }
});

const f32w = (shape: number[], seed: number, scale = 0.3): Weight => {
  const v = gaussian(
    shape.reduce((a, b) => a * b, 1),
    seed,
  ).map((x) => x * scale);
  return { dtype: 'F32', shape, data: new Uint8Array(v.buffer) };
};

function to16(w: Weight, dtype: 'BF16' | 'F16'): Weight {
  const f = toFloat32(w.data!, 'F32');
  const cast = dtype === 'BF16' ? f32BitsToBf16 : f32BitsToF16;
  const out = new Uint16Array(f.length).map((_, i) => cast(f32ToBits(f[i]!)));
  return { dtype, shape: w.shape, data: new Uint8Array(out.buffer) };
}

function block(H: number, I: number, E: number, dtype: 'F32' | 'BF16' | 'F16'): MoeBlockWeights {
  const conv = (w: Weight) => (dtype === 'F32' ? w : to16(w, dtype));
  return {
    hidden: H,
    router: { weight: f32w([E, H], 1) },
    experts: Array.from({ length: E }, (_, e) => ({
      gate: conv(f32w([I, H], 10 + e)),
      up: conv(f32w([I, H], 20 + e)),
      down: conv(f32w([H, I], 30 + e)),
      downBias: f32w([H], 40 + e),
    })),
    shared: [{ gate: conv(f32w([I, H], 50)), up: conv(f32w([I, H], 51)), down: conv(f32w([H, I], 52)) }],
    sharedGate: f32w([1, H], 53),
  };
}

describe('CPU forward on synthetic blocks', () => {
  const facts = familyFacts({ model_type: 'qwen2_moe', num_experts_per_tok: 2, norm_topk_prob: false, hidden_act: 'silu' });
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    it(`${dtype} weights, shared expert with a sigmoid gate, down biases, 13 tokens: equal to the oracle`, async () => {
      const w = block(32, 24, 5, dtype);
      const x = gaussian(13 * 32, 9);
      const fast = await forwardFast(w, facts, x, 13);
      const oracle = forwardCpu(w, facts, x, 13);
      const c = compare(fast.out, oracle.out);
      expect(c.maxRel).toBeLessThanOrEqual(1e-5);
      expect(c.refMax).toBeGreaterThan(0.1);
      expect(fast.expertCounts).toEqual(oracle.expertCounts);
    });
  }

  it('sizes that are not multiples of 8 run on the oracle (same result)', async () => {
    const w = block(12, 20, 3, 'BF16');
    const x = gaussian(5 * 12, 4);
    expect(compare((await forwardFast(w, facts, x, 5)).out, forwardCpu(w, facts, x, 5).out).maxRel).toBe(0);
  });

  it('a wrong expert matrix changes the output (the comparison can fail)', async () => {
    const w = block(32, 24, 5, 'BF16');
    const x = gaussian(13 * 32, 9);
    const good = await forwardFast(w, facts, x, 13);
    const e = w.experts[1]!;
    [e.gate, e.up] = [e.up, e.gate];
    expect(compare((await forwardFast(w, facts, x, 13)).out, good.out).maxRel).toBeGreaterThan(1e-2);
  });
});

describe('CPU forward without WebAssembly memory', () => {
  it('under a ulimit -v too small for a WebAssembly memory, verify --cpu runs the plain JS forward and still matches transformers', () => {
    const fx = join(ROOT, 'fixtures', 'hf', 'mixtral');
    const r = runCli(['verify', fx, '--reference', join(fx, 'reference.safetensors'), '--cpu', '--json'], { ulimitKb: 2_500_000 });
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { pass: boolean; backend: string };
    expect(out.pass).toBe(true);
    expect(out.backend).toBe('cpu');
  });
});

describe('WebAssembly matmul kernel', () => {
  it('the committed kernels/cpu_matmul.{wat,wasm} are what scripts/gen-cpu-kernel.mjs writes', () => {
    expect(generatedKernelsDiffer('gen-cpu-kernel.mjs', ['cpu_matmul.wat', 'cpu_matmul.wasm'])).toEqual([]);
  });

  it('C = A·Bᵀ for f32 and bf16 B, split over 1 and 3 threads identically, equal to a plain dot product', async () => {
    const [n, K, M] = [8, 40, 22];
    for (const threads of [1, 3]) {
      const pool = new WasmPool(threads);
      pool.reserve(1 << 20);
      const A = gaussian(n * K, 1);
      const Bf = gaussian(M * K, 2);
      const bf = new Uint16Array(M * K).map((_, i) => f32BitsToBf16(f32ToBits(Bf[i]!)));
      const Bbf = toFloat32(new Uint8Array(bf.buffer), 'BF16');
      for (const kind of ['f32', 'bf16'] as const) {
        const a = pool.f32(0, n * K);
        if (kind === 'f32') a.set(A);
        else
          for (let t = 0; t < n; t++)
            for (let k = 0; k < K; k += 8) for (let j = 0; j < 8; j++) a[t * K + k + j] = A[t * K + k + (j < 4 ? 2 * j : 2 * (j - 4) + 1)]!;
        const b = 4096;
        if (kind === 'f32') pool.f32(b, M * K).set(Bf);
        else pool.bytes(b, M * K * 2).set(new Uint8Array(bf.buffer));
        const c = 65536;
        await pool.matmul({ kind, a: 0, b, c, n, K, rows: M, ldc: M });
        const C = pool.f32(c, n * M);
        const B = kind === 'f32' ? Bf : Bbf;
        for (let t = 0; t < n; t++)
          for (let r = 0; r < M; r++) {
            let s = 0;
            for (let k = 0; k < K; k++) s += A[t * K + k]! * B[r * K + k]!;
            expect(Math.abs(C[t * M + r]! - s), `${kind} ${threads} threads C[${t},${r}]`).toBeLessThan(1e-5 * (1 + Math.abs(s)));
          }
      }
    }
  });
});
