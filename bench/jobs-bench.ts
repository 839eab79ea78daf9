/**
 * Every long job of moekit against `cp -r` of the same checkpoint, measured in the same run, and
 * beside the Python path (bench/peer.py: safetensors + torch, as users script it today) when
 * python3 has torch and safetensors (MOEKIT_PYTHON picks the interpreter); the outputs of moekit and
 * the peer are compared tensor by tensor (sha256), so both did the same work.
 *
 * Each moekit job is a child process (`bin/moekit.js … --json --no-fsync`, startup included; its
 * summary carries its peak RSS); each figure is the best of MOEKIT_BENCH_REPS (default 2) with the
 * page cache warm. Targets (issue 16), by this machine's cores (≥ 8: the 16-core figures; fewer:
 * the 2-core ones): transposing conversions ≥ 0.8 / 0.5 × cp, copying ones ≥ 0.95 / 0.8 × cp,
 * shard / merge / reshard ≥ 0.8 × cp on 16 cores; every job's peak RSS ≤ 512 MiB.
 * `shard --dense rank0` writes the same bytes as the source, so its ratio compares like with like.
 *
 * MOEKIT_BENCH_SCALE=1,2,4,8 adds the scaling table: convert --to nemo and shard --ep 8 of
 * synthetic checkpoints of those sizes (GiB): seconds per GiB and peak RSS should stay flat.
 */
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openStore } from '../src/store/registry.js';
import type { BenchContext } from './extra.js';
import { timeCmd, rm, syncAll, fmt, MB, writeSyntheticMixtral, writeSyntheticLlama } from './lib.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const bin = join(here, '..', '..', 'bin', 'moekit.js');
const peerScript = join(here, '..', '..', 'bench', 'peer.py');
const reps = Math.max(1, Number(process.env.MOEKIT_BENCH_REPS ?? 2));
const big = availableParallelism() >= 8;

interface Run {
  seconds: number;
  rssMB: number;
}

function moekit(args: string[], noFsync = true): Run {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [bin, ...args, '--json', ...(noFsync ? ['--no-fsync'] : [])], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 26,
  });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`moekit ${args.join(' ')} failed (${r.status})`);
  return { seconds, rssMB: (JSON.parse(r.stdout) as { peakRssMB?: number }).peakRssMB ?? 0 };
}

const python = process.env.MOEKIT_PYTHON ?? 'python3';
function hasPeer(): boolean {
  const r = spawnSync(python, ['-c', 'import torch, safetensors'], { stdio: 'ignore' });
  return r.status === 0;
}

function peer(args: string[]): Run {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(python, [peerScript, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`python peer ${args.join(' ')} failed (${r.status})`);
  const last = r.stdout.trim().split('\n').pop() ?? '{}';
  return { seconds, rssMB: (JSON.parse(last) as { peakRssMB?: number }).peakRssMB ?? 0 };
}

/** Best of `reps` runs of `f` into a fresh `dst` (the last output is kept for comparison). */
function best(dst: string, f: () => Run): Run {
  let b: Run = { seconds: Infinity, rssMB: 0 };
  for (let i = 0; i < reps; i++) {
    rm(dst);
    syncAll();
    const r = f();
    b = { seconds: Math.min(b.seconds, r.seconds), rssMB: Math.max(b.rssMB, r.rssMB) };
  }
  return b;
}

/** sha256 of every tensor of every checkpoint folder under `dir`, keyed "subfolder/name". */
async function tensorHashes(dir: string, ranks: string[] = ['']): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const r of ranks) {
    const s = await openStore(join(dir, r));
    try {
      for (const n of s.names()) {
        const h = createHash('sha256');
        for await (const c of s.chunks(n)) {
          h.update(c.data);
          c.release?.();
        }
        out.set(`${r}/${n}`, h.digest('hex'));
      }
    } finally {
      await s.close();
    }
  }
  return out;
}

