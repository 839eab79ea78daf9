/**
 * Streaming safetensors writer. Tensors are written one at a time (in chunks) into temp files in
 * the destination folder; every file is fsynced and renamed into place only after all shards are
 * complete, so a failure leaves nothing partial behind. Shards follow HF naming
 * (model-00001-of-00003.safetensors + model.safetensors.index.json).
 */
import { mkdir, open, rename, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MoekitError } from '../../errors.js';
import { runEvents } from '../../output/events.js';
import { type Dtype, byteSize } from '../dtypes.js';
import type { Chunk } from '../pool.js';

export interface WriteEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Produces the tensor's bytes, in order, exactly byteSize(dtype, shape) of them. */
  source: () => AsyncIterable<Chunk>;
  /**
   * Writes the tensor's bytes itself at `position` of the open file `fd` (instead of source; the
   * safetensors writer uses it when given), reporting bytes as they are written; resolves with the count.
   */
  writeTo?: (fd: number, position: number, progress: (bytes: number) => void) => Promise<number>;
}

export interface WriteOptions {
  /** Split into shards of at most this many bytes of tensor data (a larger single tensor gets its own shard). */
  maxShardSize?: number;
  metadata?: Record<string, string>;
  /** File name stem; default 'model'. */
  stem?: string;
  /** Called after each chunk with total bytes and tensors written so far. */
  onProgress?: (bytes: number, tensors: number) => void;
  /** fsync files before renaming (default true). */
  fsync?: boolean;
}

export interface WriteResult {
  files: string[];
  totalSize: number;
  weightMap: Record<string, string>;
}

/** The hidden temp name a file is written under before its rename into place. */
export const tempName = (name: string) => `.${name}.moekit-tmp-${randomBytes(4).toString('hex')}`;

/** The HF index (`{metadata: {total_size}, weight_map}`, names sorted) written under a temp name in `dir`; returns it for the final rename. */
export async function writeIndexTemp(
  dir: string,
  index: string,
  weightMap: Record<string, string>,
  totalSize: number,
): Promise<{ tmp: string; final: string }> {
  const tmp = join(dir, tempName(index));
  const sorted: Record<string, string> = Object.create(null);
  for (const k of Object.keys(weightMap).sort()) sorted[k] = weightMap[k]!;
  await writeFile(tmp, JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sorted }, null, 2) + '\n');
  return { tmp, final: join(dir, index) };
}

