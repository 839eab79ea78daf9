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