async function sameTensors(a: string, b: string, ranks?: string[]): Promise<string> {
  const [ha, hb] = await Promise.all([tensorHashes(a, ranks), tensorHashes(b, ranks)]);
  let same = 0;
  for (const [k, v] of ha) if (hb.get(k) === v) same++;
  return same === ha.size && ha.size === hb.size ? `identical (${same} tensors)` : `DIFFER: ${same} of ${ha.size} / ${hb.size} equal`;
}

interface Row {
  job: string;
  kind: 'transpose' | 'copy' | 'shard';
  run: Run;
  /** seconds of `cp -r` of this row's own source, when it is not the Mixtral checkpoint */
  cp?: number;
  peer?: Run;
  same?: string;
}

const TARGET = { transpose: big ? 0.8 : 0.5, copy: big ? 0.95 : 0.8, shard: big ? 0.8 : undefined };

function printTable(title: string, tCp: number, total: number, rows: Row[]): void {
  console.log(`\n== ${title} ==`);
  console.log(`cp -r ${fmt(tCp)} s (${fmt(total / MB / tCp, 0)} MiB/s); ${availableParallelism()} cores; best of ${reps}; RSS target ≤ 512 MiB`);
  console.log(
    `${'job'.padEnd(36)} ${'s'.padStart(7)} ${'cp/x'.padStart(6)} ${'target'.padStart(7)} ${'RSS MiB'.padStart(8)}   python: ${'s'.padStart(7)} ${'py/x'.padStart(6)} ${'RSS MiB'.padStart(8)}  same tensors`,
  );
  for (const r of rows) {
    const ratio = (r.cp ?? tCp) / r.run.seconds;
    const t = TARGET[r.kind];
    const verdict = t === undefined ? '     —' : `${ratio >= t ? ' ' : '!'}${fmt(t).padStart(5)}`;
    const py = r.peer
      ? `${fmt(r.peer.seconds).padStart(7)} ${fmt(r.peer.seconds / r.run.seconds).padStart(6)} ${fmt(r.peer.rssMB, 0).padStart(8)}  ${r.same}`
      : '      —';
    const rss = `${fmt(r.run.rssMB, 0).padStart(8)}${r.run.rssMB > 512 ? '!' : ' '}`;
    console.log(`${r.job.padEnd(36)} ${fmt(r.run.seconds).padStart(7)} ${fmt(ratio).padStart(6)} ${verdict.padStart(7)} ${rss}  ${py}`);
  }
  console.log('  (cp/x: moekit speed as a fraction of cp; "!" marks a missed target; py/x: how many times faster than the Python path)');
}

