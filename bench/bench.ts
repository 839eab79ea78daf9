/**
 * `npm run bench`: moekit against `cp` of the same bytes, measured in one run, reported as ratios.
 * Set MOEKIT_BENCH_GB to change the synthetic checkpoint size (default 2).
 */
import './uv-threads.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSyntheticMixtral, timeCmd, timeNode, rm, syncAll, fmt, MB } from './lib.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const gb = Number(process.env.MOEKIT_BENCH_GB ?? 2);
const work = mkdtempSync(join(process.env.MOEKIT_BENCH_DIR ?? tmpdir(), 'moekit-bench-'));
const src = join(work, 'src');

// Mixtral-style layers: H 2048, I 5632, 8 experts → 69 MiB per expert in bf16; layers scale with size.
const H = 2048;
const I = 5632;
const E = 8;
const perLayer = E * 3 * H * I * 2;
const layers = Math.max(1, Math.round((gb * 1024 ** 3) / perLayer));
console.log(`writing synthetic bf16 Mixtral-layout checkpoint: ${layers} layers × ${E} experts, H ${H}, I ${I} …`);
const total = await writeSyntheticMixtral(src, { layers, experts: E, hidden: H, inter: I });
syncAll();
console.log(`  ${fmt(total / 1024 ** 3)} GiB in ${work}`);

function best(fn: () => number, n = 2): number {
  let b = Infinity;
  for (let i = 0; i < n; i++) b = Math.min(b, fn());
  return b;
}

// ---- 1. copy: cp -r vs moekit read → write ----
const dst = join(work, 'dst');
const cpTime = () => {
  rm(dst);
  syncAll();
  return timeCmd('cp', ['-r', src, dst]);
};
const cpSyncTime = () => {
  rm(dst);
  syncAll();
  const t = timeCmd('cp', ['-r', src, dst]);
  return t + timeCmd('sync', []);
};
let rss = 0;
const moekitTime = (mode: 'fsync' | 'nofsync') => () => {
  rm(dst);
  syncAll();
  const r = timeNode(join(here, 'copy-child.js'), [src, dst, mode]);
  rss = Math.max(rss, r.out.maxRssMB ?? 0);
  return r.seconds;
};
cpTime(); // warm the page cache for both sides
const tCp = best(cpTime);
const tMk = best(moekitTime('nofsync'));
const tCpSync = best(cpSyncTime);
const tMkSync = best(moekitTime('fsync'));
console.log('\n== read → write copy of the checkpoint (warm page cache, best of 2) ==');
console.log(`cp -r                 ${fmt(tCp)} s   ${fmt(total / MB / tCp, 0)} MiB/s`);
console.log(`moekit (no fsync)     ${fmt(tMk)} s   ${fmt(total / MB / tMk, 0)} MiB/s   ratio cp/moekit = ${fmt(tCp / tMk)}`);
console.log(`cp -r + sync          ${fmt(tCpSync)} s`);
console.log(`moekit (fsync, default) ${fmt(tMkSync)} s   ratio (cp+sync)/moekit = ${fmt(tCpSync / tMkSync)}`);
console.log(`moekit peak RSS       ${fmt(rss, 0)} MiB`);
rm(dst);

const { runExtraBenches } = await import('./extra.js').catch(() => ({ runExtraBenches: undefined }));
if (runExtraBenches) await runExtraBenches({ work, src, total, tCp, layers, hidden: H, inter: I, experts: E });
rm(work);
