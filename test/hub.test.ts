// Hub ids (org/name[@revision]) resolved in a Hugging Face cache laid out as huggingface_hub does:
// refs/<branch> → commit, snapshots/<commit>/<file> → symlink into ../../blobs/<hash>.
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FIXTURES, runCli, tempDir } from './helpers.js';

const tmp = tempDir('moekit-hub-');
afterAll(() => tmp.cleanup());

/** A cache holding `src`'s files as `org/name` at one commit (branch main), every file a link into blobs/. */
function cacheOf(src: string, org: string, name: string): { cache: string; commit: string } {
  const cache = join(tmp.dir, 'hub');
  const repo = join(cache, `models--${org}--${name}`);
  const commit = createHash('sha1').update(src).digest('hex');
  for (const d of ['blobs', 'refs', join('snapshots', commit)]) mkdirSync(join(repo, d), { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), commit);
  for (const f of readdirSync(src)) {
    const sha = createHash('sha256')
      .update(readFileSync(join(src, f)))
      .digest('hex');
    copyFileSync(join(src, f), join(repo, 'blobs', sha));
    symlinkSync(join('..', '..', 'blobs', sha), join(repo, 'snapshots', commit, f));
  }
  return { cache, commit };
}

describe('Hugging Face Hub ids from the local cache', () => {
  const { cache, commit } = cacheOf(join(FIXTURES, 'mixtral'), 'mistralai', 'Mixtral-tiny');
  const env = { HF_HUB_CACHE: cache };

  it('org/name, @main and @<commit> read the snapshot (its files links into blobs/)', () => {
    for (const id of ['mistralai/Mixtral-tiny', 'mistralai/Mixtral-tiny@main', `mistralai/Mixtral-tiny@${commit}`]) {
      const r = runCli(['inspect', id, '--json'], { env });
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).family).toBe('mixtral');
    }
    const out = join(tmp.dir, 'from-hub');
    expect(runCli(['convert', 'mistralai/Mixtral-tiny', '--to', 'te', '-o', out], { env }).code).toBe(0);
    expect(runCli(['verify', out, '--reference', join(FIXTURES, 'mixtral', 'reference.safetensors'), '--cpu']).code).toBe(0);
    // HF_HOME/hub is the cache when HF_HUB_CACHE is not set
    expect(runCli(['inspect', 'mistralai/Mixtral-tiny'], { env: { HF_HOME: join(cache, '..'), HF_HUB_CACHE: '' } }).code).toBe(0);
  });

  it('a sharded model in the cache: index and shards are links into blobs/, accepted; a link out of the repo is not', () => {
    const sharded = join(tmp.dir, 'ds-sharded');
    expect(runCli(['convert', join(FIXTURES, 'deepseek_v3'), '--to', 'hf', '--max-shard-size', '60000', '-o', sharded]).code).toBe(0);
    const c = cacheOf(sharded, 'deepseek-ai', 'DeepSeek-tiny');
    expect(runCli(['inspect', 'deepseek-ai/DeepSeek-tiny'], { env: { HF_HUB_CACHE: c.cache } }).code).toBe(0);
    const snap = join(c.cache, 'models--deepseek-ai--DeepSeek-tiny', 'snapshots', c.commit);
    const evil = readdirSync(snap).find((f) => f.endsWith('.safetensors'))!;
    const outside = join(tmp.dir, 'outside.safetensors');
    copyFileSync(join(snap, evil), outside);
    rmSync(join(snap, evil));
    symlinkSync(outside, join(snap, evil));
    expect(runCli(['inspect', 'deepseek-ai/DeepSeek-tiny'], { env: { HF_HUB_CACHE: c.cache } }).stderr).toMatch(
      /is a link that leads outside the checkpoint folder/,
    );
  });

  it('an id not in the cache, or a revision not downloaded, is one line saying how to download it', () => {
    const r = runCli(['inspect', 'Qwen/Qwen3-30B-A3B'], { env });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toMatch(
      /^moekit: error: Qwen\/Qwen3-30B-A3B: not found in the Hugging Face cache \(.*\); download it first: hf download Qwen\/Qwen3-30B-A3B/,
    );
    expect(runCli(['inspect', 'mistralai/Mixtral-tiny@v2'], { env }).stderr).toMatch(/no revision 'v2' .* hf download mistralai\/Mixtral-tiny --revision v2/);
    // path tricks are not ids
    expect(runCli(['inspect', '../etc'], { env }).stderr).toMatch(/\.\.\/etc: no such file or folder/);
  });
});
