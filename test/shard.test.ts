/**
 * moekit shard / merge / reshard: every float MoE fixture at EP ∈ {1,2,4,8} × ETP ∈ {1,2}:
 * shard → merge and shard → reshard → merge are byte-identical to the source per tensor; verify of
 * a sharded checkpoint passes against the fixture's transformers reference; job-array `--rank` runs
 * equal a one-shot shard; local ids hold the right source bytes; refusals are one-line errors.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync, openSync, readSync, writeSync, fstatSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { shard, reshard } from '../src/ops/shard/shard.js';
import { merge } from '../src/ops/shard/merge.js';
import { verify } from '../src/ops/verify.js';
import type { ShardManifest } from '../src/ops/shard/manifest.js';
import { FIXTURES, dump, diff, tempDir, cli, type Dumped } from './convert-helpers.js';

const tmp = tempDir('moekit-shard-');
afterAll(() => tmp.cleanup());
let seq = 0;
const out = (tag: string) => join(tmp.dir, `${seq++}-${tag}`);

/** Float MoE fixtures and their expert counts (read from config.json). */
const FAMILIES = ['deepseek_v3', 'deepseek_v3_bf16', 'gpt_oss', 'mixtral', 'mixtral_bf16', 'qwen2_moe', 'qwen3_moe'];
const numExperts = (f: string): number => {
  const c = JSON.parse(readFileSync(join(FIXTURES, f, 'config.json'), 'utf8')) as Record<string, number>;
  return c.num_local_experts ?? c.num_experts ?? c.n_routed_experts!;
};
const fast = { fsync: false } as const;

const srcDumps = new Map<string, Map<string, Dumped>>();
async function srcDump(f: string): Promise<Map<string, Dumped>> {
  let d = srcDumps.get(f);
  if (!d) srcDumps.set(f, (d = await dump(join(FIXTURES, f))));
  return d;
}
const manifestOf = (dir: string) => JSON.parse(readFileSync(join(dir, 'moekit-manifest.json'), 'utf8')) as ShardManifest;

describe('shard → merge and shard → reshard → merge are byte-identical to the source', () => {
  for (const f of FAMILIES) {
    it(f, async () => {
      const E = numExperts(f);
      const src = await srcDump(f);
      for (const ep of [1, 2, 4, 8].filter((n) => E % n === 0)) {
        for (const etp of [1, 2]) {
          const s = out(`${f}-ep${ep}-etp${etp}`);
          await shard(join(FIXTURES, f), s, { ep, etp, ...fast });
          const m = manifestOf(s);
          expect(m.ranks.map((r) => r.dir)).toHaveLength(ep * etp);
          // every rank holds E/ep experts with local ids
          for (const r of m.ranks) expect(r.experts).toHaveLength(E / ep);
          const merged = out('merged');
          await merge(s, merged, fast);
          expect(diff(src, await dump(merged)), `${f} ep ${ep} etp ${etp}`).toEqual([]);
          // reshard to another EP and the other ETP, then merge
          const M = ep === 8 ? 2 : ep * 2 <= E ? ep * 2 : 1;
          const r = out('reshard');
          await reshard(s, r, { ep: M, etp: 3 - etp, ...fast });
          expect(manifestOf(r).ranks).toHaveLength(M * (3 - etp));
          const merged2 = out('merged2');
          await merge(r, merged2, fast);
          expect(diff(src, await dump(merged2)), `${f} ep ${ep} etp ${etp} → ep ${M} etp ${3 - etp}`).toEqual([]);
          for (const d of [s, merged, r, merged2]) rmSync(d, { recursive: true, force: true });
        }
      }
    });
  }

  it('round-robin placement, rank-0 dense and another layout (te) round-trip too', async () => {
    const src = await srcDump('mixtral');
    const s = out('rr');
    await shard(join(FIXTURES, 'mixtral'), s, { ep: 4, etp: 2, placement: 'round-robin', dense: 'rank0', to: 'te', ...fast });
    const m = manifestOf(s);
    expect(m.layout).toBe('te');
    expect(m.ranks.find((r) => r.dir === 'ep1-etp0')!.experts).toEqual([1, 5]);
    // non-expert tensors only on rank 0
    const embed = 'model.embed_tokens.weight';
    expect(m.ranks.filter((r) => embed in r.tensors).map((r) => r.index)).toEqual([0]);
    const merged = out('rr-merged');
    await merge(s, merged, fast);
    expect(diff(src, await dump(merged))).toEqual([]);
    const r = out('rr-reshard');
    await reshard(s, r, { ep: 2, ...fast });
    const merged2 = out('rr-merged2');
    await merge(r, merged2, fast);
    expect(diff(src, await dump(merged2))).toEqual([]);
  });
});

