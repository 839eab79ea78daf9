import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { FIXTURES, runCli, tempDir } from './helpers.js';

describe('progress when stderr is a log, and --quiet', () => {
  it('piped: plain "progress:" lines (no carriage returns) ending at 100%; --quiet anywhere prints nothing on stderr', () => {
    const t = tempDir();
    try {
      const r = runCli(['convert', join(FIXTURES, 'deepseek_v3'), '--to', 'nemo', '-o', join(t.dir, 'a'), '--no-fsync'], {
        env: { MOEKIT_PROGRESS_SECONDS: '0.0001' },
      });
      expect(r.code, r.stderr).toBe(0);
      const lines = r.stderr.trim().split('\n');
      expect(lines.length).toBeGreaterThan(1);
      expect(lines.every((l) => /^progress: +\d+% .* ETA \d+:\d\d \(\d+:\d\d elapsed\)$/.test(l))).toBe(true);
      expect(lines.at(-1)).toMatch(/^progress: 100% /);
      expect(lines.filter((l) => l.startsWith('progress: 100%'))).toHaveLength(1);
      expect(r.stderr).not.toMatch(/\r/);
      const q = runCli(['convert', '-q', join(FIXTURES, 'deepseek_v3'), '--to', 'nemo', '-o', join(t.dir, 'b'), '--no-fsync'], {
        env: { MOEKIT_PROGRESS_SECONDS: '0.0001' },
      });
      expect(q.code).toBe(0);
      expect(q.stderr).toBe('');
      const v = runCli(['verify', join(FIXTURES, 'mixtral'), '--reference', join(FIXTURES, 'mixtral', 'reference.safetensors'), '--cpu', '--quiet']);
      expect(v.code).toBe(0);
      expect(v.stderr).toBe('');
      expect(v.stdout).toMatch(/forward-equal/);
    } finally {
      t.cleanup();
    }
  });
});

describe('CLI conventions', () => {
  it('a layout name in the wrong case or misspelt gets "did you mean"; an unwritable -o fails at once (exit 5)', () => {
    const t = tempDir();
    try {
      const r = runCli(['convert', join(FIXTURES, 'mixtral'), '--to', 'TE', '-o', join(t.dir, 'x')]);
      expect(r.code).toBe(4);
      expect(r.stderr).toMatch(/unknown layout 'TE' \(did you mean 'te'\?\)/);
      expect(runCli(['convert', join(FIXTURES, 'mixtral'), '--to', 'megatron-grouped2', '-o', join(t.dir, 'x')]).stderr).toMatch(
        /did you mean 'megatron-grouped'/,
      );
      const p = runCli(['convert', join(FIXTURES, 'mixtral'), '--to', 'te', '-o', '/proc/moekit-x']);
      expect(p.code).toBe(5);
      expect(p.stderr.trim()).toMatch(/^moekit: error: cannot write into \/proc \(\w+\); choose an -o in a writable folder$/);
    } finally {
      t.cleanup();
    }
  });

  it('inspect of a sharded folder summarises its manifest and names missing rank folders', async () => {
    const t = tempDir();
    try {
      const dst = join(t.dir, 'sh');
      expect(runCli(['shard', join(FIXTURES, 'qwen3_moe'), '--ep', '2', '--etp', '2', '-o', dst, '--no-fsync']).code).toBe(0);
      const r = runCli(['inspect', dst, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j).toMatchObject({ kind: 'sharded', ep: 2, etp: 2, placement: 'contiguous', missing: [] });
      expect(j.ranks).toHaveLength(4);
      const { rmSync } = await import('node:fs');
      rmSync(join(dst, j.ranks[3].dir), { recursive: true });
      const m = runCli(['inspect', dst]);
      expect(m.stdout).toMatch(new RegExp(`missing +1 rank folder\\(s\\): ${j.ranks[3].dir}`));
    } finally {
      t.cleanup();
    }
  });
});

describe('--verbose', () => {
  it('a line per weight file written, anywhere on the line; nothing of it without the flag', () => {
    const t = tempDir();
    try {
      const r = runCli(['convert', '-v', join(FIXTURES, 'deepseek_v3'), '--to', 'te', '--max-shard-size', '100KB', '-o', join(t.dir, 'v')]);
      expect(r.code, r.stderr).toBe(0);
      const lines = r.stderr.split('\n').filter((l) => l.startsWith('wrote '));
      expect(lines.length).toBeGreaterThan(5);
      expect(lines[0]).toMatch(/^wrote model-00001-of-000\d\d\.safetensors: \d+ tensors, [\d.]+ kB$/);
      const q = runCli(['convert', join(FIXTURES, 'deepseek_v3'), '--to', 'te', '--max-shard-size', '100KB', '-o', join(t.dir, 'q')]);
      expect(q.stderr).not.toMatch(/^wrote /m);
    } finally {
      t.cleanup();
    }
  });
});
