/**
 * Regression tests for the reliability findings (hostile metadata, huge numbers, FIFOs, lying files,
 * concurrent writers): each is refused with one short line and a documented exit code, quickly,
 * and leaves nothing behind.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { bufferSource, writeCheckpoint } from '../src/store/safetensors/writer.js';
import { FIXTURES, ROOT, runCli, tempDir, type CliResult } from './helpers.js';

const tmp = tempDir('moekit-rel-');
afterAll(() => tmp.cleanup());
let n = 0;
const out = (name: string) => join(tmp.dir, `${n++}-${name}`);

/** A copy of a fixture that a test may edit. */
function copyOf(fixture: string): string {
  const d = out(fixture);
  cpSync(join(FIXTURES, fixture), d, { recursive: true });
  return d;
}

const editJson = (path: string, edit: (j: Record<string, unknown>) => void) => {
  const j = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  edit(j);
  writeFileSync(path, JSON.stringify(j));
};

/** One line on stderr, the exit code given, and (when named) no destination left. */
function refused(r: CliResult, code: number, re: RegExp, dst?: string): void {
  expect(r.code, r.stderr).toBe(code);
  expect(r.stderr).toMatch(/^moekit: error: [^\n]+\n$/);
  expect(r.stderr.length).toBeLessThan(800);
  expect(r.stderr).toMatch(re);
  if (dst) expect(existsSync(dst)).toBe(false);
}

describe('hostile tensor names and metadata', () => {
  it('a tensor named __proto__ (or constructor) converts, shards and merges into valid files', async () => {
    const src = out('proto');
    const ck = await openStore(join(FIXTURES, 'mixtral'));
    const entries = [];
    for (const t of ck.tensors.values()) entries.push({ name: t.name, dtype: t.dtype, shape: t.shape, source: bufferSource(Buffer.from(await ck.read(t))) });
    entries.push({ name: '__proto__', dtype: 'F32' as const, shape: [2], source: bufferSource(new Uint8Array(new Float32Array([1, 2]).buffer)) });
    entries.push({ name: 'constructor', dtype: 'F32' as const, shape: [1], source: bufferSource(new Uint8Array(new Float32Array([3]).buffer)) });
    await writeCheckpoint(src, entries, { fsync: false });
    await ck.close();
    cpSync(join(FIXTURES, 'mixtral', 'config.json'), join(src, 'config.json'));
    const c = out('proto-te');
    expect(runCli(['convert', src, '--to', 'te', '--no-fsync', '-o', c]).code).toBe(0);
    const s = out('proto-sh');
    expect(runCli(['shard', c, '--ep', '2', '--no-fsync', '-o', s]).code).toBe(0);
    const m = out('proto-merged');
    const r = runCli(['merge', s, '--to', 'hf', '--no-fsync', '-o', m]);
    expect(r.code, r.stderr).toBe(0);
    const back = await openStore(m);
    expect([...new Float32Array(Uint8Array.from(await back.read('__proto__')).buffer)]).toEqual([1, 2]);
    expect([...new Float32Array(Uint8Array.from(await back.read('constructor')).buffer)]).toEqual([3]);
    await back.close();
  });

  it('a manifest whose source.metadata is not an object of strings is refused by merge and reshard', () => {
    const s = out('meta-sh');
    expect(runCli(['shard', join(FIXTURES, 'mixtral'), '--ep', '2', '--no-fsync', '-o', s]).code).toBe(0);
    for (const bad of ['x', { a: 1 }, [1]]) {
      editJson(join(s, 'moekit-manifest.json'), (m) => {
        (m.source as Record<string, unknown>).metadata = bad;
        delete m.digest;
      });
      for (const cmd of [
        ['merge', s],
        ['reshard', s, '--ep', '4'],
      ]) {
        const dst = out('never');
        refused(runCli([...cmd, '-o', dst]), 2, /source\.metadata.* must be (an object|a string)/, dst);
      }
    }
  });

  it('manifests and moekit.json of the wrong shape are one-line errors, never a stack trace', () => {
    const s = out('shape-sh');
    expect(runCli(['shard', join(FIXTURES, 'mixtral'), '--ep', '2', '--no-fsync', '-o', s]).code).toBe(0);
    const man = join(s, 'moekit-manifest.json');
    const orig = readFileSync(man, 'utf8');
    const cases: [string, (m: Record<string, unknown>) => void, RegExp][] = [
      ['no rank 0', (m) => ((m.ranks as { index: number }[])[0]!.index = 5), /ranks must be numbered 0\.\.1/],
      ['ranks not an array', (m) => (m.ranks = { a: 1 }), /ranks must be an array/],
      ['experts of the wrong type', (m) => ((m.ranks as Record<string, unknown>[])[0]!.experts = 'all'), /ranks\[0\]\.experts must be an array/],
      ['a rank folder with a path', (m) => ((m.ranks as Record<string, unknown>[])[0]!.dir = '../../etc'), /must be a plain folder name/],
      ['huge ep', (m) => (m.ep = 1e12), /ep must be an integer in 1\.\.65536/],
    ];
    for (const [what, edit, re] of cases) {
      writeFileSync(man, orig);
      editJson(man, (m) => {
        edit(m);
        delete m.digest;
      });
      for (const cmd of [
        ['merge', s, '-o', out('never')],
        ['reshard', s, '--ep', '4', '-o', out('never')],
        ['verify', s, '--cpu', '--reference', join(FIXTURES, 'mixtral', 'reference.safetensors')],
      ]) {
        const r = runCli(cmd);
        refused(r, 2, re);
        expect(r.stderr, what).not.toMatch(/internal error|at .*\.js:\d+/);
      }
    }
    writeFileSync(man, orig);
    const mk = join(s, 'ep0-of-2', 'moekit.json');
    const origMk = readFileSync(mk, 'utf8');
    for (const [edit, re] of [
      [(j: Record<string, unknown>) => (j.layers = 'x'), /layers must be an array/],
      [(j: Record<string, unknown>) => ((j.layers as Record<string, unknown>[])[0]!.globalExperts = 'x'), /globalExperts must be an array/],
      [(j: Record<string, unknown>) => ((j.routing as Record<string, unknown>).nGroup = 1e9), /routing\.nGroup must be an integer/],
    ] as const) {
      writeFileSync(mk, origMk);
      editJson(mk, (j) => {
        edit(j);
        delete j.digest;
      });
      refused(runCli(['merge', s, '-o', out('never')]), 2, re);
    }
  });
});

