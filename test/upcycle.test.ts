/**
 * `moekit upcycle`: the MoE model computes the dense model's function (checked by verify, whose
 * judge here is the dense checkpoint written by transformers), for every granularity / top-k /
 * shared-expert combination and both dense fixtures and their bf16 twins; and the check fails
 * when the construction is wrong (scale, untied router row, misplaced slice).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { copyFileSync, cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { bufferSource, writeCheckpoint } from '../src/store/safetensors/writer.js';
import { castFloat, toFloat32 } from '../src/engine/cast.js';
import { upcycle } from '../src/ops/upcycle.js';
import { verify } from '../src/ops/verify.js';
import { FIXTURES, runCli, tempDir } from './helpers.js';

const tmp = tempDir('moekit-upcycle-');
afterAll(() => tmp.cleanup());
let n = 0;
const out = (name: string) => join(tmp.dir, `${n++}-${name}`);
const fast = { fsync: false };

/** A copy of a checkpoint through moekit's writer, every tensor passed through `edit` (name, bytes) → bytes. */
async function rewrite(src: string, edit: (name: string, data: Buffer, dtype: string) => { data: Buffer; dtype?: 'F32' | 'BF16' }): Promise<string> {
  const ck = await openStore(src);
  const dst = out('rewritten');
  const entries = [];
  for (const t of ck.tensors.values()) {
    const r = edit(t.name, Buffer.from(await ck.read(t)), t.dtype);
    entries.push({ name: t.name, dtype: r.dtype ?? t.dtype, shape: t.shape, source: bufferSource(r.data) });
  }
  await writeCheckpoint(dst, entries, { fsync: false });
  await ck.close();
  for (const f of ['config.json', 'moekit.json']) {
    try {
      copyFileSync(join(src, f), join(dst, f));
    } catch {
      /* absent */
    }
  }
  return dst;
}

const bf16Twin = (fixture: string) =>
  rewrite(join(FIXTURES, fixture), (_n, data, dtype) => (dtype === 'F32' ? { data: castFloat(data, 'F32', 'BF16'), dtype: 'BF16' } : { data }));

