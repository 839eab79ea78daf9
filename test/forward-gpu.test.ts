import { beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { castFloat, toFloat32 } from '../src/engine/cast.js';
import type { FloatDtype } from '../src/store/dtypes.js';
import { layerSource } from '../src/forward/ir-loader.js';
import { compare, forwardCpu, routeAll } from '../src/forward/cpu.js';
import type { BlockSpec } from '../src/forward/routing.js';
import { bytesOf, type ExpertWeights, type MoeBlockWeights, type Weight } from '../src/forward/weights.js';
import { forwardGpu, planPieces, planUploads, releaseGpuBuffers } from '../src/gpu/moe.js';
import { makeRouting, type Activation, type Routing } from '../src/families/index.js';

const FIX = new URL('../fixtures/hf/', import.meta.url).pathname;

describe('WebGPU forward vs transformers outputs', () => {
  for (const [name, refName, tol, maxBinding] of [
    ['mixtral', 'mixtral', 1e-5, undefined],
    ['mixtral_bf16', 'mixtral', 2e-2, undefined],
    ['qwen2_moe', 'qwen2_moe', 1e-5, 4096],
    ['qwen3_moe', 'qwen3_moe', 1e-5, undefined],
    ['deepseek_v3', 'deepseek_v3', 1e-5, 6000],
    ['deepseek_v3_bf16', 'deepseek_v3', 2e-2, undefined],
    ['gpt_oss', 'gpt_oss', 1e-5, undefined],
    ['llama_dense', 'llama_dense', 1e-5, undefined],
    ['qwen3_dense', 'qwen3_dense', 1e-5, undefined],
    ['granitemoe', 'granitemoe', 1e-5, undefined],
    ['llama4_text', 'llama4_text', 1e-5, 4096],
    ['phimoe', 'phimoe', 1e-5, undefined],
  ] as const)
    for (const kernels of ['cpu', 'gpu'] as const) {
      it(`${name}${maxBinding ? ` (bindings ≤ ${maxBinding} B)` : ''}, ${kernels} kernels`, async () => {
        const ck = await openStore(join(FIX, name));
        const config = (await ck.config())!;
        const ref = await openStore(join(FIX, refName, 'reference.safetensors'));
        const x = toFloat32(await ref.read('input'), 'F32');
        for (const l of (await layerSource(ck, config)).layers.filter((l) => ref.has(`layers.${l}.output`))) {
          const { weights, facts } = await (await layerSource(ck, config)).load(l);
          // PhiMoE's sparsemixer is routed on the CPU (as verify does) and the kernels run the selection
          const forced = facts.routing.scoreFunc === 'sparsemixer' ? routeAll(weights, facts, x, 24) : undefined;
          const g = await forwardGpu(weights, facts, x, 24, { maxBinding, kernels, forced });
          const c = compare(g.out, toFloat32(await ref.read(`layers.${l}.output`), 'F32'));
          expect(c.maxRel, `${name} layer ${l}`).toBeLessThanOrEqual(tol);
          expect(g.expertCounts).toEqual(forwardCpu(weights, facts, x, 24).expertCounts);
        }
        await ck.close();
        await ref.close();
      });
    }
});

// Deterministic random numbers (mulberry32).
function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function synth(opts: {
  seed: number;
  H: number;
  I: number;
  E: number;
  dtype: FloatDtype;
  gated?: boolean;
  biases?: boolean;
  routerBias?: boolean;
  correction?: boolean;
  shared?: number[];
  sharedGate?: boolean;
  deadExpert?: number;
}): MoeBlockWeights {
  const r = rng(opts.seed);
  const normal = () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
  const W = (shape: number[], scale: number, dtype: FloatDtype = opts.dtype): Weight => {
    const n = shape.reduce((a, b) => a * b, 1);
    const f = Float32Array.from({ length: n }, () => normal() * scale);
    const bytes = new Uint8Array(f.buffer);
    return { dtype, shape, data: dtype === 'F32' ? bytes : castFloat(bytes, 'F32', dtype) };
  };
  const { H, I, E } = opts;
  const expert = (i: number): ExpertWeights => ({
    gate: opts.gated === false ? undefined : W([i, H], 1 / Math.sqrt(H)),
    up: W([i, H], 1 / Math.sqrt(H)),
    down: W([H, i], 1 / Math.sqrt(i)),
    gateBias: opts.biases && opts.gated !== false ? W([i], 0.1, 'F32') : undefined,
    upBias: opts.biases ? W([i], 0.1, 'F32') : undefined,
    downBias: opts.biases ? W([H], 0.1, 'F32') : undefined,
  });
  const router =
    E > 0
      ? {
          weight: W([E, H], 1 / Math.sqrt(H)),
          bias: opts.routerBias ? W([E], 0.5, 'F32') : undefined,
          correctionBias: opts.correction ? W([E], 0.3, 'F32') : undefined,
        }
      : undefined;
  if (router && opts.deadExpert !== undefined) {
    // zero router row and a -1e4 bias: this expert never wins (receives zero tokens)
    const f = toFloat32(bytesOf(router.weight), router.weight.dtype);
    for (let k = 0; k < H; k++) f[opts.deadExpert * H + k] = 0;
    const bytes = new Uint8Array(f.buffer);
    router.weight = { ...router.weight, data: router.weight.dtype === 'F32' ? bytes : castFloat(bytes, 'F32', router.weight.dtype) };
    const bias = new Float32Array(E);
    bias[opts.deadExpert] = -1e4;
    router.bias = { dtype: 'F32', shape: [E], data: new Uint8Array(bias.buffer) };
  }
  return {
    hidden: H,
    router,
    experts: Array.from({ length: E }, () => expert(I)),
    shared: (opts.shared ?? []).map((i) => expert(i)),
    sharedGate: opts.sharedGate ? W([1, H], 1 / Math.sqrt(H)) : undefined,
  };
}

const routing = (r: Partial<Routing>): Routing => makeRouting({ scoreFunc: 'softmax', topK: 2, ...r });

describe('WebGPU forward vs CPU reference on random shapes', () => {
  beforeAll(() => {
    process.env.XDG_RUNTIME_DIR ||= '/tmp';
  });
  const cases: { name: string; w: Parameters<typeof synth>[0]; r: Partial<Routing>; act: Activation; T: number; maxBinding?: number }[] = [
    {
      name: 'softmax renorm, expert with zero tokens, f32',
      w: { seed: 1, H: 32, I: 24, E: 6, dtype: 'F32', routerBias: true, deadExpert: 3 },
      r: { normTopkProb: true },
      act: { kind: 'swiglu' },
      T: 13,
    },
    {
      name: 'DeepSeek-style groups (one kept), correction bias, shared, bf16, ×2.5',
      w: { seed: 2, H: 64, I: 16, E: 16, dtype: 'BF16', correction: true, shared: [32] },
      r: { scoreFunc: 'sigmoid', topK: 3, nGroup: 4, topkGroup: 1, normTopkProb: true, routedScalingFactor: 2.5, correctionBias: true },
      act: { kind: 'swiglu' },
      T: 37,
    },
    {
      name: 'GPT-OSS-style top-k softmax, biases, SwiGLU-OAI, f16',
      w: { seed: 3, H: 48, I: 40, E: 8, dtype: 'F16', biases: true, routerBias: true },
      r: { scoreFunc: 'topk_softmax', topK: 4 },
      act: { kind: 'swiglu_oai', alpha: 1.702, limit: 0.5 },
      T: 9,
    },
    { name: 'ReLU² non-gated, 1 token', w: { seed: 4, H: 16, I: 8, E: 4, dtype: 'F32', gated: false }, r: { topK: 1 }, act: { kind: 'relu2' }, T: 1 },
    {
      name: 'GeGLU exact, shared expert with sigmoid gate',
      w: { seed: 5, H: 40, I: 12, E: 5, dtype: 'BF16', shared: [20], sharedGate: true },
      r: { topK: 2 },
      act: { kind: 'geglu' },
      T: 21,
    },
    {
      name: 'GeGLU tanh, Llama4-style input scaling',
      w: { seed: 6, H: 24, I: 36, E: 4, dtype: 'F32', shared: [36] },
      r: { scoreFunc: 'topk_sigmoid_input', topK: 1 },
      act: { kind: 'geglu_tanh' },
      T: 17,
    },
    {
      name: 'clamped SwiGLU, chunked: row blocks and tokens routed to none of a piece',
      w: { seed: 7, H: 32, I: 48, E: 8, dtype: 'BF16', biases: true },
      r: { topK: 2, normTopkProb: true },
      act: { kind: 'swiglu_clamped', limit: 0.3 },
      T: 30,
      maxBinding: 1024,
    },
    {
      name: 'dense block (no router), chunked',
      w: { seed: 8, H: 32, I: 64, E: 0, dtype: 'F32', shared: [64] },
      r: {},
      act: { kind: 'swiglu' },
      T: 19,
      maxBinding: 2048,
    },
  ];
  for (const c of cases)
    for (const kernels of ['cpu', 'gpu'] as const) {
      it(`${c.name}, ${kernels} kernels`, async () => {
        const w = synth(c.w);
        const spec: BlockSpec = { routing: routing(c.r), activation: c.act };
        const r = rng(100 + c.w.seed);
        const x = Float32Array.from({ length: c.T * c.w.H }, () => 2 * r() - 1);
        const cpu = forwardCpu(w, spec, x, c.T);
        const gpu = await forwardGpu(w, spec, x, c.T, { maxBinding: c.maxBinding, kernels });
        const cmp = compare(gpu.out, cpu.out);
        expect(cmp.refMax).toBeGreaterThan(0);
        expect(cmp.maxRel).toBeLessThanOrEqual(1e-5);
        expect(gpu.expertCounts).toEqual(cpu.expertCounts);
        if (c.w.deadExpert !== undefined) expect(cpu.expertCounts[c.w.deadExpert]).toBe(0);
        if (c.maxBinding) expect(gpu.pieces).toBeGreaterThan(4);
      });
    }
});

describe('group masking with −inf (Kimi-Linear, MiMo-V2-Flash, A.X-K1) on the GPU router', () => {
  it('routes as the CPU rule does, and differently from 0.0 masking on the same block', async () => {
    const w = synth({ seed: 21, H: 64, I: 16, E: 16, dtype: 'F32', correction: true });
    // most correction biases well below −1: many kept experts have a negative biased score, where 0.0 and −inf masking part
    const corr = Float32Array.from({ length: 16 }, (_, e) => (e % 4 === 0 ? 0.4 : -1.3 - 0.01 * e));
    w.router!.correctionBias = { dtype: 'F32', shape: [16], data: new Uint8Array(corr.buffer) };
    const r = { scoreFunc: 'sigmoid', topK: 3, nGroup: 4, topkGroup: 2, normTopkProb: true, correctionBias: true } as const;
    const inf: BlockSpec = { routing: routing({ ...r, groupMask: '-inf' }), activation: { kind: 'swiglu' } };
    const zero: BlockSpec = { routing: routing(r), activation: { kind: 'swiglu' } };
    const rnd = rng(321);
    const T = 40;
    const x = Float32Array.from({ length: T * 64 }, () => 2 * rnd() - 1);
    const cpuInf = forwardCpu(w, inf, x, T);
    expect(cpuInf.expertCounts).not.toEqual(forwardCpu(w, zero, x, T).expertCounts);
    const gpu = await forwardGpu(w, inf, x, T, { kernels: 'gpu' });
    expect(gpu.expertCounts).toEqual(cpuInf.expertCounts);
    expect(compare(gpu.out, cpuInf.out).maxRel).toBeLessThanOrEqual(1e-5);
  });
});

describe("'stream' expert kernels, the default on real GPUs (each weight row read once for 16 tokens at a time)", () => {
  // K a multiple of 8·KL (64) so the stream kernels run, not their 'gpu' fallback; over 16 tokens per
  // expert so the token chunks loop (an accumulator once leaked between chunks); split-K down projection
  for (const c of [
    { name: 'SwiGLU bf16, shared expert', w: { seed: 11, H: 128, I: 192, E: 4, dtype: 'BF16', shared: [128] }, T: 48 },
    { name: 'ReLU² non-gated f32, biases', w: { seed: 12, H: 64, I: 128, E: 3, dtype: 'F32', gated: false, biases: true }, T: 40 },
    { name: 'SwiGLU f16, chunked pieces', w: { seed: 13, H: 128, I: 128, E: 4, dtype: 'F16' }, T: 37, maxBinding: 32768 },
  ] as const)
    for (const [up, down] of [
      [undefined, undefined],
      ['8,1,1,1', '8,8,1,1'],
      ['8,1,2,2', '8,8,2,3'],
      ['8,1,1,1', '8,4,1,1'],
    ] as const)
      it(`${c.name} (shapes ${up ?? 'default: two rows per invocation'} / ${down ?? 'default'}): equal to the CPU forward, and the stream kernels ran`, async () => {
        const w = synth(c.w);
        const spec: BlockSpec = { routing: routing({ topK: 2 }), activation: { kind: c.w.gated === false ? 'relu2' : 'swiglu' } };
        const r = rng(200 + c.w.seed);
        const x = Float32Array.from({ length: c.T * c.w.H }, () => 2 * r() - 1);
        const cpu = forwardCpu(w, spec, x, c.T);
        const env = [process.env.MOEKIT_UP_CFG, process.env.MOEKIT_DOWN_CFG];
        const set = (k: string, v: string | undefined) => (v === undefined ? delete process.env[k] : (process.env[k] = v));
        set('MOEKIT_UP_CFG', up);
        set('MOEKIT_DOWN_CFG', down);
        const gpu = await forwardGpu(w, spec, x, c.T, { kernels: 'stream', timing: true, maxBinding: 'maxBinding' in c ? c.maxBinding : undefined }).finally(
          () => {
            set('MOEKIT_UP_CFG', env[0]);
            set('MOEKIT_DOWN_CFG', env[1]);
          },
        );
        const cmp = compare(gpu.out, cpu.out);
        expect(cmp.refMax).toBeGreaterThan(0);
        expect(cmp.maxRel).toBeLessThanOrEqual(1e-5);
        expect(gpu.expertCounts).toEqual(cpu.expertCounts);
        expect(Math.max(...cpu.expertCounts)).toBeGreaterThan(16);
        // the kernels timed (timestamp queries: lavapipe and real GPUs have them) are the stream ones, not their fallback
        expect(Object.keys(gpu.kernelMsBy ?? {})).toEqual(expect.arrayContaining(['expert_up_stream', 'expert_down_stream']));
        expect(Object.keys(gpu.kernelMsBy ?? {})).not.toContain('expert_up_gpu');
        if ('maxBinding' in c) expect(gpu.pieces).toBeGreaterThan(4);
      });
});

describe('kernel shape knobs (MOEKIT_UP_CFG / MOEKIT_DOWN_CFG)', () => {
  it('a malformed or out-of-range shape is a one-line error, not the default shape run under its name', async () => {
    const w = synth({ seed: 21, H: 64, I: 64, E: 4, dtype: 'BF16' });
    const spec: BlockSpec = { routing: routing({ topK: 2 }), activation: { kind: 'swiglu' } };
    const x = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.sin(i));
    const saved = process.env.MOEKIT_UP_CFG;
    try {
      for (const [kernels, bad] of [
        ['stream', '8,1,2,2,2'],
        ['stream', 'eight'],
        ['stream', '12'],
        ['gpu', '16,2'],
        ['gpu', '16,2,x'],
      ] as const) {
        process.env.MOEKIT_UP_CFG = bad;
        await expect(forwardGpu(w, spec, x, 4, { kernels })).rejects.toThrow(`kernel shape '${bad}' in MOEKIT_UP_CFG`);
      }
      process.env.MOEKIT_UP_CFG = '16,1,1,1';
      expect((await forwardGpu(w, spec, x, 4, { kernels: 'stream' })).out.length).toBe(4 * 64);
    } finally {
      if (saved === undefined) delete process.env.MOEKIT_UP_CFG;
      else process.env.MOEKIT_UP_CFG = saved;
    }
  });
});

