/**
 * What every file-reading TensorStore shares: the name → tensor map, one open handle per file
 * (closed together), the byte-range check and output buffer of `read`, and `chunks` as pooled
 * ranged reads. A store implements `read` (and its opening); the rest comes from here.
 */
import { type FileHandle, open } from 'node:fs/promises';
import { MoekitError } from '../errors.js';
import { type BufferPool, type Chunk, pooledChunks, sharedPool } from './pool.js';
import { TensorMap } from './tensor-map.js';
import type { TensorInfo } from './types.js';

export abstract class BaseStore extends TensorMap {
  private fileHandles = new Map<string, Promise<FileHandle>>();

  abstract read(t: TensorInfo | string, start?: number, end?: number, into?: Buffer): Promise<Buffer>;

  /** `t` resolved, the end of the range, and the buffer its bytes go into; a range outside the tensor is an error */
  protected range<T extends TensorInfo>(
    t: TensorInfo | string,
    start: number,
    end: number | undefined,
    into: Buffer | undefined,
  ): { info: T; end: number; out: Buffer } {
    const info = (typeof t === 'string' ? this.info(t) : t) as T;
    const e = end ?? info.nbytes;
    if (start < 0 || e > info.nbytes || e < start)
      throw new MoekitError('bad-input', `${info.name}: byte range [${start}, ${e}) outside the tensor (${info.nbytes} bytes)`);
    return { info, end: e, out: into ? into.subarray(0, e - start) : Buffer.allocUnsafe(e - start) };
  }

  /** the read-only handle of `file`, opened once */
  protected handle(file: string): Promise<FileHandle> {
    let h = this.fileHandles.get(file);
    if (!h) {
      h = open(file, 'r').catch((e: NodeJS.ErrnoException) => {
        throw new MoekitError('io', `${file}: cannot open (${e.code ?? e.message})`);
      });
      this.fileHandles.set(file, h);
    }
    return h;
  }

  /** One tensor's bytes [start, end) in pooled chunks, `readahead` reads in flight; release each once consumed. */
  chunks(t: TensorInfo | string, pool: BufferPool = sharedPool, readahead = 2, start = 0, end?: number): AsyncGenerator<Chunk> {
    return pooledChunks(this, typeof t === 'string' ? this.info(t) : t, pool, readahead, start, end);
  }

  async close(): Promise<void> {
    const hs = [...this.fileHandles.values()];
    this.fileHandles.clear();
    await Promise.all(hs.map(async (h) => (await h.catch(() => undefined))?.close().catch(() => undefined)));
  }
}
