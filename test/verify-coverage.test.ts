/**
 * verify accounts for every tensor: outside the MLP blocks a changed byte, a NaN, a missing tensor
 * or a corrupted rank file fails and is named; layers without a reference output are reported as
 * not checked (exit 3).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { bufferSource, writeCheckpoint } from '../src/store/safetensors/writer.js';
import { FIXTURES, runCli, tempDir } from './helpers.js';

const tmp = tempDir('moekit-cov-');
afterAll(() => tmp.cleanup());
let n = 0;
const out = (name: string) => join(tmp.dir, `${n++}-${name}`);

/** A converted copy of a fixture with `edit` applied to its tensors (drop one by returning undefined). */
async function edited(fixture: string, to: string, edit: (name: string, data: Buffer) => Buffer | undefined): Promise<string> {
  const conv = out('conv');
  expect(runCli(['convert', join(FIXTURES, fixture), '--to', to, '--no-fsync', '-o', conv]).code).toBe(0);
  const ck = await openStore(conv);
  const entries = [];
  for (const t of ck.tensors.values()) {
    const d = edit(t.name, Buffer.from(await ck.read(t)));
    if (d) entries.push({ name: t.name, dtype: t.dtype, shape: t.shape, source: bufferSource(d) });
  }
  await ck.close();
  const dst = out('edited');
  await writeCheckpoint(dst, entries, { fsync: false });
  for (const f of ['config.json', 'moekit.json']) copyFileSync(join(conv, f), join(dst, f));
  return dst;
}

const verify = (...args: string[]) => runCli(['verify', ...args, '--cpu']);

describe('verify proves the whole checkpoint', () => {
  const src = join(FIXTURES, 'deepseek_v3');
  it('a faithful conversion: every tensor outside the blocks byte-identical, exit 0', async () => {
    const ok = await edited('deepseek_v3', 'te', (_n, d) => d);
    const r = verify(src, ok);
    expect(r.code, r.stdout).toBe(0);
    expect(r.stdout).toMatch(/2 MoE block\(s\) and 1 dense block\(s\) forward-equal, 30 tensor\(s\) byte-identical, 0 layer\(s\) unchecked/);
  });
  it('one attention tensor altered: exit 1, the tensor named with both sides', async () => {
    const bad = await edited('deepseek_v3', 'te', (name, d) =>
      name === 'model.layers.1.self_attn.o_proj.weight' ? Buffer.concat([d.subarray(0, 4), Buffer.from([0, 0, 128, 63]), d.subarray(8)]) : d,
    );
    const r = verify(src, bad);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(
      /DIFFERS {2}a:model\.layers\.1\.self_attn\.o_proj\.weight F32\[\d+,\d+\] sha256 \w+… {2}↔ {2}b:model\.layers\.1\.self_attn\.o_proj\.weight/,
    );
    expect(r.stdout).toMatch(/^FAIL: 0 layer\(s\), 1 differing/m);
  });
  it('one NaN in an embedding: exit 1, named', async () => {
    const bad = await edited('deepseek_v3', 'te', (name, d) => {
      if (name !== 'model.embed_tokens.weight') return d;
      const c = Buffer.from(d);
      c.writeFloatLE(Number.NaN, 40);
      return c;
    });
    const r = verify(src, bad);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/NaN\/Inf {2}model\.embed_tokens\.weight \(.*\): 1 element\(s\)/);
    expect(r.stdout).toMatch(/DIFFERS {2}a:model\.embed_tokens\.weight/);
  });
  it('one tensor missing: exit 1, named as one-sided', async () => {
    const bad = await edited('deepseek_v3', 'te', (name, d) => (name === 'model.norm.weight' ? undefined : d));
    const r = verify(src, bad);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/MISSING {2}model\.norm\.weight: only in .*deepseek_v3/);
  });
  it('one flipped byte in a rank file of a sharded checkpoint: exit 1, the rank and tensor named', () => {
    const sh = out('sh');
    expect(runCli(['shard', src, '--ep', '2', '--no-fsync', '-o', sh]).code).toBe(0);
    const rank = join(sh, 'ep1-of-2');
    const f = join(rank, readdirSync(rank).find((x) => x.endsWith('.safetensors'))!);
    const buf = readFileSync(f);
    buf[buf.length - 3]! ^= 0x01;
    writeFileSync(f, buf);
    const r = verify(sh, '--reference', join(src, 'reference.safetensors'));
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/CHECKSUM checksum mismatch in rank ep1-of-2: tensor '[^']+'/);
  });
  it('a layer without a reference output is reported as not checked: exit 3', async () => {
    const ref = out('ref.safetensors');
    const ck = await openStore(join(src, 'reference.safetensors'));
    const entries = [];
    for (const t of ck.tensors.values())
      if (t.name !== 'layers.2.output') entries.push({ name: t.name, dtype: t.dtype, shape: t.shape, source: bufferSource(Buffer.from(await ck.read(t))) });
    await ck.close();
    const dir = out('refdir');
    await writeCheckpoint(dir, entries, { fsync: false });
    const r = verify(src, '--reference', join(dir, 'model.safetensors'));
    expect(r.code, r.stdout).toBe(3);
    expect(r.stdout).toMatch(/not checked: layer\(s\) 2 \(no reference output\)/);
    void ref;
  });
});

