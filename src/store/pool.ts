/**
 * A small pool of large I/O buffers. Fresh memory is ~10x slower on first touch than warm memory
 * (platform notes), so streaming copies recycle a few chunk buffers instead of allocating per chunk.
 * Memory held is bounded by (buffers in flight) × (chunk size).
 */
export class BufferPool {
  private free: Buffer[] = [];
  constructor(
    readonly chunkSize: number,
    private readonly maxFree = 8,
  ) {}
  acquire(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.chunkSize);
  }
  release(b: Buffer): void {
    if (b.byteLength === this.chunkSize && this.free.length < this.maxFree) this.free.push(b);
  }
}

const DEFAULT_CHUNK = 16 * 1024 * 1024;
export const sharedPool = new BufferPool(DEFAULT_CHUNK);

/** A piece of tensor data handed to the writer; `release` returns its buffer to a pool once written. */
export interface Chunk {
  data: Uint8Array;
  release?: () => void;
}
