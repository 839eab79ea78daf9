// The CLI as users run it: bin/moekit.js loads the one-file bundle dist/moekit.js (scripts/bundle.mjs),
// where module-level names may be renamed. Every worker pool evaluates code of its own (hash,
// transpose, block-FP8, CPU forward), so each is run here through the bundle with 1 and 3 threads.
import { afterAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { writeSyntheticMixtral } from '../bench/lib.js';
import { ROOT, runCli, tempDir } from './helpers.js';

const t = tempDir('moekit-bundle-');
afterAll(() => t.cleanup());
const out = (n: string) => join(t.dir, n);

/** sha256 of every weight file and manifest of a folder (recursively), by relative path. */
function digests(dir: string, at = ''): Record<string, string> {
  const r: Record<string, string> = {};
  for (const e of readdirSync(join(dir, at), { withFileTypes: true })) {
    const rel = join(at, e.name);
    if (e.isDirectory()) Object.assign(r, digests(dir, rel));
    else if (/\.safetensors$|manifest/.test(e.name))
      r[rel] = createHash('sha256')
        .update(readFileSync(join(dir, rel)))
        .digest('hex');
  }
  return r;
}

describe('the bundled CLI (dist/moekit.js)', () => {
  it('is what bin/moekit.js runs after npm run build (newer than the modules)', () => {
    const bundle = join(ROOT, 'dist', 'moekit.js');
    expect(existsSync(bundle)).toBe(true);
    expect(statSync(bundle).mtimeMs).toBeGreaterThanOrEqual(statSync(join(ROOT, 'dist', 'src', 'cli', 'index.js')).mtimeMs);
  });

  it('runs every worker pool: quant, dequant, convert --to nemo, shard and verify --cpu give the same bytes with 1 and 3 threads', async () => {
    const src = out('src');
    // expert matrices of 512 × 1024: every read is over the block-FP8 pool's parallel threshold
    await writeSyntheticMixtral(src, { layers: 1, experts: 2, hidden: 512, inter: 1024 });
    const runs: Record<string, string>[] = [];
    for (const n of [1, 3]) {
      const env = { MOEKIT_QUANT_THREADS: `${n}`, MOEKIT_THREADS: `${n}`, MOEKIT_HASH_THREADS: `${n}`, MOEKIT_CPU_THREADS: `${n}` };
      const d = (name: string) => out(`${name}-${n}`);
      const steps = [
        ['quant', src, '--format', 'fp8-block', '-o', d('q')],
        ['dequant', d('q'), '-o', d('dq')],
        ['convert', src, '--to', 'nemo', '-o', d('nemo')],
        ['shard', src, '--ep', '2', '-o', d('ep2')],
      ];
      for (const s of steps) {
        const r = runCli([...s, '--no-fsync', '-q'], { env });
        expect(r.code, `${s[0]} with ${n} threads: ${r.stderr}`).toBe(0);
      }
      const v = runCli(['verify', d('nemo'), src, '--cpu', '-q'], { env });
      expect(v.code, v.stderr).toBe(0);
      runs.push(Object.fromEntries(['q', 'dq', 'nemo', 'ep2'].flatMap((k) => Object.entries(digests(d(k))).map(([f, h]) => [`${k}/${f}`, h]))));
    }
    expect(Object.keys(runs[0]!).length).toBeGreaterThan(4);
    expect(runs[1]).toEqual(runs[0]);
  }, 120_000);
});
