/**
 * Crash safety: convert, shard and merge of a multi-file checkpoint are killed (SIGKILL or SIGINT)
 * at seeded random moments. Afterwards the destination is absent or complete (identical to an
 * uninterrupted run); after SIGINT nothing else is left; and a rerun succeeds, cleaning up what a
 * SIGKILL left (temp folder, lock).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { writeSyntheticMixtral } from '../bench/lib.js';
import { ROOT, tempDir } from './helpers.js';

const tmp = tempDir('moekit-crash-');
afterAll(() => tmp.cleanup());
const BIN = join(ROOT, 'bin', 'moekit.js');
const src = join(tmp.dir, 'src');
const sharded = join(tmp.dir, 'sharded');

/** Every file under `dir` (recursively) → sha256. */
function digest(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string, rel: string) => {
    for (const n of readdirSync(d).sort()) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p, `${rel}${n}/`);
      else out[`${rel}${n}`] = createHash('sha256').update(readFileSync(p)).digest('hex');
    }
  };
  walk(dir, '');
  return out;
}

const COMMANDS: Record<string, (dst: string) => string[]> = {
  convert: (dst) => ['convert', src, '--to', 'nemo', '--max-shard-size', '8MB', '-o', dst],
  shard: (dst) => ['shard', src, '--ep', '4', '-o', dst],
  merge: (dst) => ['merge', sharded, '-o', dst],
};
const reference: Record<string, Record<string, string>> = {};
const duration: Record<string, number> = {};

beforeAll(async () => {
  await writeSyntheticMixtral(src, { layers: 2, experts: 8, hidden: 512, inter: 1024 }, 8_000_000); // 50 MB in 8 files
  expect(spawnSync(process.execPath, [BIN, 'shard', src, '--ep', '2', '--no-fsync', '-o', sharded]).status).toBe(0);
  for (const [name, args] of Object.entries(COMMANDS)) {
    const dst = join(tmp.dir, `ref-${name}`);
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [BIN, ...args(dst)], { encoding: 'utf8' });
    duration[name] = Date.now() - t0;
    expect(r.status, r.stderr).toBe(0);
    reference[name] = digest(dst);
  }
}, 120_000);

/** interruptions per command (MOEKIT_CRASH_POINTS for a longer run) */
const POINTS = Number(process.env.MOEKIT_CRASH_POINTS ?? 18);
let seed = Number(process.env.MOEKIT_CRASH_SEED ?? 20261201);
const rand = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return seed / 2 ** 31;
};

async function killAt(args: string[], ms: number, sig: NodeJS.Signals): Promise<number | null> {
  const p = spawn(process.execPath, [BIN, ...args], { stdio: 'ignore' });
  const exited = new Promise<number | null>((res) => p.on('exit', (code) => res(code)));
  const timer = setTimeout(() => p.kill(sig), ms);
  const code = await exited;
  clearTimeout(timer);
  return code;
}

describe('kill -9 and SIGINT at random moments', () => {
  for (const name of Object.keys(COMMANDS)) {
    it(`${name}: ${POINTS} interruptions, destination absent or complete, rerun succeeds`, async () => {
      for (let k = 0; k < POINTS; k++) {
        const parent = join(tmp.dir, `${name}-${k}`);
        mkdirSync(parent);
        const dst = join(parent, 'dst');
        const sig: NodeJS.Signals = k % 2 === 0 ? 'SIGKILL' : 'SIGINT';
        const at = 20 + rand() * duration[name]!;
        const code = await killAt(COMMANDS[name]!(dst), at, sig);
        const what = `${name} ${sig} at ${at.toFixed(0)} ms (exit ${code})`;
        if (existsSync(dst)) expect(digest(dst), what).toEqual(reference[name]);
        if (sig === 'SIGINT')
          expect(
            readdirSync(parent).filter((f) => f !== 'dst'),
            what,
          ).toEqual([]);
        const again = spawnSync(process.execPath, [BIN, ...COMMANDS[name]!(dst), '--force'], { encoding: 'utf8' });
        expect(again.status, `${what}: rerun: ${again.stderr}`).toBe(0);
        expect(digest(dst), what).toEqual(reference[name]);
        expect(readdirSync(parent), what).toEqual(['dst']);
      }
    }, 120_000);
  }

  it('convert --force over an existing output, SIGINT at 10 random moments: the old or the new output is always there, whole', async () => {
    for (let k = 0; k < 10; k++) {
      const parent = join(tmp.dir, `force-${k}`);
      mkdirSync(parent);
      const dst = join(parent, 'dst');
      expect(spawnSync(process.execPath, [BIN, ...COMMANDS.convert!(dst), '--no-fsync']).status).toBe(0);
      const at = 20 + rand() * duration.convert!;
      const code = await killAt([...COMMANDS.convert!(dst), '--force'], at, 'SIGINT');
      const what = `SIGINT at ${at.toFixed(0)} ms (exit ${code})`;
      expect(digest(dst), what).toEqual(reference.convert);
      expect(readdirSync(parent).join(' '), what).toBe('dst');
    }
  }, 120_000);
});
