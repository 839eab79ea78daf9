import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { openStore } from '../src/store/registry.js';
import { writeCheckpoint, bufferSource } from '../src/store/safetensors/writer.js';
import { main } from '../src/cli/index.js';
import { parseLayers, verify } from '../src/ops/verify.js';

const FIX = new URL('../fixtures/hf/', import.meta.url).pathname;
const tmp: string[] = [];
afterAll(async () => {
  for (const d of tmp) await rm(d, { recursive: true, force: true });
});

/** Copy a fixture through moekit's writer, letting `edit` rename, replace or drop tensors. */
async function corruptedCopy(name: string, edit: (tensors: Map<string, Buffer>) => void): Promise<string> {
  const src = await openStore(join(FIX, name));
  const data = new Map<string, Buffer>();
  for (const t of src.tensors.values()) data.set(t.name, Buffer.from(await src.read(t)));
  const before = new Map([...data].map(([k, v]) => [k, Buffer.from(v)]));
  edit(data);
  const changed = [...before.keys()].some((k) => !data.has(k) || !data.get(k)!.equals(before.get(k)!));
  expect(changed, 'the corruption must change the checkpoint').toBe(true);
  const dir = await mkdtemp(join(tmpdir(), `moekit-verify-${name}-`));
  tmp.push(dir);
  await writeCheckpoint(
    dir,
    [...data].map(([n, buf]) => ({ name: n, dtype: src.info(n).dtype, shape: src.info(n).shape, source: bufferSource(buf) })),
    { fsync: false },
  );
  await copyFile(join(FIX, name, 'config.json'), join(dir, 'config.json'));
  await src.close();
  return dir;
}

const swap = (m: Map<string, Buffer>, a: string, b: string) => {
  const t = m.get(a)!;
  m.set(a, m.get(b)!);
  m.set(b, t);
};

/** Run the CLI in-process; returns exit code and stdout. */
async function cli(...args: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const so = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
    out += String(s);
    return true;
  });
  const se = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  process.exitCode = 0;
  try {
    const code = await main(['node', 'moekit', ...args]);
    return { code, out };
  } finally {
    so.mockRestore();
    se.mockRestore();
    process.exitCode = 0;
  }
}
afterEach(() => {
  process.exitCode = 0;
});

describe('verify passes on every fixture with a reference (WebGPU)', () => {
  for (const [name, refName] of [
    ['mixtral', 'mixtral'],
    ['qwen2_moe', 'qwen2_moe'],
    ['qwen3_moe', 'qwen3_moe'],
    ['deepseek_v3', 'deepseek_v3'],
    ['gpt_oss', 'gpt_oss'],
    ['llama_dense', 'llama_dense'],
    ['qwen3_dense', 'qwen3_dense'],
    ['mixtral_bf16', 'mixtral'],
    ['deepseek_v3_bf16', 'deepseek_v3'],
    ['granitemoe', 'granitemoe'],
    ['llama4_text', 'llama4_text'],
    ['phimoe', 'phimoe'],
  ] as const) {
    it(`${name} against ${refName}/reference.safetensors`, async () => {
      const r = await verify(join(FIX, name), undefined, { reference: join(FIX, refName, 'reference.safetensors') });
      expect(r.pass).toBe(true);
      expect(r.rtol).toBe(name.endsWith('_bf16') ? 2e-2 : 1e-4);
      for (const l of r.layers) expect(l.maxRel).toBeLessThanOrEqual(name.endsWith('_bf16') ? 2e-2 : 1e-4);
      if (name.endsWith('_bf16')) expect(Math.max(...r.layers.map((l) => l.maxRel))).toBeGreaterThan(1e-4); // really 16-bit
    });
  }
  it('two checkpoints: f32 vs its bf16 twin on random tokens pass at bf16 tolerance, fail at f32 tolerance', async () => {
    const ok = await verify(join(FIX, 'mixtral'), join(FIX, 'mixtral_bf16'), { tokens: 16, seed: 3 });
    expect(ok.pass).toBe(true);
    expect(ok.tokens).toBe(16);
    const strict = await verify(join(FIX, 'mixtral'), join(FIX, 'mixtral_bf16'), { tokens: 16, seed: 3, rtol: 1e-4 });
    expect(strict.pass).toBe(false);
  });
});