describe('huge numbers in config.json and moekit.json', () => {
  for (const [field, value] of [
    ['num_hidden_layers', 1e9],
    ['num_hidden_layers', 2 ** 31],
    ['num_hidden_layers', 1e12],
    ['n_group', 2 ** 53 + 1],
    ['hidden_size', 2 ** 53 + 1],
    ['num_local_experts', -1],
    ['num_experts_per_tok', 2.5],
  ] as const) {
    it(`${field} = ${value}: inspect, convert and verify refuse it at once (exit 2)`, () => {
      const d = copyOf('mixtral');
      editJson(join(d, 'config.json'), (c) => (c[field] = value));
      const t0 = Date.now();
      refused(runCli(['inspect', d]), 2, new RegExp(`config\\.json: ${field} must be an integer`));
      refused(runCli(['verify', d, join(FIXTURES, 'mixtral'), '--cpu']), 2, new RegExp(field));
      const dst = out('never');
      refused(runCli(['convert', d, '--to', 'te', '-o', dst]), 2, new RegExp(field), dst);
      expect(Date.now() - t0).toBeLessThan(10_000);
    });
  }
  it('a 10^6-element data_offsets is reported in a short line', () => {
    const d = out('offsets');
    mkdirSync(d);
    const header = Buffer.from(JSON.stringify({ a: { dtype: 'F32', shape: [1], data_offsets: Array.from({ length: 1e6 }, (_, i) => i) } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(join(d, 'model.safetensors'), Buffer.concat([len, header, Buffer.alloc(8)]));
    const r = runCli(['inspect', d]);
    expect(r.code).toBe(2);
    expect(r.stderr.length).toBeLessThan(800);
  });
});

describe('only regular files are read', () => {
  const fifo = (p: string) => execFileSync('mkfifo', [p]);
  for (const what of ['config.json', 'moekit.json', 'model.safetensors', 'model.safetensors.index.json']) {
    it(`a FIFO as ${what} is refused, not waited on`, async () => {
      const d = copyOf('mixtral');
      if (what === 'moekit.json' || what === 'model.safetensors.index.json') {
        fifo(join(d, what));
      } else {
        execFileSync('rm', [join(d, what)]);
        fifo(join(d, what));
      }
      const r = runCli(['inspect', d]);
      refused(r, 2, /not a regular file/);
    });
  }
  it('a weight_map entry and a side file that lead to /dev/urandom', () => {
    const d = copyOf('mixtral');
    symlinkSync('/dev/urandom', join(d, 'model-00002-of-00002.safetensors'));
    writeFileSync(join(d, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { x: 'model-00002-of-00002.safetensors' } }));
    refused(runCli(['inspect', d]), 2, /not a regular file|outside the checkpoint folder/);
    const e = copyOf('mixtral');
    symlinkSync('/dev/urandom', join(e, 'tokenizer.model'));
    const dst = out('side');
    expect(runCli(['convert', e, '--to', 'te', '--no-fsync', '-o', dst]).code).toBe(0);
    expect(readdirSync(dst)).not.toContain('tokenizer.model');
  });
});

describe('PyTorch containers are recognised by content, whatever the file is called (no code runs on load)', () => {
  it('a damaged torch.save zip and DCP folder: exit 2, one line naming the container; a legacy pickle: exit 4', () => {
    const d = out('containers');
    mkdirSync(d);
    writeFileSync(join(d, 'weights.safetensors'), Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(64)]));
    refused(runCli(['inspect', join(d, 'weights.safetensors')]), 2, /not a readable torch\.save zip \(no end-of-central-directory record\)/);
    writeFileSync(join(d, 'model.bin'), Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
    refused(runCli(['inspect', join(d, 'model.bin')]), 4, /legacy .*torch\.save pickle/);
    const dcp = out('dcp');
    mkdirSync(dcp);
    writeFileSync(join(dcp, '.metadata'), 'x');
    writeFileSync(join(dcp, '__0_0.distcp'), 'x');
    refused(runCli(['inspect', dcp]), 2, /\.metadata: not a pickle moekit can read/);
  });
});

describe('lying metadata is cross-checked, not trusted', () => {
  it('moekit.json with gateUp flipped or family changed is refused (digest), and a family that contradicts config.json too', () => {
    const c = out('lie-nemo');
    expect(runCli(['convert', join(FIXTURES, 'qwen3_moe'), '--to', 'nemo', '--no-fsync', '-o', c]).code).toBe(0);
    const mk = join(c, 'moekit.json');
    const orig = readFileSync(mk, 'utf8');
    editJson(mk, (j) => (j.gateUp = 'interleaved'));
    refused(runCli(['convert', c, '--to', 'hf', '-o', out('never')]), 2, /moekit\.json: digest does not match/);
    writeFileSync(mk, orig);
    editJson(mk, (j) => {
      j.family = 'mixtral';
      delete j.digest;
    });
    refused(runCli(['convert', c, '--to', 'hf', '-o', out('never')]), 2, /family 'mixtral' disagrees with config\.json/);
    writeFileSync(mk, orig);
    editJson(mk, (j) => {
      j.layout = 'te';
      delete j.digest;
    });
    refused(runCli(['inspect', c]), 2, /moekit\.json says layout 'te', but no expert tensor is named that way/);
  });

  it("a rank's moekit.json that disagrees with the manifest is refused", () => {
    const s = out('lie-sh');
    expect(runCli(['shard', join(FIXTURES, 'qwen3_moe'), '--ep', '2', '--to', 'nemo', '--no-fsync', '-o', s]).code).toBe(0);
    editJson(join(s, 'ep1-of-2', 'moekit.json'), (j) => {
      j.gateUp = 'interleaved';
      delete j.digest;
    });
    refused(runCli(['merge', s, '-o', out('never')]), 2, /rank ep1-of-2: moekit\.json says gate\/up order 'interleaved', moekit-manifest\.json says 'concat'/);
    editJson(join(s, 'moekit-manifest.json'), (m) => ((m.source as Record<string, unknown>).layout = 'nope'));
    refused(runCli(['merge', s, '-o', out('never')]), 2, /source\.layout must be one of/);
  });
});

describe('two writers, one destination', () => {
  it('run concurrently: one wins, the other gets one line and exit 5, the result is complete', async () => {
    const parent = out('race');
    mkdirSync(parent);
    const dst = join(parent, 'dst');
    const run = () =>
      new Promise<{ code: number | null; stderr: string }>((res) => {
        const p = spawn(process.execPath, [join(ROOT, 'bin', 'moekit.js'), 'convert', join(FIXTURES, 'deepseek_v3'), '--to', 'nemo', '-o', dst], {
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        p.stderr.on('data', (d) => (stderr += String(d)));
        p.on('exit', (code) => res({ code, stderr }));
      });
    const rs = await Promise.all([run(), run(), run()]);
    const ok = rs.filter((r) => r.code === 0);
    expect(ok.length).toBeGreaterThanOrEqual(1);
    for (const r of rs.filter((x) => x.code !== 0)) {
      expect(r.code).toBe(5);
      expect(r.stderr).toMatch(/^moekit: error: .*(being written by another moekit run|exists and is not empty)[^\n]*\n$/);
    }
    expect(readdirSync(parent)).toEqual(['dst']);
    expect(runCli(['verify', dst, '--cpu', '--reference', join(FIXTURES, 'deepseek_v3', 'reference.safetensors')]).code).toBe(0);
  });
});

describe('CLI conventions', () => {
  it('a mistyped option is one usage line (exit 2) naming the nearest one, before any other complaint', () => {
    for (const [args, re] of [
      [['convert', join(FIXTURES, 'mixtral'), '--to', 'te', '--ouput', '/tmp/x'], /unknown option '--ouput' for moekit convert \(did you mean --output\?\)/],
      [
        ['shard', join(FIXTURES, 'mixtral'), '--ep', '2', '--fromat', 'torch', '-o', '/tmp/x'],
        /unknown option '--fromat' for moekit shard \(did you mean --format\?\)/,
      ],
      [['inspect', join(FIXTURES, 'mixtral'), '--jsn'], /unknown option '--jsn' for moekit inspect \(did you mean --json\?\)/],
    ] as const) {
      const r = runCli([...args]);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(re);
    }
    // global options pass anywhere
    expect(runCli(['inspect', '--strict', join(FIXTURES, 'mixtral'), '-q']).code).toBe(0);
  });
});
