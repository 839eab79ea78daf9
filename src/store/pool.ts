import type { TensorInfo } from './types.js';
/**
 * A small pool of large I/O buffers. Fresh memory is ~10x slower on first touch than warm memory
 * (platform notes), so streaming copies recycle a few chunk buffers instead of allocating per chunk.
 * Memory held is bounded by (buffers in flight) × (chunk size).
 */
export class BufferPool {
  private free: Buffer[] = [];
  constructor(
    public chunkSize: number,
    private maxFree = 8,
  ) {}
  /** smaller chunks and fewer kept free (a --max-memory run); buffers of the old size are dropped as they come back */
  shrink(chunkSize: number, maxFree: number): void {
    if (chunkSize >= this.chunkSize && maxFree >= this.maxFree) return;
    this.chunkSize = Math.min(chunkSize, this.chunkSize);
    this.maxFree = Math.min(maxFree, this.maxFree);
    this.free = [];
  }
  /** In shared memory, so the hash workers read chunks in place (engine/hash-pool.ts `feed`). */
  acquire(): Buffer {
    return this.free.pop() ?? Buffer.from(new SharedArrayBuffer(this.chunkSize));
  }
  release(b: Buffer): void {
    if (b.byteLength === this.chunkSize && this.free.length < this.maxFree) this.free.push(b);
  }
}

/**
 * 4 MiB: the chunks in flight (read-ahead 3, the writer's, the hash workers') stay within the CPU's
 * caches between the read into user space and the write out of it. Measured on 2 cores, 3.2 GiB
 * `convert --to te`: 16 MiB chunks 2.4–2.9 s, 4 MiB 1.9–2.2 s, 1 MiB the same as 4 (cp -r 1.4–1.7 s).
 * MOEKIT_CHUNK_MIB (1–256) overrides it, for benchmarks.
 */
const chunkMib = Number(process.env.MOEKIT_CHUNK_MIB);
const DEFAULT_CHUNK = (Number.isInteger(chunkMib) && chunkMib >= 1 && chunkMib <= 256 ? chunkMib : 4) * 1024 * 1024;
/**
 * Free buffers kept: 128 MiB of them whatever the chunk size. Each one not kept is a new SharedArrayBuffer
 * whose memory comes back only at a later GC, so keeping fewer bytes than with 16 MiB chunks made shard /
 * reshard's peak RSS grow on 16 cores (reshard --ep 4 of 6.4 GiB: 469 MiB with 8 × 16 MiB, 583 with 8 × 4 MiB).
 */
export const sharedPool = new BufferPool(DEFAULT_CHUNK, Math.max(8, Math.floor((128 * 2 ** 20) / DEFAULT_CHUNK)));

/** A piece of tensor data handed to the writer; `release` returns its buffer to a pool once written. */
export interface Chunk {
  data: Uint8Array;
  release?: () => void;
}

/** The bytes of pooled chunks; each chunk goes back to its pool when the consumer asks for the next (it has written this one). */
export async function* chunkBytes(chunks: AsyncIterable<Chunk>): AsyncGenerator<Uint8Array> {
  for await (const c of chunks) {
    yield c.data;
    c.release?.();
  }
}

/** What pooledChunks needs of a store: positioned reads of one tensor. */
interface RangeReader {
  read(t: TensorInfo, start?: number, end?: number, into?: Buffer): Promise<Buffer>;
}

/** A tensor's bytes [start, end) as pooled chunks, `readahead` reads in flight (the stores' `chunks`). */
export async function* pooledChunks(
  store: RangeReader,
  info: TensorInfo,
  pool: BufferPool = sharedPool,
  readahead = 2,
  start = 0,
  end?: number,
): AsyncGenerator<Chunk> {
  const stop = end ?? info.nbytes;
  const pending: { buf: Buffer; p: Promise<Buffer> }[] = [];
  let pos = start;
  const issue = () => {
    const e = Math.min(stop, pos + pool.chunkSize);
    const buf = pool.acquire();
    const p = store.read(info, pos, e, buf);
    p.catch(() => undefined); // awaited below; avoid unhandled rejection while queued
    pending.push({ buf, p });
    pos = e;
  };
  try {
    while (pos < stop && pending.length < readahead) issue();
    while (pending.length > 0) {
      const { buf, p } = pending[0]!;
      const data = await p;
      pending.shift();
      if (pos < stop) issue();
      yield { data, release: () => pool.release(buf) };
    }
  } finally {
    // consumer stopped early or a read failed: let in-flight reads finish, then recycle their buffers
    for (const { buf, p } of pending.splice(0))
      await p.then(
        () => pool.release(buf),
        () => pool.release(buf),
      );
  }
}
