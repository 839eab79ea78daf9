import { describe, expect, it, afterAll } from 'vitest';
import { writeFileSync, readFileSync, mkdirSync, readdirSync, copyFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { parseSafetensorsMetadata } from '@huggingface/hub';
import type { TensorStore } from '../src/store/types.js';
import { openStore } from '../src/store/registry.js';
import { sharedPool } from '../src/store/pool.js';
import { writeCheckpoint, encodeHeader, type WriteEntry } from '../src/store/safetensors/writer.js';
import { FIXTURES, fixtureNames, runCli, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());

/** Entries that copy every tensor of `ck` through the streaming chunk reader. */
function copyEntries(ck: TensorStore): WriteEntry[] {
  return [...ck.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, source: () => ck.chunks(t) }));
}

async function expectSameTensors(a: TensorStore, b: TensorStore): Promise<void> {
  expect(b.names().sort()).toEqual(a.names().sort());
  for (const t of a.tensors.values()) {
    const u = b.info(t.name);
    expect([u.dtype, u.shape]).toEqual([t.dtype, t.shape]);
    expect(Buffer.compare(await a.read(t), await b.read(u)), t.name).toBe(0);
  }
}

describe('read → write round trip', () => {
  for (const name of fixtureNames()) {
    it(`${name}: every tensor byte-identical, metadata kept`, async () => {
      const src = await openStore(join(FIXTURES, name));
      const out = join(tmp.dir, `rt-${name}`);
      await writeCheckpoint(out, copyEntries(src), { metadata: src.metadata });
      const dst = await openStore(out);
      await expectSameTensors(src, dst);
      expect(dst.metadata).toEqual(src.metadata);
      expect(readdirSync(out).filter((f) => f.includes('moekit-tmp'))).toEqual([]);
      await src.close();
      await dst.close();
    });
  }

  it('sharded write with a small max shard size reads back identical', async () => {
    const src = await openStore(join(FIXTURES, 'deepseek_v3'));
    const out = join(tmp.dir, 'sharded');
    const res = await writeCheckpoint(out, copyEntries(src), { maxShardSize: 100_000, metadata: { format: 'pt' } });
    const files = readdirSync(out).sort();
    const n = files.filter((f) => f.endsWith('.safetensors')).length;
    expect(n).toBeGreaterThan(5);
    expect(files).toContain(`model-00001-of-${String(n).padStart(5, '0')}.safetensors`);
    const index = JSON.parse(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8'));
    expect(index.metadata.total_size).toBe(src.totalBytes);
    expect(Object.keys(index.weight_map).length).toBe(src.tensors.size);
    expect(res.totalSize).toBe(src.totalBytes);
    const dst = await openStore(out);
    expect(dst.files.length).toBe(n);
    await expectSameTensors(src, dst);
    // every shard but the one holding an oversized tensor stays under the limit
    for (const f of dst.files) {
      const held = [...dst.tensors.values()].filter((t) => t.file === f);
      const bytes = held.reduce((s, t) => s + t.nbytes, 0);
      expect(bytes <= 100_000 || held.length === 1).toBe(true);
    }
    await src.close();
    await dst.close();
  });

  it('headers agree with @huggingface/hub parseSafetensorsMetadata (independent parser)', async () => {
    const dir = join(tmp.dir, 'sharded');
    const fetchLocal = async (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
      const u = new URL(String(url instanceof Request ? url.url : url));
      const file = join(dir, decodeURIComponent(/\/(?:resolve|raw)\/main\/(.*)$/.exec(u.pathname)?.[1] ?? ''));
      let data: Buffer;
      try {
        data = readFileSync(file);
      } catch {
        return new Response('not found', { status: 404 });
      }
      const range = new Headers(init?.headers ?? (url instanceof Request ? url.headers : undefined)).get('Range');
      if (range) {
        const m = /bytes=(\d+)-(\d+)?/.exec(range)!;
        const s = Number(m[1]);
        const e = m[2] ? Math.min(Number(m[2]) + 1, data.length) : data.length;
        return new Response(data.subarray(s, e), {
          status: 206,
          headers: { 'Content-Range': `bytes ${s}-${e - 1}/${data.length}`, ETag: '"local"', 'Content-Length': String(e - s) },
        });
      }
      return new Response(init?.method === 'HEAD' ? null : data, { status: 200, headers: { ETag: '"local"', 'Content-Length': String(data.length) } });
    };
    const parsed = await parseSafetensorsMetadata({
      repo: 'local/x',
      path: 'model.safetensors.index.json',
      fetch: fetchLocal as typeof fetch,
      hubUrl: 'http://local',
    });
    expect(parsed.sharded).toBe(true);
    const ck = await openStore(dir);
    if (!parsed.sharded) return;
    for (const [file, header] of Object.entries(parsed.headers)) {
      for (const [name, e] of Object.entries(header)) {
        if (name === '__metadata__') continue;
        const t = ck.info(name);
        const entry = e as { dtype: string; shape: number[]; data_offsets: [number, number] };
        expect(t.file.endsWith(file)).toBe(true);
        expect([entry.dtype, entry.shape, entry.data_offsets[1] - entry.data_offsets[0]]).toEqual([t.dtype, t.shape, t.nbytes]);
      }
    }
    await ck.close();
  });

  it('streams a tensor larger than one pool chunk in several chunks', async () => {
    const n = 5 * 1024 * 1024; // 20 MiB of f32: several pool chunks
    const data = Buffer.alloc(n * 4);
    for (let i = 0; i < n; i++) data.writeUInt32LE((i * 2654435761) >>> 0, i * 4);
    const a = join(tmp.dir, 'big-a');
    // the producer hands the writer uneven pieces; the reader streams back in pool-sized chunks
    await writeCheckpoint(a, [
      {
        name: 'w',
        dtype: 'F32',
        shape: [n],
        source: async function* () {
          yield { data: data.subarray(0, 3_000_001) };
          yield { data: data.subarray(3_000_001) };
        },
      },
    ]);
    const ck = await openStore(a);
    let chunks = 0;
    const parts: Buffer[] = [];
    for await (const c of ck.chunks('w')) {
      chunks++;
      parts.push(Buffer.from(c.data));
      c.release?.();
    }
    expect(chunks).toBe(Math.ceil(data.length / sharedPool.chunkSize));
    expect(chunks).toBeGreaterThan(1);
    expect(Buffer.compare(Buffer.concat(parts), data)).toBe(0);
    await ck.close();
  });

  it('refuses a source that produces the wrong number of bytes and leaves no files behind', async () => {
    const out = join(tmp.dir, 'short');
    await expect(
      writeCheckpoint(out, [
        {
          name: 'w',
          dtype: 'F32',
          shape: [4],
          source: async function* () {
            yield { data: Buffer.alloc(12) };
          },
        },
      ]),
    ).rejects.toThrow(/produced 12 bytes, expected 16/);
    expect(readdirSync(out)).toEqual([]);
  });
});

// ---------- hostile input ----------

function stFile(header: unknown, dataLen: number, opts: { lengthOverride?: bigint } = {}): Buffer {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(opts.lengthOverride ?? BigInt(json.length));
  return Buffer.concat([len, json, Buffer.alloc(dataLen)]);
}

function expectRefused(path: string, pattern: RegExp): void {
  const r = runCli(['inspect', path]);
  expect(r.code, r.stderr).toBe(2);
  const lines = r.stderr.trim().split('\n');
  expect(lines.length, r.stderr).toBe(1);
  expect(lines[0]).toMatch(/^moekit: error: /);
  expect(lines[0]).toMatch(pattern);
}

describe('hostile safetensors files: one-line error, exit 2', () => {
  const dir = join(tmp.dir, 'hostile');
  mkdirSync(dir, { recursive: true });
  const write = (name: string, buf: Buffer) => {
    const p = join(dir, name);
    writeFileSync(p, buf);
    return p;
  };
  const good = { a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } };

  it('header length larger than the file', () => {
    expectRefused(
      write('biglen.safetensors', stFile(good, 16, { lengthOverride: 5000n })),
      /biglen\.safetensors: header length 5000 bytes is larger than the file/,
    );
  });
  it('absurd header length (> 100 MB)', () => {
    expectRefused(write('absurd.safetensors', stFile(good, 16, { lengthOverride: 1n << 40n })), /absurd\.safetensors: header length \d+ bytes is absurd/);
  });
  it('file shorter than 8 bytes', () => {
    expectRefused(write('tiny.safetensors', Buffer.from([1, 2, 3])), /tiny\.safetensors: file is 3 bytes, too short/);
  });
  it('header that is not a JSON object', () => {
    expectRefused(write('array.safetensors', stFile([1, 2], 0)), /array\.safetensors: header is not a JSON object/);
    expectRefused(write('garbage.safetensors', stFile('{"a": nope', 0)), /garbage\.safetensors: header is not valid JSON/);
  });
  it('unknown dtype', () => {
    expectRefused(
      write('dtype.safetensors', stFile({ a: { dtype: 'F128', shape: [1], data_offsets: [0, 16] } }, 16)),
      /dtype\.safetensors: tensor 'a': unknown dtype "F128"/,
    );
  });
  it('data_offsets past the end (truncated data)', () => {
    expectRefused(
      write('oob.safetensors', stFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 8)),
      /oob\.safetensors: tensor 'a': data_offsets \[0, 16\] run past the end/,
    );
  });
  it('data_offsets not matching dtype × shape', () => {
    expectRefused(
      write('size.safetensors', stFile({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, 16)),
      /tensor 'a': data_offsets span 16 bytes but F32\[3\] needs 12/,
    );
  });
  it('overlapping tensors', () => {
    const h = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } };
    expectRefused(write('overlap.safetensors', stFile(h, 12)), /overlap\.safetensors: tensor 'b': data_offsets \[4, 12\] overlap/);
  });
  it('gap between tensors and trailing bytes', () => {
    const h = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [12, 20] } };
    expectRefused(write('gap.safetensors', stFile(h, 20)), /gap\.safetensors: gap of 4 unused bytes before tensor 'b'/);
    expectRefused(write('trailing.safetensors', stFile(good, 24)), /trailing\.safetensors: 8 trailing bytes after the last tensor/);
  });
  it('a real checkpoint truncated in its data section', () => {
    const full = readFileSync(join(FIXTURES, 'mixtral', 'model.safetensors'));
    expectRefused(
      write('cut.safetensors', full.subarray(0, full.length - 1000)),
      /cut\.safetensors: tensor '.+': data_offsets .* run past the end of the file/,
    );
  });
  it('negative or fractional shapes', () => {
    expectRefused(
      write('shape.safetensors', stFile({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4)),
      /shape \[-1\] is not a list of non-negative integers/,
    );
  });

  const shardDir = (name: string, weightMap: Record<string, string>, files: Record<string, Buffer>) => {
    const d = join(dir, name);
    mkdirSync(d, { recursive: true });
    for (const [f, b] of Object.entries(files)) writeFileSync(join(d, f), b);
    writeFileSync(join(d, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    return d;
  };
  const one = (name: string) => stFile({ [name]: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, 4);

  it('index.json pointing outside the checkpoint folder', () => {
    writeFileSync(join(dir, 'outside.safetensors'), one('x'));
    expectRefused(shardDir('escape', { x: '../outside.safetensors' }, {}), /weight_map points outside the checkpoint folder \('\.\.\/outside\.safetensors'\)/);
    expectRefused(shardDir('escape2', { x: 'sub/../../outside.safetensors' }, {}), /weight_map points outside the checkpoint folder/);
    expectRefused(shardDir('absolute', { x: join(dir, 'outside.safetensors') }, {}), /weight_map points to absolute path/);
  });
  it('index.json shard that is a symlink leading outside', () => {
    const d = shardDir('link', { x: 'a.safetensors' }, {});
    symlinkSync(join(dir, 'outside.safetensors'), join(d, 'a.safetensors'));
    expectRefused(d, /is a link that leads outside the checkpoint folder/);
  });
  it('index.json naming a missing file', () => {
    expectRefused(
      shardDir('missing', { x: 'model-00002-of-00002.safetensors' }, {}),
      /weight_map names 'model-00002-of-00002\.safetensors' \(for 'x'\), which does not exist/,
    );
  });
  it('the same tensor stored in two shards', () => {
    expectRefused(
      shardDir(
        'dup',
        { x: 'a.safetensors', y: 'b.safetensors' },
        {
          'a.safetensors': one('x'),
          'b.safetensors': stFile({ x: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, y: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, 8),
        },
      ),
      /tensor 'x' is stored twice, in a\.safetensors and b\.safetensors/,
    );
  });
  it('weight_map listing a tensor its file does not hold', () => {
    expectRefused(
      shardDir('lying', { x: 'a.safetensors', z: 'a.safetensors' }, { 'a.safetensors': one('x') }),
      /weight_map lists 'z' in a\.safetensors, but that file has no such tensor/,
    );
  });
  it('the source is never modified by reading', () => {
    const p = join(dir, 'ro.safetensors');
    copyFileSync(join(FIXTURES, 'qwen3_moe', 'model.safetensors'), p);
    const before = readFileSync(p);
    expect(runCli(['inspect', p, '--json']).code).toBe(0);
    expect(Buffer.compare(readFileSync(p), before)).toBe(0);
  });
  it('encodeHeader pads to 8 bytes with spaces', () => {
    const h = encodeHeader([{ name: 'abc', dtype: 'BF16', shape: [3] }], { k: 'v' });
    expect((h.length - 8) % 8).toBe(0);
    expect(h.subarray(8).toString().trimEnd()).toBe('{"__metadata__":{"k":"v"},"abc":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]}}');
  });
});
