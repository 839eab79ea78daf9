/**
 * Worker threads that run exports of one WebAssembly module over one shared memory: the CPU
 * forward's matmul (forward/wasm-pool.ts) and the conversions' SIMD transposes (engine/arena.ts).
 * The caller lays data out in the memory; `call` runs an export on a chosen worker and resolves
 * when it returns. Workers keep the process alive only while a call is in flight. The worker is
 * inline code (eval), so it loads the same from src/ under the test runner and from dist/.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { MoekitError } from '../errors.js';
import { kernelsDir } from '../gpu/kernels.js';

/** The slice of the WebAssembly JS API used here (tsconfig's lib has no DOM types). */
export interface WasmMemory {
  readonly buffer: SharedArrayBuffer;
  grow(pages: number): number;
}
declare const WebAssembly: {
  Module: new (bytes: Uint8Array) => object;
  Memory: new (d: { initial: number; maximum: number; shared: true }) => WasmMemory;
};

export const PAGE = 65536;

/** Worker threads of a pool: the environment variable `env` when a positive integer (at most 64), else every core, at most `cap`. */
export function threadsFrom(env: string, cap: number): number {
  const n = Number(process.env[env]);
  return Number.isInteger(n) && n > 0 ? Math.min(64, n) : Math.max(1, Math.min(cap, availableParallelism()));
}

/** A shared memory of `initial` pages, growable to `maximum` (at most 65536: 4 GiB). */
export function sharedMemory(initial: number, maximum: number): WasmMemory {
  return new WebAssembly.Memory({ initial, maximum, shared: true });
}

/** The module in kernels/ compiled once per process. */
const modules = new Map<string, object>();
function moduleOf(file: string): object {
  let m = modules.get(file);
  if (!m) modules.set(file, (m = new WebAssembly.Module(readFileSync(join(kernelsDir('internal'), file)))));
  return m;
}

// A message runs one export (fn, args), or writes bands: for each, its calls (args[0] relative to
// base) fill the worker's buffer at base, whose first `bytes` then go to file descriptor fd at pos.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { writeSync } = require('node:fs');
const inst = new WebAssembly.Instance(workerData.module, { env: { memory: workerData.memory } });
parentPort.on('message', ({ id, fn, args, fd, base, bands }) => {
  try {
    if (bands) {
      for (const b of bands) {
        for (const c of b.calls) inst.exports[c.fn](base + c.args[0], ...c.args.slice(1));
        const mem = new Uint8Array(workerData.memory.buffer);
        for (let done = 0; done < b.bytes; ) done += writeSync(fd, mem, base + done, b.bytes - done, b.pos + done);
      }
    } else inst.exports[fn](...args);
    parentPort.postMessage({ id });
  } catch (e) {
    parentPort.postMessage({ id, error: String(e && e.message || e), code: e && typeof e.code === 'string' ? e.code : undefined });
  }
});
`;

/** A band a worker builds in its buffer and writes: the kernel calls (args[0] relative to the buffer), then its first `bytes` at file position `pos`. */
export interface WriteBand {
  pos: number;
  bytes: number;
  calls: { fn: string; args: number[] }[];
}

export class WasmWorkers {
  private readonly workers: Worker[];
  private pending = new Map<number, { resolve: () => void; reject: (e: Error) => void; w: number }>();
  private readonly busy: number[];
  private nextId = 0;

  constructor(
    file: string,
    memory: WasmMemory,
    readonly threads: number,
    private readonly what: string,
  ) {
    const module = moduleOf(file);
    this.busy = new Array<number>(threads).fill(0);
    this.workers = Array.from({ length: threads }, () => {
      const w = new Worker(WORKER, { eval: true, workerData: { module, memory } });
      w.on('message', (m: { id: number; error?: string }) => this.settle(m));
      w.on('error', (e) => this.failAll(e));
      w.unref();
      return w;
    });
  }

  /** Run export `fn` on worker `w` (modulo the pool size), or on the least busy one. */
  call(w: number | undefined, fn: string, args: number[]): Promise<void> {
    return this.post(w, { fn, args });
  }

  /**
   * Build and write `bands` on worker `w`, one after another, in its buffer at address `base` (large
   * enough for the largest band), to the open file descriptor `fd`: the write is the worker's own, so
   * it copies a band the kernel has just written, still in that core's cache. A failed write rejects
   * with the system error (its code kept).
   */
  writeBands(w: number, fd: number, base: number, bands: WriteBand[]): Promise<void> {
    return this.post(w, { fd, base, bands });
  }

  private post(w: number | undefined, msg: object): Promise<void> {
    const id = this.nextId++;
    const k = w === undefined ? this.busy.indexOf(Math.min(...this.busy)) : w % this.workers.length;
    if (this.pending.size === 0) for (const x of this.workers) x.ref();
    this.busy[k]!++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, w: k });
      this.workers[k]!.postMessage({ id, ...msg });
    });
  }

  private settle(m: { id: number; error?: string; code?: string }): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    this.busy[p.w]!--;
    if (this.pending.size === 0) for (const x of this.workers) x.unref();
    // a system error (a full disk) stays one, for the CLI's exit code; anything else is a bug
    if (m.error && m.code) p.reject(Object.assign(new Error(m.error), { code: m.code }));
    else if (m.error) p.reject(new MoekitError('internal', `internal: ${this.what} failed: ${m.error}`));
    else p.resolve();
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(new MoekitError('internal', `internal: ${this.what} worker failed: ${e.message}`));
    this.pending.clear();
    this.busy.fill(0);
  }
}
