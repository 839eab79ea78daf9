// Hub ids (org/name[@revision]) resolved in a Hugging Face cache laid out as huggingface_hub does:
// refs/<branch> → commit, snapshots/<commit>/<file> → symlink into ../../blobs/<hash>.
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, sep } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { FIXTURES, ROOT, runCli, tempDir } from './helpers.js';

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
    // the card names the Hub repo it came from
    expect(readFileSync(join(out, 'README.md'), 'utf8')).toMatch(/\nbase_model: mistralai\/Mixtral-tiny\n/);
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
    const off = { ...env, HF_HUB_OFFLINE: '1' };
    const r = runCli(['inspect', 'Qwen/Qwen3-30B-A3B'], { env: off });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toMatch(
      /^moekit: error: Qwen\/Qwen3-30B-A3B: not found in the Hugging Face cache \(.*\); download it first: hf download Qwen\/Qwen3-30B-A3B/,
    );
    expect(runCli(['inspect', 'mistralai/Mixtral-tiny@v2'], { env: off }).stderr).toMatch(
      /no revision 'v2' .* hf download mistralai\/Mixtral-tiny --revision v2/,
    );
    // path tricks are not ids
    expect(runCli(['inspect', '../etc'], { env: off }).stderr).toMatch(/\.\.\/etc: no such file or folder/);
  });
});

/** The CLI without blocking this process (the mock Hub below answers from it). */
function runAsync(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const p = spawn(process.execPath, [join(ROOT, 'bin', 'moekit.js'), ...args], {
      env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp', ...env },
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('close', (code) => res({ code: code ?? -1, stdout, stderr }));
  });
}

/**
 * A local server that serves folders the way the Hub does: the revision API (sha, siblings),
 * /resolve/ answering weight files with a 302 to a CDN path, ranged GETs (206 + Content-Range),
 * and a repo that needs a token.
 */
/** every file under `dir`, as repo paths ('a/b.txt'), as the Hub's siblings list them */
const filesUnder = (dir: string): string[] =>
  (readdirSync(dir, { recursive: true }) as string[]).filter((f) => statSync(join(dir, f)).isFile()).map((f) => f.split(sep).join('/'));

function mockHub(repos: Record<string, string>, token: string): Promise<{ url: string; close: () => void; ranges: string[] }> {
  const ranges: string[] = [];
  const sha = (id: string) => createHash('sha1').update(id).digest('hex');
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const deny = () => {
      res.writeHead(401).end('{"error":"unauthorized"}');
    };
    let m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(u.pathname);
    if (m) {
      const dir = repos[m[1]!];
      if (!dir) return void res.writeHead(404).end('{}');
      if (m[1]!.startsWith('private/') && req.headers.authorization !== `Bearer ${token}`) return deny();
      return void res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ id: m[1], sha: sha(m[1]!), siblings: filesUnder(dir).map((rfilename) => ({ rfilename })) }));
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([0-9a-f]{40})\/(.+)$/.exec(u.pathname);
    if (m) {
      if (m[1]!.startsWith('private/') && req.headers.authorization !== `Bearer ${token}`) return deny();
      // weight files live on the "CDN": a redirect, as the Hub sends LFS files
      if (m[3]!.endsWith('.safetensors')) return void res.writeHead(302, { location: `/cdn/${m[1]}/${m[3]}` }).end();
      return void res.writeHead(200).end(readFileSync(join(repos[m[1]!]!, m[3]!)));
    }
    m = /^\/cdn\/([^/]+\/[^/]+)\/(.+)$/.exec(u.pathname);
    if (m) {
      const body = readFileSync(join(repos[m[1]!]!, m[2]!));
      const r = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (!r) return void res.writeHead(200).end(body);
      ranges.push(req.headers.range!);
      const a = Number(r[1]);
      const b = Math.min(Number(r[2]), body.length - 1);
      return void res.writeHead(206, { 'content-range': `bytes ${a}-${b}/${body.length}` }).end(body.subarray(a, b + 1));
    }
    res.writeHead(404).end();
  });
  return new Promise((ok) =>
    server.listen(0, '127.0.0.1', () => ok({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close(), ranges })),
  );
}