describe('local expert ids hold the source experts', () => {
  it('contiguous EP 2: rank 1 holds global experts E/2.. as local 0..', async () => {
    const src = await srcDump('mixtral');
    const s = out('local');
    await shard(join(FIXTURES, 'mixtral'), s, { ep: 2, ...fast });
    const r1 = await dump(join(s, 'ep1-of-2'));
    const p = 'model.layers.1.block_sparse_moe.experts';
    for (let local = 0; local < 4; local++) {
      for (const w of ['w1', 'w2', 'w3']) {
        expect(r1.get(`${p}.${local}.${w}.weight`)!.bytes.equals(src.get(`${p}.${4 + local}.${w}.weight`)!.bytes), `local ${local} ${w}`).toBe(true);
      }
    }
    expect(r1.has(`${p}.4.w1.weight`)).toBe(false);
    // the router keeps all E rows on every rank
    expect(r1.get('model.layers.1.block_sparse_moe.gate.weight')!.shape).toEqual([8, 48]);
    const mk = JSON.parse(readFileSync(join(s, 'ep1-of-2', 'moekit.json'), 'utf8')) as { layers: { globalExperts: number[] }[] };
    expect(mk.layers[0]!.globalExperts).toEqual([4, 5, 6, 7]);
  });

  it('expert-TP: gate/up rows and down columns split, down bias on ETP rank 0 only (GPT-OSS)', async () => {
    const src = await srcDump('gpt_oss');
    const s = out('etp');
    await shard(join(FIXTURES, 'gpt_oss'), s, { ep: 2, etp: 2, ...fast });
    const p = 'model.layers.0.mlp.experts';
    const full = src.get(`${p}.down_proj`)!; // [E, I, H] stored as x·W: I rows
    const [E, I, H] = full.shape as [number, number, number];
    for (const t of [0, 1]) {
      const r = await dump(join(s, `ep1-etp${t}`));
      const part = r.get(`${p}.down_proj`)!;
      expect(part.shape).toEqual([E / 2, I / 2, H]);
      // local expert 0 of EP rank 1 = global expert E/2; its slice t = rows [t·I/2, (t+1)·I/2)
      const want = full.bytes.subarray(((E / 2) * I + (t * I) / 2) * H * 4, ((E / 2) * I + ((t + 1) * I) / 2) * H * 4);
      expect(part.bytes.subarray(0, (I / 2) * H * 4).equals(want)).toBe(true);
      expect(r.has(`${p}.down_proj_bias`)).toBe(t === 0);
      expect(r.get(`${p}.gate_up_proj_bias`)!.shape).toEqual([E / 2, I]);
    }
  });
});

describe('--rank: a job array equals a one-shot shard', () => {
  it('each rank written by its own run, then merged', async () => {
    const f = 'qwen2_moe';
    const one = out('oneshot');
    await shard(join(FIXTURES, f), one, { ep: 2, etp: 2, ...fast });
    const arr = out('array');
    for (const rank of [3, 1, 0, 2]) {
      const r = await cli(['shard', join(FIXTURES, f), '--ep', '2', '--etp', '2', '--rank', String(rank), '--json', '-o', arr]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout).peakRssMB).toBeGreaterThan(0);
    }
    const a = manifestOf(one);
    const b = manifestOf(arr);
    expect(b.ranks.every((r) => Object.values(r.tensors).every((t) => t.sha256 === undefined))).toBe(true);
    for (const r of a.ranks) {
      expect(diff(await dump(join(one, r.dir)), await dump(join(arr, r.dir))), r.dir).toEqual([]);
      const own = JSON.parse(readFileSync(join(arr, r.dir, 'rank-manifest.json'), 'utf8')) as { tensors: Record<string, { sha256: string }> };
      for (const [n, t] of Object.entries(r.tensors)) expect(own.tensors[n]!.sha256, n).toBe(t.sha256);
    }
    const merged = out('array-merged');
    await merge(arr, merged, fast);
    expect(diff(await srcDump(f), await dump(merged))).toEqual([]);
    // a job with a different plan into the same folder is refused
    const bad = await cli(['shard', join(FIXTURES, f), '--ep', '4', '--rank', '0', '-o', arr]);
    expect(bad.code).toBe(5);
    expect(bad.stderr).toMatch(/^moekit: error: .*describes a different sharding.*\n$/);
  });
});

