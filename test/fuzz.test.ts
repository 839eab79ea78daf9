/** A short seeded run of the fuzz suite (`npm run fuzz` runs longer ones): no crash, hang, leftover or wrong result. */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './helpers.js';

describe('fuzz (short run)', () => {
  it('400 seeded cases over every input kind (safetensors, JSON, manifests, torch.save zips, DCP and Megatron checkpoints): every failure is one line with a documented code', () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'dist', 'fuzz', 'run.js'), '--cases', '400', '--seed', '11'], { encoding: 'utf8', timeout: 180_000 });
    expect(r.stdout, r.stderr).toMatch(/fuzz: 400 cases/);
    expect(r.stdout).toMatch(/ok +\d+/);
    expect(r.stdout).toMatch(/refused \(bad-input\) +\d+/);
    expect(r.stdout).toMatch(/fuzz: 0 crashes, 0 hangs, 0 over-cap, 0 leftovers, 0 wrong results/);
    expect(r.status).toBe(0);
  }, 200_000);
});