describe('upcycled models compute the dense function', () => {
  const cases: [string, number, number, number][] = [
    // G, K, E
    ['llama_dense', 1, 1, 4],
    ['llama_dense', 1, 2, 8],
    ['llama_dense', 1, 4, 8],
    ['llama_dense', 2, 2, 8],
    ['llama_dense', 2, 4, 8],
    ['llama_dense', 4, 4, 8],
    ['qwen3_dense', 1, 2, 8],
    ['qwen3_dense', 2, 2, 6],
    ['qwen3_dense', 4, 4, 16],
  ];
  for (const [fixture, G, K, E] of cases) {
    it(`${fixture}: G ${G}, top-${K}, ${E} experts → verify at f32 tolerance`, async () => {
      const dst = out('up');
      const s = await upcycle(join(FIXTURES, fixture), dst, { experts: E, topK: K, granularity: G, ...fast });
      expect(s.family).toBe(fixture === 'llama_dense' ? 'mixtral' : 'qwen3_moe');
      const r = await verify(join(FIXTURES, fixture), dst, { cpu: true });
      expect(r.pass).toBe(true);
      expect(r.rtol).toBe(1e-4);
      for (const l of r.layers) expect(l.maxRel).toBeLessThan(1e-5);
      expect(Math.max(...r.layers.map((l) => l.expertsHit))).toBeGreaterThan(1);
    });
  }

  it('Qwen2-MoE form with shared experts (sigmoid gate at 1/2), G 4, S 1 and S 2', async () => {
    for (const [S, E, K] of [
      [1, 6, 3],
      [2, 4, 2],
    ] as const) {
      const dst = out('q2');
      await upcycle(join(FIXTURES, 'qwen3_dense'), dst, { experts: E, topK: K, granularity: 4, sharedExperts: S, family: 'qwen2_moe', ...fast });
      const cfg = JSON.parse(readFileSync(join(dst, 'config.json'), 'utf8')) as Record<string, unknown>;
      expect([cfg.model_type, cfg.shared_expert_intermediate_size, cfg.moe_intermediate_size, cfg.norm_topk_prob]).toEqual(['qwen2_moe', S * 40, 40, true]);
      const r = await verify(join(FIXTURES, 'qwen3_dense'), dst, { cpu: true });
      expect(r.pass, `S ${S}`).toBe(true);
    }
  });

  it('every routing rule: top-k → softmax (Granite-MoE) and sigmoid + renormalise (GLM4-MoE, with and without shared experts)', async () => {
    for (const [family, S, E, K, G] of [
      ['granitemoe', 0, 8, 4, 2],
      ['glm4_moe', 0, 8, 2, 2],
      ['glm4_moe', 1, 6, 3, 4],
    ] as const) {
      const dst = out(family);
      const s = await upcycle(join(FIXTURES, 'llama_dense'), dst, { experts: E, topK: K, granularity: G, sharedExperts: S, family, ...fast });
      expect(s.warnings).toEqual([]);
      const cfg = readFileSync(join(dst, 'config.json'), 'utf8');
      if (family === 'glm4_moe') expect(cfg).toMatch(/"routed_scaling_factor": 1\.0,/); // a float, as transformers' strict config wants
      const r = await verify(join(FIXTURES, 'llama_dense'), dst, { cpu: true });
      expect(r.pass, `${family} S ${S}`).toBe(true);
      for (const l of r.layers) expect(l.maxRel).toBeLessThan(1e-5);
    }
  });

  it("--scheme megatron (Megatron-LM's act_scale^(1/3) on fc1 and fc2) is exact at G 1 and only approximate for SwiGLU at G 2, and says so", async () => {
    const g1 = out('mg1');
    await upcycle(join(FIXTURES, 'llama_dense'), g1, { experts: 4, topK: 2, scheme: 'megatron', ...fast });
    expect((await verify(join(FIXTURES, 'llama_dense'), g1, { cpu: true })).pass).toBe(true);
    const g2 = out('mg2');
    const s = await upcycle(join(FIXTURES, 'llama_dense'), g2, { experts: 8, topK: 2, granularity: 2, scheme: 'megatron', ...fast });
    expect(s.equivalent).toBe(false);
    expect(s.warnings.join()).toMatch(/scales fc1 and fc2 by 1\.25992.*only approximates/);
    const r = await verify(join(FIXTURES, 'llama_dense'), g2, { cpu: true });
    expect(r.pass).toBe(false);
    const mk = JSON.parse(readFileSync(join(g2, 'moekit.json'), 'utf8')) as { upcycle: { scheme: string; equivalent: boolean } };
    expect(mk.upcycle).toMatchObject({ scheme: 'megatron', equivalent: false });
  });

  it('on WebGPU too, in the TE layout and sharded EP 2', async () => {
    const te = out('te');
    await upcycle(join(FIXTURES, 'llama_dense'), te, { experts: 8, topK: 4, granularity: 2, to: 'te', ...fast });
    expect((await verify(join(FIXTURES, 'llama_dense'), te)).pass).toBe(true);
    const sh = out('ep');
    await upcycle(join(FIXTURES, 'llama_dense'), sh, { experts: 8, topK: 2, granularity: 2, ep: 2, ...fast });
    expect((await verify(join(FIXTURES, 'llama_dense'), sh, { cpu: true })).pass).toBe(true);
  });

  it('bf16 twins of both dense fixtures', async () => {
    for (const fixture of ['llama_dense', 'qwen3_dense']) {
      const twin = await bf16Twin(fixture);
      const dst = out('bf16');
      await upcycle(twin, dst, { experts: 8, topK: 4, granularity: 2, ...fast });
      const r = await verify(twin, dst, { cpu: true });
      expect(r.pass, fixture).toBe(true);
      for (const l of r.layers) expect(l.maxRel).toBeLessThan(1e-5); // same bf16 weights on both sides: exact but for f32 rounding
    }
  });

  it('the model card facts: config.json loads as the target architecture, moekit.json records the scheme', async () => {
    const dst = out('facts');
    await upcycle(join(FIXTURES, 'llama_dense'), dst, { experts: 8, topK: 2, granularity: 2, seed: 5, ...fast });
    const cfg = JSON.parse(readFileSync(join(dst, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect([cfg.model_type, cfg.architectures, cfg.num_local_experts, cfg.num_experts_per_tok, cfg.intermediate_size, cfg.num_attention_heads]).toEqual([
      'mixtral',
      ['MixtralForCausalLM'],
      8,
      2,
      80,
      4,
    ]);
    const mk = JSON.parse(readFileSync(join(dst, 'moekit.json'), 'utf8')) as { upcycle: Record<string, unknown> };
    expect(mk.upcycle).toMatchObject({ scheme: 'exact', granularity: 2, copies: 4, downScale: 2, equivalent: true, seed: 5 });
    expect(runCli(['inspect', dst]).stdout).toMatch(/experts per MoE layer\s+8/);
  });
});

describe('the check fails when the construction is wrong', () => {
  const base = async () => {
    const dst = out('base');
    await upcycle(join(FIXTURES, 'llama_dense'), dst, { experts: 8, topK: 2, granularity: 2, ...fast });
    return dst;
  };
  const f32 = (b: Buffer) => toFloat32(b, 'F32');
  const bytes = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);

  it('a wrong scale factor on one expert', async () => {
    const bad = await rewrite(await base(), (name, data) => ({
      data: name.endsWith('layers.0.block_sparse_moe.experts.2.w2.weight') ? bytes(f32(data).map((v) => v * 1.5)) : data,
    }));
    expect((await verify(join(FIXTURES, 'llama_dense'), bad, { cpu: true })).pass).toBe(false);
  });
  it('an untied router row', async () => {
    const bad = await rewrite(await base(), (name, data) => {
      if (!name.endsWith('layers.1.block_sparse_moe.gate.weight')) return { data };
      const x = f32(data);
      for (let h = 0; h < 48; h++) x[48 + h] = -x[48 + h]!; // expert 1 no longer tied to expert 0
      return { data: bytes(x) };
    });
    const r = await verify(join(FIXTURES, 'llama_dense'), bad, { cpu: true });
    expect(r.layers.find((l) => l.layer === 1)!.pass).toBe(false);
  });
  it('a slice given to the wrong expert', async () => {
    const up = await base();
    const ck = await openStore(up);
    const p = 'model.layers.0.block_sparse_moe.experts.';
    const [g0, g1] = [Buffer.from(await ck.read(`${p}0.w1.weight`)), Buffer.from(await ck.read(`${p}1.w1.weight`))];
    await ck.close();
    const bad = await rewrite(up, (name, data) => ({ data: name === `${p}0.w1.weight` ? g1 : name === `${p}1.w1.weight` ? g0 : data }));
    expect((await verify(join(FIXTURES, 'llama_dense'), bad, { cpu: true })).layers[0]!.pass).toBe(false);
  });
});

describe('refusals name the values that work', () => {
  const refused = (args: string[], code: number, re: RegExp) => {
    const dst = out('never');
    const r = runCli(['upcycle', ...args, '-o', dst]);
    expect(r.code, r.stderr).toBe(code);
    expect(r.stderr).toMatch(re);
  };
  it('an MoE source, impossible granularity / experts / top-k, shared experts without a place, unknown family', () => {
    refused([join(FIXTURES, 'mixtral'), '--experts', '8', '--top-k', '2'], 4, /already an MoE checkpoint/);
    const odd = out('odd');
    cpSync(join(FIXTURES, 'llama_dense'), odd, { recursive: true });
    writeFileSync(join(odd, 'config.json'), readFileSync(join(odd, 'config.json'), 'utf8').replace('"llama"', '"mystery"'));
    refused([odd, '--experts', '8', '--top-k', '2'], 4, /model_type 'mystery' is not a dense family moekit knows/);
    refused(
      [join(FIXTURES, 'llama_dense'), '--experts', '8', '--top-k', '2', '--granularity', '3'],
      2,
      /does not divide .* 160 \(values that work: 1, 2, 4, 5, 8/,
    );
    refused([join(FIXTURES, 'llama_dense'), '--experts', '6', '--top-k', '2', '--granularity', '4'], 2, /--experts 6 is not a multiple of the 4 .*4, 8, 12/);
    refused([join(FIXTURES, 'llama_dense'), '--experts', '8', '--top-k', '3', '--granularity', '2'], 2, /--top-k 3 must select whole copies of 2 .*2, 4, 6, 8/);
    refused(
      [join(FIXTURES, 'llama_dense'), '--experts', '8', '--top-k', '2', '--granularity', '2', '--shared-experts', '1'],
      2,
      /family 'mixtral' has no shared expert/,
    );
    refused([join(FIXTURES, 'llama_dense'), '--experts', '8', '--top-k', '2', '--family', 'deepseek_v3'], 4, /upcycle writes mixtral, qwen3_moe, qwen2_moe/);
  });
  it('--experts-from builds copies from other checkpoints and says the result is not equivalent', () => {
    const dst = out('from');
    const r = runCli([
      'upcycle',
      join(FIXTURES, 'llama_dense'),
      '--experts-from',
      join(FIXTURES, 'qwen3_dense'),
      '--experts',
      '4',
      '--top-k',
      '2',
      '--no-fsync',
      '-o',
      dst,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: --experts-from: .*does not compute the dense model's function/);
    expect(JSON.parse(readFileSync(join(dst, 'moekit.json'), 'utf8')).upcycle.equivalent).toBe(false);
  });
});
