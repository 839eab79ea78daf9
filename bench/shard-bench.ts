/**
 * Bench of `moekit shard --ep 8` and `moekit merge` of the synthetic checkpoint, each in a child
 * process (`node bin/moekit.js … --json`, whose summary carries its peakRssMB), against `cp -r`
 * of the same bytes measured in the same run (ctx.tCp). `--dense rank0` keeps the bytes written
 * equal to the source's (no replicated non-expert tensors), so the ratio compares like with like.
 * Targets (issue 6): ratio cp/moekit ≥ 0.9; peak RSS < 2 × the largest tensor + 100 MB.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import type { BenchContext } from './extra.js';
import { rm, syncAll, fmt, MB } from './lib.js';

const here = fileURLToPath(new URL('.', import.meta.url));
// dist/bench/ → repository root
const moekit = join(here, '..', '..', 'bin', 'moekit.js');

function runMoekit(args: string[]): { seconds: number; out: { peakRssMB: number; bytes: number } } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [moekit, ...args, '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`moekit ${args.join(' ')} failed (${r.status})`);
  return { seconds, out: JSON.parse(r.stdout) as { peakRssMB: number; bytes: number } };
}

export async function benchShard(ctx: BenchContext): Promise<void> {
  const sharded = join(ctx.work, 'sharded');
  const merged = join(ctx.work, 'merged');
  const largest = ctx.hidden * ctx.inter * 2; // one bf16 expert projection
  const rssTarget = (2 * largest) / MB + 100;
  const best = (f: () => { seconds: number; out: { peakRssMB: number } }, n = 2) => {
    let b = { seconds: Infinity, rss: 0 };
    for (let i = 0; i < n; i++) {
      const r = f();
      b = { seconds: Math.min(b.seconds, r.seconds), rss: Math.max(b.rss, r.out.peakRssMB) };
    }
    return b;
  };
  const shard = best(() => {
    rm(sharded);
    syncAll();
    return runMoekit(['shard', ctx.src, '--ep', '8', '--dense', 'rank0', '--no-fsync', '-o', sharded]);
  });
  const merge = best(() => {
    rm(merged);
    syncAll();
    return runMoekit(['merge', sharded, '--no-fsync', '-o', merged]);
  });
  console.log('\n== shard to EP 8 and merge back (warm page cache, no fsync, best of 2) ==');
  console.log(`cp -r (same bytes)    ${fmt(ctx.tCp)} s   ${fmt(ctx.total / MB / ctx.tCp, 0)} MiB/s`);
  console.log(
    `moekit shard --ep 8   ${fmt(shard.seconds)} s   ratio cp/moekit = ${fmt(ctx.tCp / shard.seconds)} (target ≥ 0.9)   peak RSS ${fmt(shard.rss, 0)} MiB`,
  );
  console.log(
    `moekit merge          ${fmt(merge.seconds)} s   ratio cp/moekit = ${fmt(ctx.tCp / merge.seconds)} (target ≥ 0.9)   peak RSS ${fmt(merge.rss, 0)} MiB`,
  );
  console.log(
    `  (shard hashes every tensor while writing, merge verifies every rank's sha256 while writing; ${availableParallelism()} cores; RSS target < 2 × largest tensor + 100 MB = ${fmt(rssTarget, 0)} MiB)`,
  );
  rm(sharded);
  rm(merged);
}
