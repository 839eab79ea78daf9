/**
 * Base of the stores that present another store's tensors transformed (dequantized, quantized):
 * everything but `read` of the tensors they compute is the inner store's.
 */
import { type BufferPool, type Chunk, pooledChunks, sharedPool } from './pool.js';
import { openStore } from './registry.js';
import { TensorMap } from './tensor-map.js';
import type { TensorInfo, TensorStore } from './types.js';

export abstract class DerivedStore extends TensorMap implements TensorStore {
  constructor(
    readonly inner: TensorStore,
    private readonly what: string,
  ) {
    super();
  }

  abstract read(t: TensorInfo | string, start?: number, end?: number, into?: Buffer): Promise<Buffer>;

  get format(): string {
    return this.inner.format;
  }
  get dir(): string {
    return this.inner.dir;
  }
  get files(): readonly string[] {
    return this.inner.files;
  }
  get metadata(): Record<string, string> | undefined {
    return this.inner.metadata;
  }
  protected override missing(name: string): string {
    return `no tensor '${name}' in the ${this.what} view of ${this.dir}`;
  }
  chunks(t: TensorInfo | string, pool: BufferPool = sharedPool, readahead = 2, start = 0, end?: number): AsyncGenerator<Chunk> {
    return pooledChunks(this, typeof t === 'string' ? this.info(t) : t, pool, readahead, start, end);
  }
  config(): Promise<Record<string, unknown> | undefined> {
    return this.inner.config();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Open `src` and wrap its store, closing the store again when the wrapping throws (a bad scale, nothing to do). */
export async function openWrapped<S>(src: string, wrap: (inner: TensorStore) => Promise<S> | S): Promise<S> {
  const inner = await openStore(src);
  try {
    return await wrap(inner);
  } catch (e) {
    await inner.close();
    throw e;
  }
}