describe('staging knob (MOEKIT_GPU_STAGING)', () => {
  it('other slot counts and sizes give the same bits; a malformed value is a one-line error', async () => {
    const w = synth({ seed: 22, H: 128, I: 192, E: 4, dtype: 'BF16' });
    const spec: BlockSpec = { routing: routing({ topK: 2 }), activation: { kind: 'swiglu' } };
    const x = Float32Array.from({ length: 24 * 128 }, (_, i) => Math.cos(i));
    const saved = process.env.MOEKIT_GPU_STAGING;
    try {
      delete process.env.MOEKIT_GPU_STAGING;
      const base = await forwardGpu(w, spec, x, 24, { kernels: 'stream', maxBinding: 65536 });
      for (const mappedUploads of [false, true]) {
        process.env.MOEKIT_GPU_STAGING = '3,1';
        const got = await forwardGpu(w, spec, x, 24, { kernels: 'stream', maxBinding: 65536, mappedUploads, uploadBytes: 4096 });
        expect(Buffer.from(got.out.buffer).equals(Buffer.from(base.out.buffer))).toBe(true);
      }
      for (const bad of ['8', '1,8', '8,0', '8,8,8', 'x,8', '65,8']) {
        process.env.MOEKIT_GPU_STAGING = bad;
        await expect(forwardGpu(w, spec, x, 24, { kernels: 'stream' })).rejects.toThrow(`bad MOEKIT_GPU_STAGING '${bad}'`);
      }
    } finally {
      if (saved === undefined) delete process.env.MOEKIT_GPU_STAGING;
      else process.env.MOEKIT_GPU_STAGING = saved;
    }
  });
});