/** Build the header bytes (8-byte LE length + JSON padded with spaces to a multiple of 8). */
export function encodeHeader(entries: { name: string; dtype: Dtype; shape: number[] }[], metadata?: Record<string, string>): Buffer {
  const obj: Record<string, unknown> = Object.create(null);
  if (metadata && Object.keys(metadata).length > 0) obj.__metadata__ = metadata;
  let off = 0;
  for (const e of entries) {
    const n = byteSize(e.dtype, e.shape);
    obj[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = Buffer.from(JSON.stringify(obj), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = Buffer.alloc(8 + json.length);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  return out;
}

/** Split entries into shards by size, keeping order. */
export function planShards<T extends { dtype: Dtype; shape: number[] }>(entries: T[], maxShardSize?: number): T[][] {
  if (!maxShardSize || maxShardSize <= 0) return [entries];
  const shards: T[][] = [];
  let cur: T[] = [];
  let size = 0;
  for (const e of entries) {
    const n = byteSize(e.dtype, e.shape);
    if (cur.length > 0 && size + n > maxShardSize) {
      shards.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(e);
    size += n;
  }
  if (cur.length > 0 || shards.length === 0) shards.push(cur);
  return shards;
}

export function shardFileName(stem: string, i: number, n: number): string {
  if (n === 1) return `${stem}.safetensors`;
  const p = (k: number) => String(k).padStart(5, '0');
  return `${stem}-${p(i + 1)}-of-${p(n)}.safetensors`;
}

async function writeAt(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.byteLength) {
    const { bytesWritten } = await fh.write(data, done, data.byteLength - done, position + done);
    done += bytesWritten;
  }
}

/** Positioned writes with a bounded number in flight; chunks are released once written. */
class WriteQueue {
  private inflight: Promise<void>[] = [];
  private failed: unknown;
  constructor(
    private readonly fh: FileHandle,
    private readonly depth: number,
  ) {}
  async push(c: Chunk, position: number): Promise<void> {
    if (this.failed) throw this.failed;
    const p = writeAt(this.fh, c.data, position).then(
      () => c.release?.(),
      (e) => {
        c.release?.();
        this.failed ??= e;
      },
    );
    this.inflight.push(p);
    if (this.inflight.length >= this.depth) await this.inflight.shift();
    if (this.failed) throw this.failed;
  }
  async drain(): Promise<void> {
    await Promise.all(this.inflight.splice(0));
    if (this.failed) throw this.failed;
  }
}

/** One weight file to write: its name and tensors in order. */
export interface FileEntries {
  name: string;
  entries: WriteEntry[];
}

/**
 * Write `entries` as a (possibly sharded) checkpoint into `dir`, split by `maxShardSize` with HF
 * names. Returns the files written (names relative to dir).
 */
export async function writeCheckpoint(dir: string, entries: WriteEntry[], opts: WriteOptions = {}): Promise<WriteResult> {
  const stem = opts.stem ?? 'model';
  const shards = planShards(entries, opts.maxShardSize);
  const files = shards.map((e, i) => ({ name: shardFileName(stem, i, shards.length), entries: e }));
  return writeFiles(dir, files, shards.length > 1 ? `${stem}.safetensors.index.json` : undefined, opts);
}

/**
 * Write planned weight files (and their index, when named) into `dir`. Every file goes to a temp
 * name first; reads of the next chunk overlap the write of the current one; each file is fsynced in
 * the background while the next is written, and all are renamed into place only when complete.
 */
export async function writeFiles(dir: string, files: FileEntries[], index: string | undefined, opts: WriteOptions = {}): Promise<WriteResult> {
  const seen = new Set<string>();
  for (const f of files) {
    for (const e of f.entries) {
      if (seen.has(e.name)) throw new MoekitError('internal', `internal: tensor '${e.name}' would be written twice`);
      seen.add(e.name);
    }
  }
  await mkdir(dir, { recursive: true });
  const temps: { tmp: string; final: string }[] = [];
  const weightMap: Record<string, string> = Object.create(null);
  let bytes = 0;
  let count = 0;
  let totalSize = 0;
  const closing: Promise<void>[] = [];
  try {
    for (const { name: fname, entries: shard } of files) {
      const tmp = join(dir, tempName(fname));
      temps.push({ tmp, final: join(dir, fname) });
      const fh = await open(tmp, 'w');
      const queue = new WriteQueue(fh, 3);
      try {
        const header = encodeHeader(shard, opts.metadata);
        await writeAt(fh, header, 0);
        let position = header.byteLength;
        for (const e of shard) {
          const want = byteSize(e.dtype, e.shape);
          let got = 0;
          if (e.writeTo) {
            got = await e.writeTo(fh.fd, position, (n) => {
              bytes += n;
              opts.onProgress?.(bytes, count);
            });
            position += got;
          } else {
            for await (const c of e.source()) {
              got += c.data.byteLength;
              if (got > want) {
                c.release?.();
                throw new MoekitError('internal', `internal: '${e.name}' produced more than its ${want} bytes`);
              }
              await queue.push(c, position);
              position += c.data.byteLength;
              bytes += c.data.byteLength;
              opts.onProgress?.(bytes, count);
            }
          }
          if (got !== want) throw new MoekitError('internal', `'${e.name}': produced ${got} bytes, expected ${want} for ${e.dtype}${JSON.stringify(e.shape)}`);
          weightMap[e.name] = fname;
          totalSize += want;
          count++;
          opts.onProgress?.(bytes, count);
        }
        await queue.drain();
        runEvents.emit('file', { name: fname, bytes: position, tensors: shard.length });
      } catch (e) {
        await queue.drain().catch(() => undefined);
        await fh.close();
        throw e;
      }
      // fsync this file in the background while the next one is written
      const finish = (opts.fsync !== false ? fh.sync() : Promise.resolve()).finally(() => fh.close());
      finish.catch(() => undefined);
      closing.push(finish);
    }
    await Promise.all(closing.splice(0));
    if (index) temps.push(await writeIndexTemp(dir, index, weightMap, totalSize));
    for (const t of temps) await rename(t.tmp, t.final);
  } catch (e) {
    await Promise.allSettled(closing);
    await Promise.all(temps.map((t) => unlink(t.tmp).catch(() => undefined)));
    throw e;
  }
  return { files: temps.map((t) => t.final.slice(dir.length + 1)), totalSize, weightMap };
}

/** Write a small JSON file atomically (temp + rename). */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.moekit-tmp-${randomBytes(4).toString('hex')}`;
  await writeFile(tmp, JSON.stringify(value, null, 2) + '\n');
  await rename(tmp, path);
}

/** A source that yields one in-memory buffer. */
export function bufferSource(data: Uint8Array): () => AsyncIterable<Chunk> {
  return async function* () {
    yield { data };
  };
}