export async function benchJobs(ctx: BenchContext): Promise<void> {
  const out = (n: string) => join(ctx.work, n);
  const withPeer = hasPeer();
  const rows: Row[] = [];
  const tCp0 = best(out('cp'), () => ({ seconds: timeCmd('cp', ['-r', ctx.src, out('cp')]), rssMB: 0 })).seconds;
  rm(out('cp'));
  const convert: [string, Row['kind'], boolean][] = [
    ['te', 'copy', true],
    ['megatron', 'copy', false],
    ['nemo', 'transpose', true],
    ['megatron-grouped', 'transpose', false],
    ['hf-fused', 'transpose', false],
  ];
  for (const [to, kind, hasPy] of convert) {
    const run = best(out('mk'), () => moekit(['convert', ctx.src, '--to', to, '-o', out('mk')]));
    const row: Row = { job: `convert --to ${to}`, kind, run };
    if (withPeer && hasPy) {
      row.peer = best(out('py'), () => peer([to, ctx.src, out('py')]));
      row.same = await sameTensors(out('mk'), out('py'));
    }
    rows.push(row);
    rm(out('mk'));
    rm(out('py'));
  }
  rows.push(...(await otherFamilies(ctx)));
  const ranks = Array.from({ length: 8 }, (_, r) => `ep${r}-of-8`);
  const shard = best(out('sh'), () => moekit(['shard', ctx.src, '--ep', '8', '--dense', 'rank0', '-o', out('sh')]));
  const shardRow: Row = { job: 'shard --ep 8 (sha256 of every tensor)', kind: 'shard', run: shard };
  if (withPeer) {
    shardRow.peer = best(out('py'), () => peer(['shard', ctx.src, out('py'), '8']));
    shardRow.same = await sameTensors(out('sh'), out('py'), ranks);
    rm(out('py'));
  }
  rows.push(shardRow);
  rows.push({ job: 'merge (checks every sha256)', kind: 'shard', run: best(out('mg'), () => moekit(['merge', out('sh'), '-o', out('mg')])) });
  rm(out('mg'));
  rows.push({ job: 'reshard --ep 4', kind: 'shard', run: best(out('rs'), () => moekit(['reshard', out('sh'), '--ep', '4', '-o', out('rs')])) });
  rm(out('rs'));
  rm(out('sh'));
  const tCp = Math.min(tCp0, ctx.tCp);
  printTable(`jobs on ${fmt(ctx.total / 1024 ** 3)} GiB (bf16 Mixtral layout, H ${ctx.hidden}, I ${ctx.inter}, ${ctx.experts} experts)`, tCp, ctx.total, rows);
  if (!withPeer) console.log(`  (no Python path: ${python} has no torch + safetensors)`);
  if (process.env.MOEKIT_BENCH_MEM !== '0') await benchMemory(ctx);
  if (process.env.MOEKIT_BENCH_SCALE) await benchScaling(ctx, process.env.MOEKIT_BENCH_SCALE.split(',').map(Number));
}

/**
 * Peak RSS of the other long commands at default settings, once each (MOEKIT_BENCH_MEM=0 skips):
 * shard with expert-TP, verify on the GPU (lavapipe where there is none) and on the CPU, quant /
 * dequant, and upcycle of a dense Llama with the same MLP bytes per layer as one expert.
 */
async function benchMemory(ctx: BenchContext): Promise<void> {
  const out = (n: string) => join(ctx.work, n);
  const rows: [string, Run][] = [];
  const once = (job: string, args: string[], noFsync = true) => rows.push([job, moekit(args, noFsync)]);
  once('shard --ep 2 --etp 2 --to te', ['shard', ctx.src, '--ep', '2', '--etp', '2', '--to', 'te', '-o', out('etp')]);
  rm(out('etp'));
  moekit(['convert', ctx.src, '--to', 'nemo', '-o', out('nemo')]);
  once('verify <nemo conversion> <source>', ['verify', out('nemo'), ctx.src], false);
  once('verify --cpu <nemo conversion> <source>', ['verify', out('nemo'), ctx.src, '--cpu'], false);
  rm(out('nemo'));
  once('quant --format fp8-block', ['quant', ctx.src, '--format', 'fp8-block', '-o', out('q')]);
  once('dequant (of that)', ['dequant', out('q'), '-o', out('dq')]);
  rm(out('q'));
  rm(out('dq'));
  await writeSyntheticLlama(out('dense'), { layers: ctx.layers, hidden: ctx.hidden, inter: ctx.inter });
  once(`upcycle --experts ${ctx.experts} --top-k 2`, ['upcycle', out('dense'), '--experts', String(ctx.experts), '--top-k', '2', '-o', out('up')]);
  rm(out('up'));
  rm(out('dense'));
  console.log(`\n== peak RSS of the other commands on ${fmt(ctx.total / 1024 ** 3)} GiB (default settings, target ≤ 512 MiB) ==`);
  for (const [job, r] of rows) console.log(`${job.padEnd(40)} ${fmt(r.seconds).padStart(7)} s ${fmt(r.rssMB, 0).padStart(8)} MiB${r.rssMB > 512 ? ' !' : ''}`);
}