describe('kernelRepeats (benchmarks: steady-state kernel time)', () => {
  it('repeated expert dispatches leave the output bit-identical, each kernel counted once (the median run)', async () => {
    const w = synth({ seed: 14, H: 128, I: 192, E: 4, dtype: 'BF16' });
    const spec: BlockSpec = { routing: routing({ topK: 2 }), activation: { kind: 'swiglu' } };
    const r = rng(214);
    const x = Float32Array.from({ length: 40 * 128 }, () => 2 * r() - 1);
    for (const kernels of ['stream', 'cpu'] as const) {
      const once = await forwardGpu(w, spec, x, 40, { kernels, timing: true, maxBinding: 65536 });
      const rep = await forwardGpu(w, spec, x, 40, { kernels, timing: true, maxBinding: 65536, kernelRepeats: 5 });
      expect(once.pieces).toBeGreaterThan(2);
      expect(Buffer.from(rep.out.buffer).equals(Buffer.from(once.out.buffer))).toBe(true);
      // the same kernels timed; the expert kernels' time is one run's, not five runs' summed
      expect(Object.keys(rep.kernelMsBy ?? {}).sort()).toEqual(Object.keys(once.kernelMsBy ?? {}).sort());
      const name = kernels === 'stream' ? 'expert_up_stream' : 'expert_up';
      expect(rep.kernelMsBy![name]!).toBeLessThan(3 * once.kernelMsBy![name]!);
    }
    await expect(forwardGpu(w, spec, x, 40, { kernelRepeats: 0 })).rejects.toThrow(/kernelRepeats must be 1 to 64/);
  });
});