describe('verify FAILS on broken conversions (CLI exit status and failing layer)', () => {
  const cases: [string, string, string, number, (m: Map<string, Buffer>) => void][] = [
    [
      'gate and up swapped in one expert',
      'mixtral',
      'mixtral',
      0,
      (m) => swap(m, 'model.layers.0.block_sparse_moe.experts.2.w1.weight', 'model.layers.0.block_sparse_moe.experts.2.w3.weight'),
    ],
    [
      'two experts permuted',
      'qwen3_moe',
      'qwen3_moe',
      1,
      (m) => {
        for (const p of ['gate_proj', 'up_proj', 'down_proj']) swap(m, `model.layers.1.mlp.experts.1.${p}.weight`, `model.layers.1.mlp.experts.5.${p}.weight`);
      },
    ],
    [
      'a router row changed',
      'deepseek_v3',
      'deepseek_v3',
      1,
      (m) => {
        const g = m.get('model.layers.1.mlp.gate.weight')!;
        const f = new Float32Array(g.buffer, g.byteOffset, g.byteLength / 4);
        const H = 48;
        for (let k = 0; k < H; k++) f[3 * H + k] = f[7 * H + ((k + 5) % H)]!; // row 3 ← a shuffled row 7
      },
    ],
    [
      'shared expert dropped',
      'qwen2_moe',
      'qwen2_moe',
      0,
      (m) => {
        for (const k of [...m.keys()]) if (k.startsWith('model.layers.0.mlp.shared_expert.')) m.delete(k);
      },
    ],
    [
      'DeepSeek shared experts dropped (bf16)',
      'deepseek_v3_bf16',
      'deepseek_v3',
      2,
      (m) => {
        for (const k of [...m.keys()]) if (k.startsWith('model.layers.2.mlp.shared_experts.')) m.delete(k);
      },
    ],
  ];
  for (const [what, name, refName, layer, edit] of cases) {
    it(what, async () => {
      const dir = await corruptedCopy(name, edit);
      const ref = join(FIX, refName, 'reference.safetensors');
      const { code, out } = await cli('verify', dir, '--reference', ref, '--json');
      expect(code).toBe(1);
      const report = JSON.parse(out);
      expect(report.pass).toBe(false);
      const bad = report.layers.filter((l: { pass: boolean }) => !l.pass).map((l: { layer: number }) => l.layer);
      expect(bad).toEqual([layer]);
      // the untouched source passes the same check
      const good = await cli('verify', join(FIX, name), '--reference', ref, '--layers', String(layer));
      // the other layers were left out by --layers: nothing differs, but not everything was checked (exit 3)
      expect(good.code).toBe(3);
      expect(good.out).toMatch(/1 MoE block\(s\) forward-equal, .* layer\(s\) unchecked/);
      expect(good.out).toMatch(/not checked: layer\(s\) .* \(left out by --layers\)/);
    });
  }
  it('also fails comparing the source and a corrupted copy directly (<a> <b>), with the CPU reference', async () => {
    const dir = await corruptedCopy('mixtral', (m) =>
      swap(m, 'model.layers.1.block_sparse_moe.experts.0.w2.weight', 'model.layers.1.block_sparse_moe.experts.4.w2.weight'),
    );
    const { code, out } = await cli('verify', join(FIX, 'mixtral'), dir, '--cpu', '--tokens', '40');
    expect(code).toBe(1);
    expect(out).toMatch(/\s1\s+moe.*FAIL/);
    expect(out).toMatch(/\s0\s+moe.*pass/);
  });
});

describe('HF Granite-MoE and Llama4 read through the layout specs (the names live in converters/ only)', () => {
  it('granitemoe: every layer is an MoE block routed by softmax over the top-k logits', async () => {
    const r = await verify(join(FIX, 'granitemoe'), undefined, { reference: join(FIX, 'granitemoe', 'reference.safetensors'), cpu: true });
    expect(r.layers.map((l) => [l.layer, l.kind])).toEqual([
      [0, 'moe'],
      [1, 'moe'],
      [2, 'moe'],
    ]);
    expect(r.pass).toBe(true);
  });
  it('llama4_text: dense feed_forward layers 0 and 2, MoE layer 1 with sigmoid-scaled input and a shared expert', async () => {
    const r = await verify(join(FIX, 'llama4_text'), undefined, { reference: join(FIX, 'llama4_text', 'reference.safetensors'), cpu: true });
    expect(r.layers.map((l) => [l.layer, l.kind])).toEqual([
      [0, 'dense'],
      [1, 'moe'],
      [2, 'dense'],
    ]);
    expect(r.pass).toBe(true);
  });
  it('a Llama4 router read as softmax routing fails: the routing rule is really checked', async () => {
    const { layerSource } = await import('../src/forward/ir-loader.js');
    const { forwardCpu, compare } = await import('../src/forward/cpu.js');
    const { toFloat32 } = await import('../src/engine/cast.js');
    const ck = await openStore(join(FIX, 'llama4_text'));
    const ref = await openStore(join(FIX, 'llama4_text', 'reference.safetensors'));
    const l = await (await layerSource(ck, (await ck.config())!)).load(1);
    const x = toFloat32(await ref.read('input'), 'F32');
    const want = toFloat32(await ref.read('layers.1.output'), 'F32');
    expect(compare(forwardCpu(l.weights, l.facts, x, 24).out, want).maxRel).toBeLessThan(1e-5);
    const wrong = { ...l.facts, routing: { ...l.facts.routing, scoreFunc: 'softmax' as const, normTopkProb: true } };
    expect(compare(forwardCpu(l.weights, wrong, x, 24).out, want).maxRel).toBeGreaterThan(1e-2);
    await ck.close();
    await ref.close();
  });
});

describe('verify input errors are one line', () => {
  it('needs <b> or --reference', async () => {
    await expect(verify(join(FIX, 'mixtral'), undefined, {})).rejects.toThrow(/second checkpoint <b> or --reference/);
  });
  it('quantized checkpoints are read dequantized (MXFP4 against its reference)', async () => {
    const r = await verify(join(FIX, 'gpt_oss_mxfp4'), undefined, { reference: join(FIX, 'gpt_oss_mxfp4', 'reference.safetensors'), cpu: true });
    expect(r.pass).toBe(true);
  });
  it('--layers parsing', () => {
    expect(parseLayers('1,3-5')).toEqual([1, 3, 4, 5]);
    expect(() => parseLayers('2-1')).toThrow(/backwards/);
    expect(() => parseLayers('a')).toThrow(/not a layer/);
  });
  it('unknown layer', async () => {
    await expect(verify(join(FIX, 'mixtral'), undefined, { reference: join(FIX, 'mixtral', 'reference.safetensors'), layers: [7], cpu: true })).rejects.toThrow(
      /layer\(s\) 7 not available/,
    );
  });
});