describe('verify accepts a sharded checkpoint', () => {
  for (const f of ['deepseek_v3', 'gpt_oss', 'mixtral', 'qwen2_moe', 'qwen3_moe']) {
    it(`${f} (CPU forward, EP 2 × ETP 2)`, async () => {
      const s = out(`verify-${f}`);
      await shard(join(FIXTURES, f), s, { ep: 2, etp: 2, ...fast });
      const rep = await verify(s, undefined, { reference: join(FIXTURES, f, 'reference.safetensors'), cpu: true });
      expect(rep.layers.length).toBeGreaterThan(0);
      expect(rep.layers.filter((l) => l.kind === 'moe').every((l) => l.experts === numExperts(f))).toBe(true);
      expect(rep.pass, JSON.stringify(rep.layers)).toBe(true);
    });
  }

  it('WebGPU forward through the CLI, round-robin EP 4 against the reference', async () => {
    const s = out('verify-gpu');
    await shard(join(FIXTURES, 'qwen3_moe'), s, { ep: 4, placement: 'round-robin', ...fast });
    const r = await cli(['verify', s, '--reference', join(FIXTURES, 'qwen3_moe', 'reference.safetensors'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { backend: string; pass: boolean };
    expect(rep.backend).toBe('webgpu');
    expect(rep.pass).toBe(true);
  });

  it('a sharded checkpoint whose experts were swapped between ranks fails verify', async () => {
    const s = out('verify-swap');
    await shard(join(FIXTURES, 'mixtral'), s, { ep: 2, ...fast });
    // a consistent but wrong manifest: rank 0 claims experts 4..7 and rank 1 experts 0..3
    const m = manifestOf(s);
    [m.ranks[0]!.experts, m.ranks[1]!.experts] = [m.ranks[1]!.experts, m.ranks[0]!.experts];
    for (const r of m.ranks) {
      const mk = JSON.parse(readFileSync(join(s, r.dir, 'moekit.json'), 'utf8')) as { layers: { globalExperts: number[] }[]; digest?: string };
      for (const l of mk.layers) l.globalExperts = r.experts;
      delete mk.digest;
      writeFileSync(join(s, r.dir, 'moekit.json'), JSON.stringify(mk));
      const rm = JSON.parse(readFileSync(join(s, r.dir, 'rank-manifest.json'), 'utf8')) as { experts: number[] };
      rm.experts = r.experts;
      writeFileSync(join(s, r.dir, 'rank-manifest.json'), JSON.stringify(rm));
    }
    delete (m as { digest?: string }).digest;
    writeFileSync(join(s, 'moekit-manifest.json'), JSON.stringify(m));
    const rep = await verify(s, undefined, { reference: join(FIXTURES, 'mixtral', 'reference.safetensors'), cpu: true });
    expect(rep.pass).toBe(false);
  });
});

describe('refusals: one-line errors, nothing written', () => {
  const oneLine = (r: { code: number; stderr: string }, re: RegExp) => {
    expect([2, 4, 5, 6], r.stderr).toContain(r.code);
    expect(r.stderr).toMatch(/^moekit: error: [^\n]+\n$/);
    expect(r.stderr).toMatch(re);
  };
  const fresh = async () => {
    const s = out('refuse');
    await shard(join(FIXTURES, 'mixtral'), s, { ep: 4, ...fast });
    return s;
  };

  it('a deleted rank folder', async () => {
    const s = await fresh();
    rmSync(join(s, 'ep2-of-4'), { recursive: true });
    const dst = out('x');
    oneLine(await cli(['merge', s, '-o', dst]), /missing rank ep2-of-4.*--rank 2/);
    expect(existsSync(dst)).toBe(false);
    oneLine(await cli(['reshard', s, '--ep', '2', '-o', dst]), /missing rank ep2-of-4/);
    expect(existsSync(dst)).toBe(false);
  });

  it('one flipped byte in a rank file', async () => {
    const s = await fresh();
    const file = join(s, 'ep1-of-4', 'model.safetensors');
    const fd = openSync(file, 'r+');
    const pos = fstatSync(fd).size - 5; // inside the last tensor's data
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, pos);
    b[0] = b[0]! ^ 0x01;
    writeSync(fd, b, 0, 1, pos);
    closeSync(fd);
    const dst = out('x');
    oneLine(await cli(['merge', s, '-o', dst]), /checksum mismatch in rank ep1-of-4: tensor '.+' .*sha256/);
    expect(existsSync(dst)).toBe(false);
    expect(readdirSync(tmp.dir).some((n) => n.includes('moekit-tmp'))).toBe(false);
    oneLine(await cli(['reshard', s, '--ep', '2', '-o', dst]), /checksum mismatch/);
    expect(existsSync(dst)).toBe(false);
  });

  it('a manifest with two ranks claiming the same expert', async () => {
    const s = await fresh();
    const m = manifestOf(s);
    m.ranks[1]!.experts = [...m.ranks[0]!.experts];
    writeFileSync(join(s, 'moekit-manifest.json'), JSON.stringify(m));
    oneLine(await cli(['merge', s, '-o', out('x')]), /moekit-manifest\.json: digest does not match the file: the manifest was edited/);
    delete (m as { digest?: string }).digest; // vouch for the edit: the deeper checks still refuse it
    writeFileSync(join(s, 'moekit-manifest.json'), JSON.stringify(m));
    const dst = out('x');
    oneLine(await cli(['merge', s, '-o', dst]), /duplicate expert 0: claimed by both ep0-of-4 and ep1-of-4/);
    expect(existsSync(dst)).toBe(false);
    oneLine(await cli(['verify', s, '--cpu', '--reference', join(FIXTURES, 'mixtral', 'reference.safetensors')]), /duplicate expert 0/);
  });

  it('invalid EP/ETP sizes name the fix', async () => {
    const dst = out('x');
    oneLine(
      await cli(['shard', join(FIXTURES, 'mixtral'), '--ep', '3', '-o', dst]),
      /8 experts do not divide evenly over --ep 3.*--ep 2\|4\|8 or --placement round-robin/,
    );
    oneLine(
      await cli(['shard', join(FIXTURES, 'mixtral'), '--ep', '2', '--etp', '3', '-o', dst]),
      /intermediate size 40 does not split into --etp 3 slices; use --etp 1\|2\|4\|5\|8/,
    );
    oneLine(await cli(['shard', join(FIXTURES, 'deepseek_v3_fp8'), '--ep', '2', '--etp', '2', '-o', dst]), /\(192 \/ 2\) % 128.*use --etp 1/);
    oneLine(
      await cli(['shard', join(FIXTURES, 'deepseek_v3_fp8'), '--ep', '2', '--to', 'te', '-o', dst]),
      /intermediate size 192 is not a multiple of the 128-row scale block.*moekit dequant .* --to te/,
    );
    oneLine(await cli(['shard', join(FIXTURES, 'mixtral'), '--ep', '2', '--rank', '2', '-o', dst]), /--rank 2 is out of range.*ranks 0\.\.1/);
    expect(existsSync(dst)).toBe(false);
    // round-robin places an uneven E explicitly
    const s = out('rr3');
    await shard(join(FIXTURES, 'mixtral'), s, { ep: 3, placement: 'round-robin', ...fast });
    expect(manifestOf(s).ranks.map((r) => r.experts)).toEqual([
      [0, 3, 6],
      [1, 4, 7],
      [2, 5],
    ]);
    const merged = out('rr3-merged');
    await merge(s, merged, fast);
    expect(diff(await srcDump('mixtral'), await dump(merged))).toEqual([]);
  });
});