/**
 * The transposing conversions of the fused families (issue 16 names Llama4 and GPT-OSS): synthetic
 * checkpoints of the same dims in their own layouts (gate_up_proj [E,H,2I], GPT-OSS's interleaved,
 * with biases; Llama4's with a shared expert), each converted to te (a transpose; GPT-OSS's also
 * takes gate and up apart, and its te output goes back to hf, putting them together again) and
 * GPT-OSS's to nemo (gate and up apart, no transpose). Each ratio is against `cp -r` of that row's
 * own source.
 */
async function otherFamilies(ctx: BenchContext): Promise<Row[]> {
  const rows: Row[] = [];
  const out = (n: string) => join(ctx.work, n);
  for (const [family, label, targets] of [
    ['llama4', 'llama4', ['te']],
    ['gpt_oss', 'gpt-oss', ['te', 'nemo']],
  ] as const) {
    const src = out(family);
    await writeSyntheticMixtral(src, { layers: ctx.layers, experts: ctx.experts, hidden: ctx.hidden, inter: ctx.inter }, 1 << 30, family);
    timeCmd('cp', ['-r', src, out('cp')]); // warm: the source was just written
    const cp = best(out('cp'), () => ({ seconds: timeCmd('cp', ['-r', src, out('cp')]), rssMB: 0 })).seconds;
    rm(out('cp'));
    for (const to of targets) {
      rows.push({
        job: `convert <${label}> --to ${to}`,
        kind: 'transpose',
        run: best(out('mk'), () => moekit(['convert', src, '--to', to, '-o', out('mk')])),
        cp,
      });
      // back: the interleaved pair written again (GPT-OSS's export after training in Megatron)
      if (family === 'gpt_oss' && to === 'te') {
        rows.push({
          job: `convert <${label} as te> --to hf`,
          kind: 'transpose',
          run: best(out('back'), () => moekit(['convert', out('mk'), '--to', 'hf', '-o', out('back')])),
          cp,
        });
        rm(out('back'));
      }
      rm(out('mk'));
    }
    rm(src);
  }
  return rows;
}

/** convert --to nemo and shard --ep 8 at several checkpoint sizes: time per GiB and RSS should be flat. */
async function benchScaling(ctx: BenchContext, sizes: number[]): Promise<void> {
  console.log('\n== scaling (convert --to nemo, shard --ep 8 --dense rank0) ==');
  console.log(
    `${'GiB'.padStart(6)} ${'cp s/GiB'.padStart(9)} ${'nemo s/GiB'.padStart(11)} ${'RSS MiB'.padStart(8)} ${'shard s/GiB'.padStart(12)} ${'RSS MiB'.padStart(8)}`,
  );
  const perLayer = ctx.experts * 3 * ctx.hidden * ctx.inter * 2;
  for (const gb of sizes) {
    const src = join(ctx.work, `scale-${gb}`);
    const layers = Math.max(1, Math.round((gb * 1024 ** 3) / perLayer));
    const total = await writeSyntheticMixtral(src, { layers, experts: ctx.experts, hidden: ctx.hidden, inter: ctx.inter });
    const gib = total / 1024 ** 3;
    const dst = join(ctx.work, 'scale-out');
    timeCmd('cp', ['-r', src, dst]); // warm
    const cp = best(dst, () => ({ seconds: timeCmd('cp', ['-r', src, dst]), rssMB: 0 }));
    const nemo = best(dst, () => moekit(['convert', src, '--to', 'nemo', '-o', dst]));
    const sh = best(dst, () => moekit(['shard', src, '--ep', '8', '--dense', 'rank0', '-o', dst]));
    console.log(
      `${fmt(gib).padStart(6)} ${fmt(cp.seconds / gib).padStart(9)} ${fmt(nemo.seconds / gib).padStart(11)} ${fmt(nemo.rssMB, 0).padStart(8)} ${fmt(sh.seconds / gib).padStart(12)} ${fmt(sh.rssMB, 0).padStart(8)}`,
    );
    rm(dst);
    rm(src);
  }
}
