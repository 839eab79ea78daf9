/**
 * The engine seams: --dry-run plans equal what the real run writes, transforms alone, and the output
 * transaction (never the source or a folder holding it, locks, stale temps, signals, side files).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { applyTransforms, castTransform } from '../src/engine/transforms.js';
import { writeSyntheticMixtral } from '../bench/lib.js';
import { FIXTURES, ROOT, runCli, tempDir } from './helpers.js';
import { fitMemory } from '../src/engine/execute.js';
import type { TensorPlan } from '../src/engine/plan.js';
import { hostname, tmpdir } from 'node:os';

const tmp = tempDir('moekit-engine-');
afterAll(() => tmp.cleanup());
let n = 0;
const out = (name: string) => join(tmp.dir, `${n++}-${name}`);

interface PlannedFile {
  name: string;
  bytes: number;
  tensors: { name: string; dtype: string; shape: number[]; bytes: number; action: string; transforms: string[] }[];
}
interface Planned {
  tensors: number;
  bytes: number;
  files?: string[];
  dryRun: boolean;
  plan: { expectedPeakMB: number; outputs: { dir: string; files: PlannedFile[]; index: string | null; sideFiles: string[] }[] };
}

/** What a written checkpoint folder holds, file by file, from its headers. */
async function written(dir: string): Promise<{ name: string; tensors: { name: string; dtype: string; shape: number[] }[] }[]> {
  const ck = await openStore(dir);
  try {
    return ck.files.map((f) => ({
      name: f.slice(dir.length + 1),
      tensors: [...ck.tensors.values()].filter((t) => t.file === f).map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })),
    }));
  } finally {
    await ck.close();
  }
}

const planned = (f: PlannedFile) => ({ name: f.name, tensors: f.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })) });
const sorted = <T extends { name: string }>(a: T[]) => [...a].sort((x, y) => (x.name < y.name ? -1 : 1));

