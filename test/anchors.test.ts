// What can go wrong: the failures users met with other tools, each reproduced and shown refused
// or done right by moekit. Each test is named after the report it comes from (README "What can go
// wrong"). Megatron-LM #909 lives in convert.test.ts, KempnerForge #202 in torch.test.ts.
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeMegatron } from '../src/ops/megatron-write.js';
import { openStore } from '../src/store/registry.js';
import { FIXTURES, ROOT, runCli, tempDir } from './helpers.js';

const TORCH = join(ROOT, 'fixtures', 'torch');
const tmp = tempDir('moekit-anchors-');
afterAll(() => tmp.cleanup());
const out = (n: string) => join(tmp.dir, n);

describe('what can go wrong', () => {
  it('Megatron-LM #5844: an HF→Megatron conversion that drops every expert — moekit writes all of them, or refuses', async () => {
    const dst = out('5844');
    expect(runCli(['convert', join(FIXTURES, 'mixtral'), '--to', 'megatron', '--format', 'torch_dist', '-o', dst]).code).toBe(0);
    const back = await openStore(dst);
    const src = await openStore(join(FIXTURES, 'mixtral'));
    const experts = src.names().filter((n) => n.includes('.experts.'));
    expect(experts.length).toBe(2 * 8 * 3);
    for (const n of experts) expect(Buffer.compare(await back.read(n), await src.read(n)), n).toBe(0);
    await back.close();
    await src.close();
    // experts under names no layout knows are never silently left behind
    const odd = out('5844-odd');
    cpSync(join(FIXTURES, 'mixtral'), odd, { recursive: true });
    const st = readFileSync(join(odd, 'model.safetensors'));
    writeFileSync(
      join(odd, 'model.safetensors'),
      Buffer.from(st.toString('latin1').replaceAll('block_sparse_moe.experts.', 'block_sparse_moe.expertz.'), 'latin1'),
    );
    const r = runCli(['convert', odd, '--to', 'megatron', '--format', 'torch_dist', '-o', out('never')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/no tensor 'model\.layers\.0\.block_sparse_moe\.experts\.0\.w1\.weight'|no expert tensors/);
  });

  it('Megatron-LM #1836: only the first expert-TP shard saved — a missing ETP rank is refused, never merged as a thinner model', () => {
    const sh = out('1836');
    expect(runCli(['shard', join(FIXTURES, 'mixtral'), '--ep', '2', '--etp', '2', '-o', sh]).code).toBe(0);
    rmSync(join(sh, 'ep1-etp1'), { recursive: true });
    const r = runCli(['merge', sh, '-o', out('1836-merged')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/ep1-etp1/);
  });

  it('Megatron-Bridge #1716 / #1871: EP export and round trip — EP=2 Megatron checkpoints read back to HF exactly, and HF → EP=2 Megatron files → HF is byte-exact', () => {
    const twin = readFileSync(join(TORCH, 'mcore_torch_dist_plain', 'model.safetensors'));
    for (const src of ['mcore_torch_dist_plain_ep2', 'mcore_legacy_plain_ep2']) {
      const dst = out(`1716-${src}`);
      expect(runCli(['convert', join(TORCH, src), '--to', 'hf', '-o', dst]).code).toBe(0);
      expect(Buffer.compare(readFileSync(join(dst, 'model.safetensors')), twin), src).toBe(0);
    }
    const ep2 = out('1871-ep2');
    expect(
      runCli(['shard', join(TORCH, 'mcore_torch_dist_plain', 'model.safetensors'), '--ep', '2', '--to', 'megatron', '--format', 'torch', '-o', ep2]).code,
    ).toBe(0);
    expect(runCli(['convert', ep2, '--to', 'hf', '-o', out('1871-back')]).code).toBe(0);
    expect(Buffer.compare(readFileSync(join(out('1871-back'), 'model.safetensors')), twin)).toBe(0);
  });

  it('ROCm/ATOM #845, vLLM #52240: interleaved read as concatenated gate/up — recorded in moekit.json, and verify catches a checkpoint read in the wrong order', () => {
    const nemo = out('845');
    expect(runCli(['convert', join(FIXTURES, 'qwen3_moe'), '--to', 'nemo', '--gate-up', 'interleaved', '-o', nemo]).code).toBe(0);
    expect(JSON.parse(readFileSync(join(nemo, 'moekit.json'), 'utf8')).gateUp).toBe('interleaved');
    const ref = join(FIXTURES, 'qwen3_moe', 'reference.safetensors');
    expect(runCli(['verify', nemo, '--reference', ref, '--cpu']).code).toBe(0);
    // the same tensors without the record of their order: read with the layout's default, the block is wrong, and verify says so
    rmSync(join(nemo, 'moekit.json'));
    const v = runCli(['verify', nemo, '--reference', ref, '--cpu']);
    expect(v.code).toBe(1);
    expect(v.stdout).toMatch(/FAIL|fail/);
  });

  it('Megatron-LM #7576: block-interleaved fc1 (moe_mlp_glu_interleave_size) is refused, not read as [gate; up] halves', async () => {
    const dst = out('7576');
    await writeMegatron(join(TORCH, 'mcore_torch_dist_plain', 'model.safetensors'), dst, { fsync: false, extraArgs: { moe_mlp_glu_interleave_size: 8 } });
    rmSync(join(dst, 'config.json'));
    const r = runCli(['convert', dst, '--to', 'hf', '-o', out('never')]);
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/gate\/up block-interleaved \(moe_mlp_glu_interleave_size 8\)/);
  });

  it('KempnerForge #202: rank files of one EP size loaded as another — a rank from a 4-way sharding inside a 2-way one is refused', () => {
    const ep2 = out('202-ep2');
    const ep4 = out('202-ep4');
    expect(runCli(['shard', join(FIXTURES, 'mixtral'), '--ep', '2', '-o', ep2]).code).toBe(0);
    expect(runCli(['shard', join(FIXTURES, 'mixtral'), '--ep', '4', '-o', ep4]).code).toBe(0);
    rmSync(join(ep2, 'ep1-of-2'), { recursive: true });
    cpSync(join(ep4, 'ep1-of-4'), join(ep2, 'ep1-of-2'), { recursive: true });
    const r = runCli(['merge', ep2, '-o', out('202-merged')]);
    expect(r.code).toBeGreaterThan(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('NeMo Automodel PR #2595 / #2778: MTP experts exported split where the checkpoint groups them (and grouped where it splits) — moekit never re-forms them: both forms are refused in one line, nothing written', async () => {
    const { writeCheckpoint, bufferSource } = await import('../src/store/safetensors/writer.js');
    const src = await openStore(join(FIXTURES, 'qwen3_5_moe'));
    const read = async (n: string) => Buffer.from(await src.read(n));
    const base = [];
    for (const t of src.tensors.values()) base.push({ name: t.name, dtype: t.dtype, shape: t.shape, source: bufferSource(await read(t.name)) });
    // Qwen3.6 stores the MTP block's experts grouped (mtp.layers.0.mlp.experts.gate_up_proj), Qwen3.5 per expert
    const p = 'model.layers.1.mlp.';
    const router = { name: 'mtp.layers.0.mlp.gate.weight', dtype: 'F32' as const, shape: [8, 48], source: bufferSource(await read(`${p}gate.weight`)) };
    const split = [router];
    for (let e = 0; e < 8; e++)
      for (const w of ['gate_proj', 'up_proj', 'down_proj']) {
        const info = src.info(`${p}experts.${e}.${w}.weight`);
        split.push({ name: `mtp.layers.0.mlp.experts.${e}.${w}.weight`, dtype: 'F32', shape: info.shape, source: bufferSource(await read(info.name)) });
      }
    const grouped = [
      router,
      { name: 'mtp.layers.0.mlp.experts.gate_up_proj', dtype: 'F32' as const, shape: [8, 80, 48], source: bufferSource(Buffer.alloc(8 * 80 * 48 * 4)) },
      { name: 'mtp.layers.0.mlp.experts.down_proj', dtype: 'F32' as const, shape: [8, 48, 40], source: bufferSource(Buffer.alloc(8 * 48 * 40 * 4)) },
    ];
    for (const [form, mtp] of [
      ['split', split],
      ['grouped', grouped],
    ] as const) {
      const dir = out(`2595-${form}`);
      await writeCheckpoint(dir, [...base, ...mtp], { fsync: false });
      cpSync(join(FIXTURES, 'qwen3_5_moe', 'config.json'), join(dir, 'config.json'));
      const dst = out(`2595-${form}-nemo`);
      const r = runCli(['convert', dir, '--to', 'nemo', '-o', dst]);
      expect(r.code, form).not.toBe(0);
      expect(r.stderr).toMatch(/^moekit: error: .*name root 'mtp\.'.*multi-token-prediction MoE blocks under mtp\. are not converted yet\)\n$/);
      expect(() => readFileSync(join(dst, 'moekit.json'))).toThrow();
    }
    await src.close();
  });
});
