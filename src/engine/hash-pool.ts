/**
 * sha256 off the main thread. One core hashes ~1 GB/s, slower than the page cache can feed a
 * copy, so hashing on the event loop would cap shard/merge throughput; a small pool of worker
 * threads hashes different tensors in parallel:
 *  - `stream()`: a tensor being written — chunks are copied into a fixed ring of shared-memory
 *    slots the workers read (the writer recycles its own buffers), so memory stays flat;
 *  - `fileRange()`: a tensor already on disk — the worker reads it itself (positioned reads).
 * The worker is inline code (eval), so it runs the same from dist/ and under the test runner.
 */
import { Worker } from 'node:worker_threads';
import { threadsFrom } from './wasm-workers.js';
import type { TensorInfo, TensorStore } from '../store/types.js';
import { MoekitError } from '../errors.js';

const WORKER = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const hs = new Map();
let ring;
parentPort.on('message', (m) => {
  if (m.op === 'ring') {
    ring = m.sab;
  } else if (m.op === 'update') {
    let h = hs.get(m.id);
    if (!h) hs.set(m.id, (h = createHash('sha256')));
    h.update(new Uint8Array(ring, m.at, m.n));
    parentPort.postMessage({ op: 'ack', id: m.id, slot: m.slot });
  } else if (m.op === 'shared') {
    let h = hs.get(m.id);
    if (!h) hs.set(m.id, (h = createHash('sha256')));
    h.update(new Uint8Array(m.sab, m.at, m.n));
    parentPort.postMessage({ op: 'shared', id: m.id, token: m.token });
  } else if (m.op === 'digest') {
    const h = hs.get(m.id) || createHash('sha256');
    hs.delete(m.id);
    parentPort.postMessage({ op: 'digest', id: m.id, hex: h.digest('hex') });
  } else if (m.op === 'file') {
    let fd;
    try {
      fd = fs.openSync(m.file, 'r');
      const h = createHash('sha256');
      const buf = Buffer.allocUnsafe(Math.max(1, Math.min(m.nbytes, 4 << 20)));
      let pos = 0;
      while (pos < m.nbytes) {
        const n = fs.readSync(fd, buf, 0, Math.min(buf.length, m.nbytes - pos), m.offset + pos);
        if (n === 0) throw new Error('file ended early');
        h.update(buf.subarray(0, n));
        pos += n;
      }
      parentPort.postMessage({ op: 'digest', id: m.id, hex: h.digest('hex') });
    } catch (e) {
      parentPort.postMessage({ op: 'error', id: m.id, message: String(e && e.message) });
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }
});
`;

interface Msg {
  op: 'ack' | 'shared' | 'digest' | 'error';
  id: number;
  slot?: number;
  token?: number;
  hex?: string;
  message?: string;
}

export interface HashStream {
  /** resolves when `data` may be reused */
  update(data: Uint8Array): Promise<void>;
  /**
   * Bytes in shared memory are hashed in place: resolves once they are handed to the worker, with
   * a promise that settles when it has read them (the caller keeps them unchanged until then).
   * Other bytes are copied through the ring (and the inner promise is already settled).
   */
  feed(data: Uint8Array): Promise<{ read: Promise<void> }>;
  digest(): Promise<string>;
}

/** MOEKIT_HASH_THREADS, else one per core, at most 6. */
const hashThreads = () => threadsFrom('MOEKIT_HASH_THREADS', 6);

export class HashPool {
  private workers: Worker[] = [];
  private load: number[] = [];
  private nextId = 1;
  private waiters = new Map<number, { resolve: (hex: string) => void; reject: (e: Error) => void }>();
  private ring: SharedArrayBuffer;
  private free: number[] = [];
  private freed: (() => void)[] = [];
  /** bytes handed to workers in place and not yet read, at most the ring's size (at least one handout) */
  private lent = 0;
  private readonly tokens = new Map<number, { n: number; done: () => void }>();
  private nextToken = 1;

  /**
   * One worker per core, at most 6 (MOEKIT_HASH_THREADS): the main thread mostly waits on I/O, and each tensor's hash is
   * sequential, so the ring (2 slots per worker) is the backlog that lets the next tensors hash
   * on other workers while a slow one finishes. On 16 cores shard keeps 3 workers about half busy
   * (sha256 ~1.6 GB/s each with SHA-NI); each worker costs ~15 MiB.
   */
  constructor(
    size = hashThreads(),
    readonly slots = 2 * size,
    private readonly slotSize = 4 << 20,
  ) {
    this.ring = new SharedArrayBuffer(slots * slotSize);
    for (let k = 0; k < slots; k++) this.free.push(k);
    for (let i = 0; i < size; i++) {
      const w = new Worker(WORKER, { eval: true });
      w.postMessage({ op: 'ring', sab: this.ring });
      w.on('message', (m: Msg) => this.onMessage(i, m));
      w.on('error', (e) => {
        for (const x of this.waiters.values()) x.reject(e);
        this.waiters.clear();
      });
      this.workers.push(w);
      this.load.push(0);
    }
  }

  private onMessage(i: number, m: Msg): void {
    if (m.op === 'ack') {
      this.free.push(m.slot!);
      this.wake();
      return;
    }
    if (m.op === 'shared') {
      const t = this.tokens.get(m.token!)!;
      this.tokens.delete(m.token!);
      this.lent -= t.n;
      t.done();
      this.wake();
      return;
    }
    this.load[i]!--;
    const w = this.waiters.get(m.id);
    this.waiters.delete(m.id);
    if (m.op === 'digest') w?.resolve(m.hex!);
    else w?.reject(new MoekitError('io', `sha256: ${m.message}`));
  }

  private pick(): number {
    let best = 0;
    for (let i = 1; i < this.load.length; i++) if (this.load[i]! < this.load[best]!) best = i;
    this.load[best]!++;
    return best;
  }

  private result(id: number): Promise<string> {
    return new Promise((resolve, reject) => this.waiters.set(id, { resolve, reject }));
  }

  /** sha256 of bytes [offset, offset + nbytes) of a file. */
  fileRange(file: string, offset: number, nbytes: number): Promise<string> {
    const id = this.nextId++;
    const p = this.result(id);
    this.workers[this.pick()]!.postMessage({ op: 'file', id, file, offset, nbytes });
    return p;
  }

  /** sha256 of one tensor of a store: its file range when the store has one, else its bytes as read. */
  async tensor(store: TensorStore, info: TensorInfo): Promise<string> {
    if (info.file !== undefined && info.offset !== undefined) return this.fileRange(info.file, info.offset, info.nbytes);
    const h = this.stream();
    for await (const c of store.chunks(info)) {
      await h.update(c.data);
      c.release?.();
    }
    return h.digest();
  }

  /** A running hash fed chunk by chunk. */
  stream(): HashStream {
    const id = this.nextId++;
    const w = this.workers[this.pick()]!;
    return {
      update: (data) => this.streamUpdate(w, id, data),
      feed: async (data) => {
        if (!(data.buffer instanceof SharedArrayBuffer)) {
          await this.streamUpdate(w, id, data);
          return { read: Promise.resolve() };
        }
        while (this.lent > 0 && this.lent + data.byteLength > this.slots * this.slotSize) await new Promise<void>((r) => this.freed.push(r));
        const token = this.nextToken++;
        this.lent += data.byteLength;
        const done = new Promise<void>((resolve) => this.tokens.set(token, { n: data.byteLength, done: resolve }));
        w.postMessage({ op: 'shared', id, sab: data.buffer, at: data.byteOffset, n: data.byteLength, token });
        return { read: done };
      },
      digest: () => {
        const p = this.result(id);
        w.postMessage({ op: 'digest', id });
        return p;
      },
    };
  }

  /** Every waiter re-checks its condition (ring slots or lent bytes) after any handback. */
  private wake(): void {
    const ws = this.freed;
    this.freed = [];
    for (const f of ws) f();
  }

  /** Copy `data` through the ring's slots to worker `w`'s hash `id`. */
  private async streamUpdate(w: Worker, id: number, data: Uint8Array): Promise<void> {
    for (let pos = 0; pos < data.byteLength; pos += this.slotSize) {
      const n = Math.min(this.slotSize, data.byteLength - pos);
      while (this.free.length === 0) await new Promise<void>((r) => this.freed.push(r));
      const slot = this.free.pop()!;
      const at = slot * this.slotSize;
      new Uint8Array(this.ring, at, n).set(data.subarray(pos, pos + n));
      w.postMessage({ op: 'update', id, slot, at, n });
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}