describe('piece planning', () => {
  it('uploads cover every byte of every piece once, in whole rows of at most the upload size', () => {
    const mk = (I: number, H: number) =>
      ({ up: { dtype: 'BF16', shape: [I, H] }, gate: { dtype: 'BF16', shape: [I, H] }, down: { dtype: 'BF16', shape: [H, I] } }) as ExpertWeights;
    const g = { experts: [mk(40, 48), mk(40, 48), mk(40, 48)], I: 40, gated: true } as Parameters<typeof planUploads>[0][number]['g'];
    const jobs = [
      ...planPieces(3, 40, 48, 2, 2 * 40 * 48 * 2).map((p) => ({ g, gi: 0, p, up: true })),
      ...planPieces(3, 48, 40, 2, 1000).map((p) => ({ g, gi: 0, p, up: false })),
    ];
    const ups = planUploads(jobs, 48, 1000);
    expect(ups.every((u) => u.bytes <= 1000 && u.bytes === u.segs.reduce((a, s) => a + s.end - s.start, 0))).toBe(true);
    for (const [j, job] of jobs.entries()) {
      const K = job.up ? 48 : 40;
      for (const kind of job.up ? (['gate', 'up'] as const) : (['down'] as const)) {
        const segs = ups.filter((u) => u.job === j).flatMap((u) => u.segs.filter((s) => s.kind === kind));
        expect(segs.every((s) => (s.end - s.start) % (K * 2) === 0)).toBe(true);
        // destination bytes tile the piece's buffer; sources are the piece's rows of each expert
        const dst = segs.map((s) => [s.offset, s.end - s.start]).sort((a, b) => a[0]! - b[0]!);
        let at = 0;
        for (const [o, n] of dst) {
          expect(o).toBe(at);
          at += n!;
        }
        expect(at).toBe(job.p.nE * job.p.rows * K * 2);
        for (const s of segs) {
          const i = Math.floor(s.offset / (job.p.rows * K * 2));
          expect(s.w).toBe(g.experts[job.p.e0 + i]![kind]);
          expect(s.start - job.p.r0 * K * 2).toBe(s.offset - i * job.p.rows * K * 2);
        }
      }
    }
    // uploads go in dispatch order and never span two pieces
    expect(ups.map((u) => u.job)).toEqual([...ups.map((u) => u.job)].sort((a, b) => a - b));
  });
  it('packs whole experts when they fit and cuts row blocks when they do not', () => {
    expect(planPieces(8, 40, 48, 4, 16 * 7680)).toEqual([{ e0: 0, nE: 8, r0: 0, rows: 40 }]);
    expect(planPieces(3, 40, 48, 4, 2 * 7680).map((p) => p.nE)).toEqual([2, 1]);
    const rows = planPieces(2, 40, 48, 4, 4000);
    expect(rows.every((p) => p.rows * 48 * 4 <= 4000 && p.nE === 1)).toBe(true);
    expect(rows.reduce((a, p) => a + p.rows, 0)).toBe(80);
  });
  it('a Mixtral-8x7B-shaped bf16 layer fits 128 MiB bindings', () => {
    const up = planPieces(8, 14336, 4096, 2, 128 * 2 ** 20);
    expect(up.length).toBe(8);
    expect(up.every((p) => p.nE * p.rows * 4096 * 2 <= 128 * 2 ** 20)).toBe(true);
    const f32 = planPieces(8, 14336, 4096, 4, 128 * 2 ** 20);
    expect(f32.every((p) => p.rows * 4096 * 4 <= 128 * 2 ** 20)).toBe(true);
    expect(f32.length).toBe(16);
  });
});