describe('no GPU, no failure', () => {
  const noVulkan = { VK_DRIVER_FILES: '/nonexistent/icd.json', VK_ICD_FILENAMES: '/nonexistent/icd.json' };
  it('without a Vulkan driver verify runs the CPU forward and says so; --gpu makes it an error (exit 8)', () => {
    const args = ['verify', join(FIXTURES, 'mixtral'), '--reference', join(FIXTURES, 'mixtral', 'reference.safetensors')];
    const r = runCli(args, { env: noVulkan });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/verify: no WebGPU adapter, running the CPU forward instead/);
    expect(r.stdout).toMatch(/backend: CPU \(WebAssembly SIMD, \d+ threads\): no WebGPU adapter/);
    expect(r.stderr).not.toMatch(/Warning|vkCreateInstance|\.cpp:\d+/); // the driver loader's and Dawn's own noise is filtered
    const g = runCli([...args, '--gpu'], { env: noVulkan });
    expect(g.code).toBe(8);
    expect(g.stderr).toMatch(/moekit: error: no WebGPU adapter found/);
    expect(g.stderr.trim().split('\n')).toHaveLength(1);
  });

  it("with an adapter, Dawn's dynamic-buffer-limit warnings are not shown", () => {
    const r = runCli(['verify', join(FIXTURES, 'mixtral'), '--reference', join(FIXTURES, 'mixtral', 'reference.safetensors')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/backend: WebGPU/);
    expect(r.stderr).toMatch(/verify: WebGPU adapter/);
    expect(r.stderr).not.toMatch(/Warning|artificially reduced/);
  });

  it('the stderr filter drops exactly the native warnings and passes redraws through at once', async () => {
    const { dawnFilter } = await import('../src/cli/quiet-dawn.js');
    const got: string[] = [];
    const f = dawnFilter((s) => got.push(s));
    f.push('Warning: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 1000000 to 16 to fit dynamic offset allocation limit.\nverify: lay');
    f.push('er 0 (1/2)\nWarning: vkCreateInstance failed\n    at CheckVkSuccessImpl (/x/dawn/VulkanError.cpp:106)\n\n\r[###.....]  15%');
    expect(got.join('')).toBe('verify: layer 0 (1/2)\n\r[###.....]  15%');
    f.push('\nmoekit: error: Warning: is only dropped at the start of a line\n    at not.a.location\nWarn');
    f.end();
    expect(got.join('')).toBe(
      'verify: layer 0 (1/2)\n\r[###.....]  15%\nmoekit: error: Warning: is only dropped at the start of a line\n    at not.a.location\nWarn',
    );
  });
});

describe('precision-aware comparison (f32 against its bf16 conversion)', () => {
  const twin = (fixture: string) => {
    const d = out(`${fixture}-bf16`);
    expect(runCli(['convert', join(FIXTURES, fixture), '--to', 'hf', '--dtype', 'bf16', '--no-fsync', '-o', d]).code).toBe(0);
    return d;
  };
  it('bf16 ↔ f32 passes on every bundled MoE fixture at every seed 0–9; near-ties are reported, not failed', () => {
    let reported = 0;
    for (const f of ['mixtral', 'qwen2_moe', 'qwen3_moe', 'deepseek_v3', 'gpt_oss', 'granitemoe', 'llama4_text']) {
      const bf = twin(f);
      for (let seed = 0; seed < 10; seed++) {
        const r = runCli(['verify', bf, join(FIXTURES, f), '--cpu', '--seed', String(seed), '--json']);
        expect(r.code, `${f} seed ${seed}: ${r.stdout.slice(0, 400)}`).toBe(0);
        const rep = JSON.parse(r.stdout) as { layers: { flips?: { tokens: number[] } }[] };
        reported += rep.layers.reduce((a, l) => a + (l.flips?.tokens.length ?? 0), 0);
      }
    }
    expect(reported).toBeGreaterThan(0); // the near-ties exist, and are told apart from errors
  }, 120_000);
  it('a broken bf16 conversion (gate and up swapped in one expert) fails at every seed', async () => {
    const bf = twin('mixtral');
    const ck = await openStore(bf);
    const p = 'model.layers.1.block_sparse_moe.experts.3.';
    const [w1, w3] = [Buffer.from(await ck.read(`${p}w1.weight`)), Buffer.from(await ck.read(`${p}w3.weight`))];
    const entries = [];
    for (const t of ck.tensors.values()) {
      const d = t.name === `${p}w1.weight` ? w3 : t.name === `${p}w3.weight` ? w1 : Buffer.from(await ck.read(t));
      entries.push({ name: t.name, dtype: t.dtype, shape: t.shape, source: bufferSource(d) });
    }
    await ck.close();
    const bad = out('bad-bf16');
    await writeCheckpoint(bad, entries, { fsync: false });
    copyFileSync(join(bf, 'config.json'), join(bad, 'config.json'));
    for (let seed = 0; seed < 10; seed++)
      expect(runCli(['verify', bad, join(FIXTURES, 'mixtral'), '--cpu', '--seed', String(seed)]).code, `seed ${seed}`).toBe(1);
  }, 60_000);
});

describe('Granite-MoE, Llama4 and PhiMoE after conversion to every layout', () => {
  for (const f of ['granitemoe', 'llama4_text', 'phimoe']) {
    it(`${f}: every layout verifies against transformers' block outputs`, () => {
      for (const to of ['te', 'nemo', 'megatron', 'megatron-grouped', 'flashfusemoe', 'hf-fused']) {
        const dst = out(`${f}-${to}`);
        expect(runCli(['convert', join(FIXTURES, f), '--to', to, '--no-fsync', '-o', dst]).code, to).toBe(0);
        const r = runCli(['verify', dst, '--reference', join(FIXTURES, f, 'reference.safetensors'), '--cpu']);
        expect(r.code, `${f} → ${to}: ${r.stdout}`).toBe(0);
      }
    }, 60_000);
  }
});
