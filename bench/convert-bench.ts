/**
 * `moekit convert` against `cp -r` of the same checkpoint, in the same run: hf → te (no transposes,
 * target ≥ 0.9 × cp speed) and hf → nemo (every expert matrix transposed, target ≥ 0.6 × cp).
 * convert fsyncs by default and cp does not, so both pairings are reported: `cp -r` vs
 * `convert --no-fsync`, and `cp -r && sync` vs convert with its default fsync.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchContext } from './extra.js';
import { timeCmd, rm, syncAll, fmt, MB } from './lib.js';

const bin = fileURLToPath(new URL('../../bin/moekit.js', import.meta.url));

function convertOnce(src: string, dst: string, to: string, fsync: boolean): { seconds: number; peakRssMB: number } {
  rm(dst);
  syncAll();
  const args = [bin, 'convert', src, '--to', to, '-o', dst, '--json', ...(fsync ? [] : ['--no-fsync'])];
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`moekit convert --to ${to} failed (${r.status})`);
  const out = JSON.parse(r.stdout) as { peakRssMB?: number };
  return { seconds, peakRssMB: out.peakRssMB ?? 0 };
}

export async function benchConvert(ctx: BenchContext, n = 2): Promise<void> {
  const dst = join(ctx.work, 'conv');
  const cp = () => {
    rm(dst);
    syncAll();
    return timeCmd('cp', ['-r', ctx.src, dst]);
  };
  const cpSync = () => {
    rm(dst);
    syncAll();
    const t = timeCmd('cp', ['-r', ctx.src, dst]);
    return t + timeCmd('sync', []);
  };
  const best = (f: () => number) => {
    let b = Infinity;
    for (let i = 0; i < n; i++) b = Math.min(b, f());
    return b;
  };
  // cp re-measured right before (and after) the converts: the machine's I/O speed drifts
  const tCp0 = best(cp);
  const tCpSync = best(cpSync);
  const rows: { to: string; nofsync: number; fsync: number; rss: number }[] = [];
  for (const to of ['te', 'nemo']) {
    let rss = 0;
    const run = (fsync: boolean) => () => {
      const r = convertOnce(ctx.src, dst, to, fsync);
      rss = Math.max(rss, r.peakRssMB);
      return r.seconds;
    };
    const nofsync = best(run(false));
    const fsync = best(run(true));
    rows.push({ to, nofsync, fsync, rss });
  }
  const tCp = Math.min(tCp0, best(cp), ctx.tCp);
  rm(dst);
  const target: Record<string, number> = { te: 0.9, nemo: 0.6 };
  console.log(`\n== convert hf → te / nemo (${fmt(ctx.total / 1024 ** 3)} GiB, warm page cache, best of ${n}; child processes incl. startup) ==`);
  console.log(`cp -r                          ${fmt(tCp)} s   ${fmt(ctx.total / MB / tCp, 0)} MiB/s (best of this run)`);
  console.log(`cp -r + sync                   ${fmt(tCpSync)} s`);
  for (const r of rows) {
    const ratio = tCp / r.nofsync;
    const ok = ratio >= target[r.to]! ? 'meets' : 'MISSES';
    console.log(`convert --to ${r.to.padEnd(4)} --no-fsync    ${fmt(r.nofsync)} s   ratio cp/moekit = ${fmt(ratio)}  (target ≥ ${target[r.to]}: ${ok})`);
    console.log(`convert --to ${r.to.padEnd(4)} (fsync)       ${fmt(r.fsync)} s   ratio (cp+sync)/moekit = ${fmt(tCpSync / r.fsync)}`);
    console.log(`convert --to ${r.to.padEnd(4)} peak RSS      ${fmt(r.rss, 0)} MiB`);
  }
}