describe('--dry-run: the plan is what the real run writes', () => {
  it('convert (with a cast and several weight files): same files, tensors, dtypes, shapes and bytes; nothing written', async () => {
    const dst = out('dry-convert');
    const args = ['convert', join(FIXTURES, 'deepseek_v3'), '--to', 'nemo', '--dtype', 'bf16', '--max-shard-size', '40kB', '--no-fsync', '-o', dst, '--json'];
    const dry = runCli([...args, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(existsSync(dst)).toBe(false);
    const p = JSON.parse(dry.stdout) as Planned;
    expect(p.dryRun).toBe(true);
    const o = p.plan.outputs[0]!;
    expect(o.files.length).toBeGreaterThan(1);
    expect(o.files.flatMap((f) => f.tensors).some((t) => t.action === 'transpose' && t.transforms[0] === 'cast F32→BF16')).toBe(true);
    const real = runCli(args);
    expect(real.code, real.stderr).toBe(0);
    const r = JSON.parse(real.stdout) as Planned;
    expect([p.tensors, p.bytes, p.files]).toEqual([r.tensors, r.bytes, r.files]);
    expect(sorted(o.files.map(planned))).toEqual(sorted(await written(dst)));
    for (const f of o.files) expect(f.bytes).toBe(f.tensors.reduce((a, t) => a + t.bytes, 0));
    expect(
      readdirSync(dst)
        .filter((f) => f !== '.moekit-output')
        .sort(),
    ).toEqual(r.files);
  });

  it('shard EP 2 × ETP 2: every rank folder as planned, plus the manifest', async () => {
    const dst = out('dry-shard');
    const args = ['shard', join(FIXTURES, 'qwen2_moe'), '--ep', '2', '--etp', '2', '--to', 'te', '--no-fsync', '-o', dst, '--json'];
    const dry = runCli([...args, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(existsSync(dst)).toBe(false);
    const p = JSON.parse(dry.stdout) as Planned;
    const real = runCli(args);
    expect(real.code, real.stderr).toBe(0);
    const r = JSON.parse(real.stdout) as Planned;
    expect([p.tensors, p.bytes]).toEqual([r.tensors, r.bytes]);
    const ranks = p.plan.outputs.filter((o) => o.dir !== '');
    expect(ranks.map((o) => o.dir)).toEqual(['ep0-etp0', 'ep0-etp1', 'ep1-etp0', 'ep1-etp1']);
    for (const o of ranks) {
      expect(sorted(o.files.map(planned)), o.dir).toEqual(sorted(await written(join(dst, o.dir))));
      expect(readdirSync(join(dst, o.dir)).sort()).toEqual([...o.files.map((f) => f.name), ...(o.index ? [o.index] : []), ...o.sideFiles].sort());
    }
    expect(p.plan.outputs.find((o) => o.dir === '')!.sideFiles).toEqual(['moekit-manifest.json']);
  });

  it('gate and up concatenated from per-expert tensors stream as byte ranges: no slab is assembled in memory', () => {
    const peak = (to: string) => {
      const r = runCli(['convert', join(FIXTURES, 'mixtral'), '--to', to, '--dry-run', '--json', '-o', out(`dry-${to}`)]);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { plan: { expectedPeakMB: number } }).plan.expectedPeakMB;
    };
    // te's linear_fc1.weight<i> is gate_i then up_i: two reads, no assembly (the process's base, 110 MiB)
    expect(peak('te')).toBe(110);
    // nemo transposes: its slabs are assembled
    expect(peak('nemo')).toBeGreaterThan(110);
  });

  it('merge and reshard plan without writing; text output names the actions', () => {
    const sh = out('dry-src');
    expect(runCli(['shard', join(FIXTURES, 'mixtral'), '--ep', '2', '--no-fsync', '-o', sh]).code).toBe(0);
    for (const cmd of [
      ['merge', sh],
      ['reshard', sh, '--ep', '4'],
    ]) {
      const dst = out('dry-none');
      const r = runCli([...cmd, '--dry-run', '-o', dst]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/nothing written \(--dry-run\)/);
      expect(existsSync(dst)).toBe(false);
    }
    const c = runCli(['convert', join(FIXTURES, 'mixtral'), '--to', 'nemo', '--dry-run', '-o', out('dry-text')]);
    expect(c.stdout).toMatch(/model\.safetensors: 21 tensors, [\d.]+ MB \(15 copy, 4 transpose, 2 rename\)/);
  });
});

describe('transforms', () => {
  it('cast rounds to nearest even and keeps ±Inf and NaN, chunk by chunk', () => {
    const f = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, Infinity, -Infinity, NaN, -0]);
    const bf = new Uint16Array(Uint8Array.from(applyTransforms([castTransform('F32', 'BF16')], new Uint8Array(f.buffer))).buffer);
    expect([...bf]).toEqual([0x3f80, 0x3f80, 0x3f82, 0x7f80, 0xff80, bf[5], 0x8000]);
    expect(bf[5]! & 0x7fc0).toBe(0x7fc0); // a quiet NaN
    const back = applyTransforms([castTransform('F32', 'F16'), castTransform('F16', 'F32')], new Uint8Array(new Float32Array([0.5, 65504]).buffer));
    expect([...new Float32Array(Uint8Array.from(back).buffer)]).toEqual([0.5, 65504]);
    expect(applyTransforms([], new Uint8Array([1, 2]))).toEqual(new Uint8Array([1, 2]));
  });
});

/** A copy of a fixture inside `parent`/src, with a tokenizer file beside the weights. */
function sourceIn(parent: string, fixture = 'mixtral'): string {
  const src = join(parent, 'src');
  cpSync(join(FIXTURES, fixture), src, { recursive: true });
  writeFileSync(join(src, 'tokenizer.json'), '{"version":"1.0"}');
  return src;
}

describe('output transaction: the source is never lost', () => {
  const P = out('parent');
  mkdirSync(P);
  const src = sourceIn(P);
  const before = readFileSync(join(src, 'model.safetensors'));
  const intact = () => expect(readFileSync(join(src, 'model.safetensors')).equals(before)).toBe(true);

  it.each([
    ['convert', [src, '--to', 'nemo']],
    ['shard', [src, '--ep', '2']],
  ])("%s -o <the source's parent> --force is refused with exit 5, the source intact", (cmd, args) => {
    for (const dst of [P, src, tmp.dir, '/']) {
      const r = runCli([cmd, ...args, '-o', dst, '--force', '--no-fsync']);
      expect(r.code, r.stderr).toBe(5);
      expect(r.stderr).toMatch(/^moekit: error: -o .* would replace the source .*; choose another destination\n$/);
      intact();
    }
    const r = runCli([cmd, ...args, '-o', join(src, 'out'), '--no-fsync']);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/is inside the source folder/);
    expect(existsSync(join(src, 'out'))).toBe(false);
  });

  it("merge and reshard -o <the sharded folder's parent> --force are refused", () => {
    const q = out('sh-parent');
    mkdirSync(q);
    const sh = join(q, 'sh');
    expect(runCli(['shard', src, '--ep', '2', '--no-fsync', '-o', sh]).code).toBe(0);
    for (const cmd of [
      ['merge', sh],
      ['reshard', sh, '--ep', '4'],
    ]) {
      const r = runCli([...cmd, '-o', q, '--force', '--no-fsync']);
      expect(r.code, r.stderr).toBe(5);
      expect(existsSync(join(sh, 'moekit-manifest.json'))).toBe(true);
    }
  });

  it('side files (tokenizer, generation config) travel to convert, every shard rank, and merge', () => {
    const c = out('side-convert');
    expect(runCli(['convert', src, '--to', 'te', '--no-fsync', '-o', c]).code).toBe(0);
    expect(readdirSync(c)).toEqual(expect.arrayContaining(['tokenizer.json', 'generation_config.json', 'config.json', 'moekit.json']));
    const s = out('side-shard');
    expect(runCli(['shard', src, '--ep', '2', '--no-fsync', '-o', s]).code).toBe(0);
    for (const r of ['ep0-of-2', 'ep1-of-2']) expect(readdirSync(join(s, r))).toContain('tokenizer.json');
    const m = out('side-merge');
    expect(runCli(['merge', s, '--no-fsync', '-o', m]).code).toBe(0);
    expect(readFileSync(join(m, 'tokenizer.json'), 'utf8')).toBe('{"version":"1.0"}');
  });

  it("a lock held by a live run refuses (exit 5); a stale lock and a killed run's temp folder are cleaned up", () => {
    const dst = out('locked');
    const lock = join(tmp.dir, `.${dst.slice(tmp.dir.length + 1)}.moekit-lock`);
    writeFileSync(lock, String(process.pid)); // this test process: alive
    const r = runCli(['convert', src, '--to', 'te', '--no-fsync', '-o', dst]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/is being written by another moekit run \(pid \d+\)/);
    writeFileSync(lock, '999999999'); // no such process
    const stale = join(tmp.dir, `.${dst.slice(tmp.dir.length + 1)}.moekit-tmp-999999999-dead`);
    mkdirSync(stale);
    writeFileSync(join(stale, 'partial.safetensors'), 'x');
    const ok = runCli(['convert', src, '--to', 'te', '--no-fsync', '-o', dst]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(existsSync(lock)).toBe(false);
    expect(existsSync(stale)).toBe(false);
  });

  it('a lock just created and not yet written (no pid in it) is another run starting, not a stale lock; an old empty one is stale', () => {
    const dst = out('locked-empty');
    const lock = join(tmp.dir, `.${dst.slice(tmp.dir.length + 1)}.moekit-lock`);
    writeFileSync(lock, '');
    const r = runCli(['convert', src, '--to', 'te', '--no-fsync', '-o', dst]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/^moekit: error: .* is being written by another moekit run \(its lock was just taken\)[^\n]*\n$/);
    expect(existsSync(lock)).toBe(true);
    const old = new Date(Date.now() - 60_000);
    utimesSync(lock, old, old);
    const ok = runCli(['convert', src, '--to', 'te', '--no-fsync', '-o', dst]);
    expect(ok.code, ok.stderr).toBe(0);
    // no lock, and no temp copy of one, left beside the output
    expect(readdirSync(tmp.dir).filter((n) => n.includes('locked-empty') && join(tmp.dir, n) !== dst)).toEqual([]);
  });
  it("a lock's temp file left by a run killed while taking the lock is removed by the next run; a live run's is kept", () => {
    const dst = out('lock-temps');
    const lock = join(tmp.dir, `.${dst.slice(tmp.dir.length + 1)}.moekit-lock`);
    const dead = spawnSync(process.execPath, ['-e', 'process.pid']).pid!; // a pid that has exited
    const left = `${lock}.${dead}-0badf00d`;
    const empty = `${lock}.${dead}-0badf00e`; // killed between creating it and writing it
    const live = `${lock}.${process.pid}-0badf00f`;
    writeFileSync(left, `${dead} ${hostname()}\n`);
    writeFileSync(empty, '');
    writeFileSync(live, `${process.pid} ${hostname()}\n`);
    const r = runCli(['convert', src, '--to', 'te', '--no-fsync', '-o', dst]);
    expect(r.code, r.stderr).toBe(0);
    expect([existsSync(left), existsSync(empty), existsSync(live)]).toEqual([false, false, true]);
    rmSync(live);
  });
});

describe('output transaction: SIGINT and SIGTERM leave nothing behind', () => {
  const big = out('big');
  const ready = writeSyntheticMixtral(big, { layers: 2, experts: 8, hidden: 1024, inter: 2048 }); // 134 MB bf16

  // without a cast the transposed slabs are built and written by the transpose workers in row bands (execute.ts writeBands)
  for (const [sig, code, cast] of [
    ['SIGINT', 130, ['--dtype', 'f16']],
    ['SIGTERM', 143, ['--dtype', 'f16']],
    ['SIGINT', 130, []],
  ] as const) {
    it(`${sig} during convert${cast.length ? ' (cast)' : ' (worker-written bands)'}: exit ${code}, no temp folder, no lock, no destination`, async () => {
      await ready;
      const parent = out(`sig-${sig}`);
      mkdirSync(parent);
      const dst = join(parent, 'dst');
      const child = spawn(process.execPath, [join(ROOT, 'bin', 'moekit.js'), 'convert', big, '--to', 'nemo', ...cast, '-o', dst], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += String(d)));
      const exited = new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
      // wait until the temp folder holds data, then interrupt
      for (let i = 0; i < 400; i++) {
        const t = readdirSync(parent).find((f) => f.includes('.moekit-tmp-'));
        if (t && readdirSync(join(parent, t)).length > 0) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      child.kill(sig);
      expect(await exited, stderr).toBe(code);
      expect(stderr).toMatch(/interrupted .*partial output removed/);
      expect(readdirSync(parent)).toEqual([]);
    }, 60_000);
  }
});

describe('--max-memory', () => {
  const slab = (mib: number) => ({ slabs: [{ kind: 'assemble', dtype: 'BF16', shape: [mib * 2 ** 19] }] }) as unknown as TensorPlan;
  it('fewer slabs in flight as the budget tightens, then row bands, a one-line refusal when not even one band fits', () => {
    // with 2 transpose workers: peak ≈ 110 + 52 MiB + (jobs + 2.5) slabs + jobs × 32 MiB
    const threads = process.env.MOEKIT_THREADS;
    process.env.MOEKIT_THREADS = '2';
    try {
      expect(fitMemory([slab(44)], 4)).toEqual({ jobs: 3, band: Infinity });
      expect(fitMemory([slab(44)], 4, 800e6)).toEqual({ jobs: 4, band: Infinity });
      expect(fitMemory([slab(44)], 4, 480e6)).toEqual({ jobs: 2, band: Infinity });
      // 235 MiB slabs (Mixtral-8x7B's fused gate/up to nemo): the default 512 MiB budget bands them
      const big = fitMemory([slab(235)], 2);
      expect(big.jobs).toBe(2);
      expect(big.band / 2 ** 20).toBeCloseTo((512 - 162 - 64) / 4.5, 5);
      // an explicit cap below two jobs of the smallest band: one job
      expect(fitMemory([slab(44)], 4, 240e6).jobs).toBe(1);
      expect(() => fitMemory([slab(44)], 4, 200e6)).toThrow(/--max-memory 191 MiB cannot hold this job: .* give at least 208 MiB/);
      // a byte copy has no slabs: any cap above the process's own needs
      expect(fitMemory([{ slabs: [{ kind: 'range' }] } as unknown as TensorPlan], 4, 256e6)).toEqual({ jobs: 4, band: Infinity });
      expect(() => fitMemory([], 4, 50e6)).toThrow(/below what any run needs/);
    } finally {
      if (threads === undefined) delete process.env.MOEKIT_THREADS;
      else process.env.MOEKIT_THREADS = threads;
    }
  });
  it('the CLI takes sizes, refuses with exit 2, and reports the peak under the cap', () => {
    const r = runCli(['convert', join(FIXTURES, 'mixtral'), '--to', 'nemo', '--max-memory', '1MB', '-o', join(tmpdir(), `moekit-mm-${process.pid}`)]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--max-memory 1 MiB is below what any run needs|cannot hold this job/);
  });
  it("verify --max-memory: under a WebGPU device's own needs the CPU forward runs (a notice says so) and stays under the cap; too small is one line", () => {
    const mix = join(FIXTURES, 'mixtral');
    const ref = join(mix, 'reference.safetensors');
    const v = runCli(['verify', mix, '--reference', ref, '--max-memory', '256MB', '--json']);
    expect(v.code, v.stderr).toBe(0);
    const j = JSON.parse(v.stdout) as { backend: string; fallback: string; peakRssMB: number; pass: boolean };
    expect(j).toMatchObject({ backend: 'cpu', pass: true });
    expect(j.fallback).toMatch(/--max-memory 244 MiB is below the \d+ MiB a WebGPU device may need: running the CPU forward/);
    expect(j.peakRssMB).toBeLessThan(244);
    const small = runCli(['verify', mix, '--reference', ref, '--max-memory', '100MB']);
    expect(small.code).toBe(2);
    expect(small.stderr).toMatch(/^moekit: error: --max-memory 95 MiB is below what verify needs \(about \d+ MiB with the CPU forward\)\n$/);
    // enough for the device: WebGPU runs, the weight pieces sized to the cap
    const gpu = runCli(['verify', mix, '--reference', ref, '--max-memory', '600MB', '--json']);
    expect(gpu.code, gpu.stderr).toBe(0);
    expect(JSON.parse(gpu.stdout)).toMatchObject({ backend: 'webgpu', pass: true });
  });
});
