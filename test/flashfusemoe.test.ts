// flashfusemoe has no save code of its own: a saved model is the user's torch.save(state_dict()),
// its MoELayer under the user's own module path, or one MoELayer's state dict at the top level.
// These tests write and read exactly that: --format pt (torch.save archives), --block-prefix, and
// --hf-config for a state dict without a config.json; every round trip is byte-identical and the
// outputs verify against transformers' reference outputs.
import { describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { bufferSource, writeCheckpoint } from '../src/store/safetensors/writer.js';
import { FIXTURES, runCli, tempDir } from './helpers.js';

const t = tempDir('moekit-ffm-');
const out = (n: string) => join(t.dir, n);
const MIXTRAL = join(FIXTURES, 'mixtral');
const REF = join(MIXTRAL, 'reference.safetensors');

/** name → [dtype, shape, bytes] of every tensor */
async function tensors(dir: string): Promise<Map<string, string>> {
  const s = await openStore(dir);
  const m = new Map<string, string>();
  for (const i of s.tensors.values()) m.set(i.name, `${i.dtype}${JSON.stringify(i.shape)}:${(await s.read(i)).toString('base64')}`);
  await s.close();
  return m;
}
const sameTensors = async (a: string, b: string) => expect([...(await tensors(a))].sort()).toEqual([...(await tensors(b))].sort());
const ok = (args: string[]) => {
  const r = runCli(args[0] === 'verify' ? args : [...args, '--no-fsync']);
  expect(r.code, r.stderr).toBe(0);
  return r;
};

describe('flashfusemoe as users save it', () => {
  it('--format pt writes torch.save archives (one, or shards with pytorch_model.bin.index.json) that read back byte for byte', async () => {
    const one = out('pt-one');
    ok(['convert', MIXTRAL, '--to', 'flashfusemoe', '--format', 'pt', '-o', one]);
    expect(readdirSync(one).filter((f) => f.endsWith('.bin'))).toEqual(['pytorch_model.bin']);
    // a torch.save zip: its records under the archive folder torch names after the file
    expect(readFileSync(join(one, 'pytorch_model.bin')).subarray(0, 4).toString('latin1')).toBe('PK\u0003\u0004');
    const many = out('pt-many');
    ok(['convert', MIXTRAL, '--to', 'flashfusemoe', '--format', 'pt', '--max-shard-size', '100kB', '-o', many]);
    expect(readdirSync(many)).toContain('pytorch_model.bin.index.json');
    expect(readdirSync(many).filter((f) => /^pytorch_model-\d{5}-of-\d{5}\.bin$/.test(f)).length).toBeGreaterThan(2);
    await sameTensors(one, many);
    const back = out('pt-back');
    ok(['convert', many, '--to', 'hf', '-o', back]);
    await sameTensors(back, MIXTRAL);
    expect(ok(['verify', one, '--reference', REF, '--cpu']).stdout).toMatch(/2 MoE block\(s\) forward-equal/);
  });

  it("--to flashfusemoe@<prefix> puts the MoE blocks under the user's module path; moekit.json records it, so the way back needs no flag; --block-prefix reads a user's own file", async () => {
    const dst = out('bp');
    ok(['convert', MIXTRAL, '--to', 'flashfusemoe@blocks.{n}.moe.', '-o', dst]);
    const names = [...(await tensors(dst)).keys()];
    expect(names).toEqual(expect.arrayContaining(['blocks.0.moe.gate.weight', 'blocks.0.moe.w_up', 'blocks.1.moe.w_down']));
    expect(names.some((n) => n.includes('block_sparse_moe'))).toBe(false);
    expect(JSON.parse(readFileSync(join(dst, 'moekit.json'), 'utf8')).layout).toBe('flashfusemoe@blocks.{n}.moe.');
    const back = out('bp-back');
    ok(['convert', dst, '--to', 'hf', '-o', back]);
    await sameTensors(back, MIXTRAL);
    // the user's own file: no moekit.json, no config.json; the flags say what it is
    const own = out('bp-own');
    mkdirSync(own);
    copyFileSync(join(dst, 'model.safetensors'), join(own, 'model.safetensors'));
    expect(runCli(['convert', own, '--to', 'hf', '-o', out('bp-own-x')]).stderr).toMatch(/no expert tensors .*--block-prefix/);
    const back2 = out('bp-own-back');
    ok(['convert', own, '--to', 'hf', '--block-prefix', 'blocks.{n}.moe.', '--hf-config', join(MIXTRAL, 'config.json'), '-o', back2]);
    await sameTensors(back2, MIXTRAL);
  });

  it("one MoELayer's state dict at the top level (--block-prefix ''), read and verified as the model's layer 0, converted to te", async () => {
    const all = await openStore(join(FIXTURES, 'qwen3_moe'));
    const prefixed = out('layer0-src');
    ok(['convert', join(FIXTURES, 'qwen3_moe'), '--to', 'flashfusemoe@b.{n}.', '-o', prefixed]);
    await all.close();
    const s = await openStore(prefixed);
    const entries = [];
    for (const i of s.tensors.values())
      if (i.name.startsWith('b.0.')) entries.push({ name: i.name.slice(4), dtype: i.dtype, shape: i.shape, source: bufferSource(await s.read(i)) });
    await s.close();
    const dict = out('layer0');
    mkdirSync(dict);
    await writeCheckpoint(dict, entries, { fsync: false });
    expect(entries.map((e) => e.name).sort()).toEqual(['gate.weight', 'w_down', 'w_up']);
    const flags = ['--block-prefix', '', '--hf-config', join(FIXTURES, 'qwen3_moe', 'config.json')];
    const v = ok(['verify', dict, '--reference', join(FIXTURES, 'qwen3_moe', 'reference.safetensors'), '--cpu', ...flags]);
    expect(v.stdout).toMatch(/^\s+0\s+moe\s.*pass/m);
    const te = out('layer0-te');
    ok(['convert', dict, '--to', 'te', ...flags, '-o', te]);
    expect([...(await tensors(te)).keys()].sort()).toEqual(expect.arrayContaining(['decoder.layers.0.mlp.router.weight']));
    // a whole model does not fit one block
    const r = runCli(['convert', MIXTRAL, '--to', 'flashfusemoe@', '-o', out('x')]);
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/block prefix '' has no \{n\}, so it holds one MoE block; the model has 2/);
    expect(runCli(['convert', MIXTRAL, '--to', 'te', '--block-prefix', 'a..b', '-o', out('y')]).stderr).toMatch(
      /a block prefix is dot-terminated module names/,
    );
    expect(runCli(['convert', MIXTRAL, '--to', 'te@a..b', '-o', out('y')]).stderr).toMatch(/unknown layout 'te@a\.\.b'/);
    expect(existsSync(out('x')) || existsSync(out('y'))).toBe(false);
  });

  it('EP ranks as torch.save files under the same keys, renumbered from 0; merge gives the model back', async () => {
    const sh = out('ep2');
    ok(['shard', join(FIXTURES, 'qwen3_moe'), '--ep', '2', '--to', 'flashfusemoe', '--format', 'pt', '-o', sh]);
    const r1 = await tensors(join(sh, 'ep1-of-2'));
    const r0 = await tensors(join(sh, 'ep0-of-2'));
    expect(readdirSync(join(sh, 'ep1-of-2'))).toContain('pytorch_model.bin');
    // each rank holds half the experts under the full model's keys; the router scores them all
    expect(r1.get('model.layers.0.mlp.w_up')!.split(':')[0]).toBe('F32[4,80,48]');
    expect(r1.get('model.layers.0.mlp.gate.weight')!.split(':')[0]).toBe('F32[8,48]');
    expect(r1.get('model.layers.0.mlp.w_up')).not.toBe(r0.get('model.layers.0.mlp.w_up'));
    const m = out('ep2-merged');
    ok(['merge', sh, '-o', m]);
    await sameTensors(m, join(FIXTURES, 'qwen3_moe'));
  });

  it("the user's own EP rank files (no manifest, no config.json) merge in rank order; files of another EP size or another model are refused", async () => {
    const sh = out('ep2');
    const own = out('own-ranks');
    mkdirSync(own);
    copyFileSync(join(sh, 'ep0-of-2', 'pytorch_model.bin'), join(own, 'rank0.pt'));
    copyFileSync(join(sh, 'ep1-of-2', 'pytorch_model.bin'), join(own, 'rank1.pt'));
    const cfg = ['--hf-config', join(FIXTURES, 'qwen3_moe', 'config.json')];
    const m = out('own-merged');
    ok(['merge', join(own, 'rank0.pt'), join(own, 'rank1.pt'), ...cfg, '--to', 'hf', '-o', m]);
    await sameTensors(m, join(FIXTURES, 'qwen3_moe'));
    expect(ok(['verify', m, '--reference', join(FIXTURES, 'qwen3_moe', 'reference.safetensors'), '--cpu']).stdout).toMatch(/forward-equal/);
    // round-robin ranks, told so
    const rr = out('ep2-rr');
    ok(['shard', join(FIXTURES, 'qwen3_moe'), '--ep', '2', '--placement', 'round-robin', '--to', 'flashfusemoe', '--format', 'pt', '-o', rr]);
    const mr = out('own-merged-rr');
    ok([
      'merge',
      join(rr, 'ep0-of-2', 'pytorch_model.bin'),
      join(rr, 'ep1-of-2', 'pytorch_model.bin'),
      ...cfg,
      '--placement',
      'round-robin',
      '--to',
      'hf',
      '-o',
      mr,
    ]);
    await sameTensors(mr, join(FIXTURES, 'qwen3_moe'));
    // two of an EP-4 sharding's four files: the count gives it away
    const ep4 = out('ep4');
    ok(['shard', join(FIXTURES, 'qwen3_moe'), '--ep', '4', '--to', 'flashfusemoe', '--format', 'pt', '-o', ep4]);
    mkdirSync(out('ep4-own'));
    for (const r of [0, 1]) copyFileSync(join(ep4, `ep${r}-of-4`, 'pytorch_model.bin'), join(out('ep4-own'), `rank${r}.pt`));
    const bad = runCli(['merge', join(out('ep4-own'), 'rank0.pt'), join(out('ep4-own'), 'rank1.pt'), ...cfg, '-o', out('bad')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(
      /2 rank files × 2 experts = 4, but the router scores 8: give every EP rank's file in rank order \(these hold experts of an EP 4 sharding\)/,
    );
    // a rank of another model: same names, other bytes outside the experts
    const sd = out('other-sd');
    mkdirSync(sd);
    const st = await openStore(join(sh, 'ep1-of-2'));
    const entries = [];
    for (const i of st.tensors.values()) {
      const b = Buffer.from(await st.read(i));
      if (i.name === 'model.norm.weight') b[0] = b[0]! ^ 1;
      entries.push({ name: i.name, dtype: i.dtype, shape: i.shape, source: bufferSource(b) });
    }
    await st.close();
    await writeCheckpoint(sd, entries, { fsync: false });
    const mix = runCli(['merge', join(own, 'rank0.pt'), sd, ...cfg, '-o', out('bad2')]);
    expect(mix.code).toBe(2);
    expect(mix.stderr).toMatch(/'model\.norm\.weight' differs between .*rank0\.pt and .*other-sd: tensors outside the experts are the same on every EP rank/);
    expect(existsSync(out('bad')) || existsSync(out('bad2'))).toBe(false);
  });
});
