/**
 * verify on converted checkpoints: every layout moekit writes is read back through the canonical
 * IR and must reproduce transformers' reference outputs (WebGPU forward), and a corruption that only
 * exists in the converted layout must be caught.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { FIXTURES, cli, tempDir } from './convert-helpers.js';
import { verify } from '../src/ops/verify.js';
import { openStore } from '../src/store/registry.js';
import { writeCheckpoint, bufferSource } from '../src/store/safetensors/writer.js';
import { copyFileSync } from 'node:fs';

const tmp = tempDir('moekit-vlayouts-');
afterAll(() => tmp.cleanup());

const CASES: [string, string[]][] = [
  ['mixtral', ['te', 'nemo', 'megatron', 'megatron-grouped', 'flashfusemoe']],
  ['deepseek_v3', ['te', 'nemo', 'megatron', 'megatron-grouped']],
  ['qwen2_moe', ['te', 'nemo', 'megatron']],
  ['gpt_oss', ['te', 'nemo', 'megatron']],
  ['mixtral_bf16', ['te', 'nemo']],
];

async function converted(fixture: string, layout: string, extra: string[] = []): Promise<string> {
  const out = join(tmp.dir, `${fixture}-${layout}${extra.join('')}`);
  if (!existsSync(out)) {
    const r = await cli(['convert', join(FIXTURES, fixture), '--to', layout, ...extra, '-o', out]);
    expect(r.code, r.stderr).toBe(0);
  }
  return out;
}

describe('verify reads every layout through the IR and matches transformers', () => {
  for (const [fixture, layouts] of CASES) {
    for (const layout of layouts) {
      it(`${fixture} → ${layout}`, async () => {
        const dir = await converted(fixture, layout);
        const refFixture = fixture.replace(/_bf16$/, '');
        const r = await verify(dir, undefined, { reference: join(FIXTURES, refFixture, 'reference.safetensors') });
        expect(r.backend).toBe('webgpu');
        expect(r.layers.length).toBeGreaterThan(0);
        for (const l of r.layers) expect(l.pass, `layer ${l.layer}: rel ${l.maxRel}`).toBe(true);
        const limit = fixture.endsWith('_bf16') ? 2e-2 : 1e-4;
        expect(Math.max(...r.layers.map((l) => l.maxRel))).toBeLessThan(limit);
      });
    }
  }

  it('verify <hf> <te> compares two layouts on the same random tokens', async () => {
    const te = await converted('gpt_oss', 'te');
    const r = await verify(join(FIXTURES, 'gpt_oss'), te, { tokens: 40, seed: 7 });
    expect(r.pass).toBe(true);
    expect(Math.max(...r.layers.map((l) => l.maxAbs))).toBeLessThan(1e-5);
  });

  it('interleaved NeMo output verifies too', async () => {
    const dir = await converted('qwen3_moe', 'nemo', ['--gate-up', 'interleaved']);
    const r = await verify(dir, undefined, { reference: join(FIXTURES, 'qwen3_moe', 'reference.safetensors') });
    expect(r.pass).toBe(true);
  });

  it('gate and up swapped inside one TE linear_fc1 is caught (layer fails, exit 1)', async () => {
    const te = await converted('mixtral', 'te');
    const bad = join(tmp.dir, 'mixtral-te-swapped');
    const ck = await openStore(te);
    const victim = 'decoder.layers.1.mlp.experts.linear_fc1.weight5';
    const entries = [];
    for (const t of ck.tensors.values()) {
      let bytes = Buffer.from(await ck.read(t));
      if (t.name === victim) {
        const half = bytes.length / 2;
        bytes = Buffer.concat([bytes.subarray(half), bytes.subarray(0, half)]);
      }
      entries.push({ name: t.name, dtype: t.dtype, shape: t.shape, source: bufferSource(bytes) });
    }
    expect(ck.has(victim)).toBe(true);
    await writeCheckpoint(bad, entries);
    await ck.close();
    for (const f of ['config.json', 'moekit.json']) copyFileSync(join(te, f), join(bad, f));
    const r = await cli(['verify', bad, '--reference', join(FIXTURES, 'mixtral', 'reference.safetensors'), '--json']);
    expect(r.code).toBe(1);
    const j = JSON.parse(r.stdout);
    expect(j.layers.map((l: { layer: number; pass: boolean }) => [l.layer, l.pass])).toEqual([
      [0, true],
      [1, false],
    ]);
  });
});