describe('streaming expert weights from disk', () => {
  it('a lazily loaded block gives bit-identical results to an in-memory one (chunked pieces too)', async () => {
    const ck = await openStore(join(FIX, 'deepseek_v3_bf16'));
    const config = (await ck.config())!;
    const x = Float32Array.from({ length: 24 * 48 }, (_, i) => Math.sin(i));
    for (const [maxBinding, kernels, uploadBytes, mappedUploads] of [
      [undefined, 'cpu', undefined, undefined],
      [2048, 'cpu', undefined, undefined],
      [2048, 'gpu', undefined, undefined],
      // a piece (all experts, one dispatch) uploaded in 200-byte pieces of whole rows
      [undefined, 'gpu', 200, undefined],
      // through mapped staging buffers copied on the GPU (the default on real GPUs; lavapipe uses writeBuffer)
      [2048, 'gpu', undefined, true],
      [undefined, 'gpu', 200, true],
      [undefined, 'cpu', undefined, true],
    ] as const) {
      const lazy = await (await layerSource(ck, config)).load(1, { lazy: true });
      expect(lazy.weights.experts[0]!.up.data).toBeUndefined();
      const eager = await (await layerSource(ck, config)).load(1);
      const a = await forwardGpu(lazy.weights, lazy.facts, x, 24, { maxBinding, kernels, uploadBytes, mappedUploads });
      const b = await forwardGpu(eager.weights, eager.facts, x, 24, { maxBinding, kernels, mappedUploads: !mappedUploads });
      expect(Buffer.from(a.out.buffer).equals(Buffer.from(b.out.buffer))).toBe(true);
      // the host's time by phase (verify-bench prints it): the lazy block's uploads were copied into WebGPU
      expect(a.hostMs.write).toBeGreaterThan(0);
      expect(Object.values(a.hostMs).every((v) => Number.isFinite(v) && v >= 0)).toBe(true);
    }
    await ck.close();
  });

  it('the buffers a device keeps between forwards: reused, recovered after a failed read, not shared by concurrent forwards', async () => {
    const spec: BlockSpec = { routing: routing({ topK: 2 }), activation: { kind: 'swiglu' } };
    const blocks = [synth({ seed: 11, H: 32, I: 48, E: 8, dtype: 'BF16' }), synth({ seed: 12, H: 32, I: 48, E: 8, dtype: 'BF16' })];
    const x = Float32Array.from({ length: 19 * 32 }, (_, i) => Math.cos(i));
    const opts = { kernels: 'gpu' as const, uploadBytes: 512, mappedUploads: true };
    const want = blocks.map((w) => forwardCpu(w, spec, x, 19).out);
    const check = (out: Float32Array, i: number) => expect(compare(out, want[i]!).maxRel).toBeLessThanOrEqual(1e-5);
    // lazy weights whose reads fail part way: the forward fails between a read and its copy
    const failing: MoeBlockWeights = {
      ...blocks[0]!,
      experts: blocks[0]!.experts.map((e, i) => ({
        ...e,
        down: {
          dtype: e.down.dtype,
          shape: e.down.shape,
          read: i < 5 ? (s, t) => Promise.resolve(bytesOf(e.down).subarray(s, t)) : () => Promise.reject(new Error('disk gone')),
        },
      })),
    };
    check((await forwardGpu(blocks[0]!, spec, x, 19, opts)).out, 0);
    await expect(forwardGpu(failing, spec, x, 19, opts)).rejects.toThrow('disk gone');
    check((await forwardGpu(blocks[1]!, spec, x, 19, opts)).out, 1);
    const both = await Promise.all(blocks.map((w) => forwardGpu(w, spec, x, 19, opts)));
    for (const [i, r] of both.entries()) check(r.out, i);
    releaseGpuBuffers();
    check((await forwardGpu(blocks[0]!, spec, x, 19, opts)).out, 0);
  });
});
