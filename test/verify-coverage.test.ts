/**
 * verify accounts for every tensor: outside the MLP blocks a changed byte, a NaN, a missing tensor
 * or a corrupted rank file fails and is named; layers without a reference output are reported as
 * not checked (exit 3).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { openStore } from '../src/store/registry.js';
import { bufferSource, writeCheckpoint } from '../src/store/safetensors/writer.js';
import { FIXTURES, runCli, tempDir } from './helpers.js';
import { HashPool, nonFiniteIn } from '../src/engine/hash-pool.js';

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

/** The plain count: every element's exponent bits tested one by one. */
function naiveNonFinite(dtype: 'F32' | 'BF16' | 'F16', d: Uint8Array): number {
  let n = 0;
  if (dtype === 'F32') {
    for (let i = 0; i + 3 < d.length; i += 4) if (((d[i + 2]! | (d[i + 3]! << 8)) & 0x7f80) === 0x7f80) n++;
    return n;
  }
  const m = dtype === 'BF16' ? 0x7f80 : 0x7c00;
  for (let i = 0; i + 1 < d.length; i += 2) if (((d[i]! | (d[i + 1]! << 8)) & m) === m) n++;
  return n;
}

describe('the NaN / Inf count', () => {
  // random finite-looking bytes with all-ones exponents planted, some in runs, some alone, in both lanes of a word
  const planted = (dtype: 'F32' | 'BF16' | 'F16', bytes: number, seed: number) => {
    const d = Buffer.alloc(bytes);
    let x = seed;
    const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8) / 2 ** 24;
    for (let i = 0; i < bytes; i++) d[i] = Math.floor(rnd() * 256) & (i % 2 === 1 ? 0x3f : 0xff); // high bytes kept off the top exponents
    const w = dtype === 'F32' ? 4 : 2;
    const hi = { F32: [0x7f, 0x80], BF16: [0x7f, 0x80], F16: [0x7c, 0x00] }[dtype];
    for (const at of [0, w, 7 * w, 4096 * w + w, 4100 * w, Math.floor(bytes / w) * w - w]) {
      if (at + w > bytes) continue;
      d[at + w - 1] = hi[0]! | (rnd() < 0.5 ? 0x80 : 0); // ±
      d[at + w - 2] = (d[at + w - 2]! & ~hi[1]! & 0xff) | hi[1]! | Math.floor(rnd() * 2); // Inf or NaN payload
    }
    return d;
  };
  for (const dtype of ['BF16', 'F16', 'F32'] as const) {
    it(`${dtype}: equals the element-by-element count at any length and alignment`, () => {
      for (const bytes of [2, 6, 4096, 4 * 4096 + 2, 40_000]) {
        const d = planted(dtype, bytes, bytes);
        for (const off of [0, 2, 4]) {
          const w = dtype === 'F32' ? 4 : 2;
          const len = Math.max(0, d.length - off) - (Math.max(0, d.length - off) % w);
          const v = new Uint8Array(d.buffer, d.byteOffset + Math.min(off, d.length), len);
          expect(nonFiniteIn(dtype, v), `${bytes} bytes at +${off}`).toBe(naiveNonFinite(dtype, v));
        }
      }
      expect(naiveNonFinite(dtype, planted(dtype, 40_000, 40_000))).toBeGreaterThan(3);
    });
  }

  it('a worker scanning a file range: the same count and the same sha256 as the bytes in memory', async () => {
    const d = planted('BF16', 9 << 20, 7); // over two of the worker's 4 MiB reads
    d[(5 << 20) + 1] = 0xff;
    d[5 << 20] = 0x80; // -Inf in the second read
    const f = join(tmp.dir, 'scan.bin');
    writeFileSync(f, Buffer.concat([Buffer.alloc(3), d]));
    const pool = new HashPool(2);
    try {
      const info = { name: 't', dtype: 'BF16' as const, shape: [d.length / 2], nbytes: d.length, file: f, offset: 3 };
      const r = await pool.scan(undefined as never, info, { hash: true, nonFinite: true });
      expect(r.nonFinite).toBe(naiveNonFinite('BF16', d));
      expect(r.sha256).toBe(createHash('sha256').update(d).digest('hex'));
    } finally {
      await pool.close();
    }
  });
});

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