describe('Hub ids not in the cache stream from the Hub (a local server that answers as the Hub does)', () => {
  it('inspect reads headers only; convert streams every tensor through ranged reads; verify matches transformers; a private repo needs HF_TOKEN', async () => {
    const sharded = join(tmp.dir, 'ds-remote');
    expect(runCli(['convert', join(FIXTURES, 'deepseek_v3'), '--to', 'hf', '--max-shard-size', '60000', '-o', sharded]).code).toBe(0);
    const hub = await mockHub({ 'org/mixtral': join(FIXTURES, 'mixtral'), 'org/ds': sharded, 'private/mixtral': join(FIXTURES, 'mixtral') }, 'sekrit');
    try {
      const env = { HF_ENDPOINT: hub.url, HF_HUB_CACHE: join(tmp.dir, 'empty-cache') };
      const i = await runAsync(['inspect', 'org/mixtral', '--json'], env);
      expect(i.code, i.stderr).toBe(0);
      expect(JSON.parse(i.stdout).numExperts).toBe(8);
      expect(hub.ranges.length).toBe(2); // the 8-byte length and the header: no tensor bytes
      const out = join(tmp.dir, 'remote-te');
      const c = await runAsync(['convert', 'org/ds', '--to', 'te', '-o', out], env);
      expect(c.code, c.stderr).toBe(0);
      expect(readFileSync(join(out, 'README.md'), 'utf8')).toMatch(/\nbase_model: org\/ds\n/);
      const v = await runAsync(['verify', out, join(FIXTURES, 'deepseek_v3'), '--cpu'], {});
      expect(v.code, v.stdout + v.stderr).toBe(0);
      const p = await runAsync(['inspect', 'private/mixtral'], env);
      expect(p.stderr).toMatch(/refused access \(401\); set HF_TOKEN/);
      expect((await runAsync(['inspect', 'private/mixtral'], { ...env, HF_TOKEN: 'sekrit' })).code).toBe(0);
      expect((await runAsync(['inspect', 'org/none'], env)).stderr).toMatch(/org\/none: not on the Hub \(404/);
    } finally {
      hub.close();
    }
  }, 60_000);

  it('the output of a Hub model is a complete model folder: tokenizer, generation config, remote code and card fetched; other weights skipped', async () => {
    const repo = join(tmp.dir, 'hub-repo');
    mkdirSync(join(repo, 'original'), { recursive: true });
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) copyFileSync(join(FIXTURES, 'mixtral', f), join(repo, f));
    const tokModel = Buffer.from([0, 1, 2, 255, 254, 10, 13, 0]);
    writeFileSync(join(repo, 'tokenizer.json'), '{"version":"1.0"}');
    writeFileSync(join(repo, 'tokenizer.model'), tokModel);
    writeFileSync(join(repo, 'modeling_custom.py'), '# remote code\n');
    writeFileSync(join(repo, 'README.md'), '---\nlicense: apache-2.0\n---\n# The original card\n');
    writeFileSync(join(repo, 'pytorch_model.bin'), 'stale');
    writeFileSync(join(repo, 'original', 'consolidated.00.pth'), 'stale');
    const hub = await mockHub({ 'org/full': repo }, 'x');
    try {
      const env = { HF_ENDPOINT: hub.url, HF_HUB_CACHE: join(tmp.dir, 'empty-cache') };
      const out = join(tmp.dir, 'hub-full-te');
      const c = await runAsync(['convert', 'org/full', '--to', 'te', '-o', out, '--json'], env);
      expect(c.code, c.stderr).toBe(0);
      expect(readFileSync(join(out, 'tokenizer.json'), 'utf8')).toBe('{"version":"1.0"}');
      expect(readFileSync(join(out, 'tokenizer.model')).equals(tokModel)).toBe(true);
      expect(readFileSync(join(out, 'modeling_custom.py'), 'utf8')).toBe('# remote code\n');
      expect(readFileSync(join(out, 'generation_config.json')).equals(readFileSync(join(repo, 'generation_config.json')))).toBe(true);
      const card = readFileSync(join(out, 'README.md'), 'utf8');
      expect(card).toMatch(/^---\nlicense: apache-2.0\nbase_model: org\/full\n/);
      expect(card).toMatch(/## Original model card\n\n# The original card/);
      expect(existsSync(join(out, 'pytorch_model.bin'))).toBe(false);
      expect(existsSync(join(out, 'original'))).toBe(false);
      expect(JSON.parse(c.stdout).skipped).toEqual(['original/', 'pytorch_model.bin']);
      expect(c.stderr).toMatch(/skipped: pytorch_model\.bin/);
      // a rank folder of a shard made from the Hub is a complete model folder too
      const ep = join(tmp.dir, 'hub-full-ep2');
      const s = await runAsync(['shard', 'org/full', '--ep', '2', '-o', ep], env);
      expect(s.code, s.stderr).toBe(0);
      for (const r of ['ep0-of-2', 'ep1-of-2']) expect(readFileSync(join(ep, r, 'tokenizer.model')).equals(tokModel)).toBe(true);
    } finally {
      hub.close();
    }
  }, 60_000);
});
