/**
 * The executor: runs any Plan (plan.ts) into a folder. Tensors stream slab by slab in write order:
 * a byte-range slab is read in pooled chunks with read-ahead; an assembled slab is built in a
 * pooled buffer by copying each IR view into its strided place, `jobs` at a time and up to `jobs`
 * slabs ahead across tensor boundaries, so memory stays at about (jobs + 2) × the largest slab.
 * Transforms apply chunk by chunk; optional sha256 of every tensor is computed (worker threads)
 * from the bytes as they pass to the writer.
 */
import { join } from 'node:path';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import pLimit from 'p-limit';
import { type Chunk, sharedPool } from '../store/pool.js';
import { byteSize } from '../store/dtypes.js';
import { writeJsonAtomic, type WriteEntry } from '../store/safetensors/writer.js';
import { writerFor } from '../store/writers.js';
import { PIECE_BYTES, View, allocAligned, copyView } from './ir.js';
import { applyTransforms } from './transforms.js';
import { arena, transposeThreads } from './arena.js';
import { bandSlab } from './band.js';
import { interrupted } from '../output/transaction.js';
import { MoekitError } from '../errors.js';
import type { HashPool } from './hash-pool.js';
import type { CheckpointPlan, SlabPlan, TensorPlan } from './plan.js';

export interface ExecuteOptions {
  /** slabs assembled concurrently (default 2) */
  jobs?: number;
  /** bytes the run may hold (--max-memory): fewer slabs in flight, or a clear refusal when one cannot fit */
  maxMemory?: number;
  fsync?: boolean;
  /** bytes written since the last call */
  onProgress?: (delta: number) => void;
  /** hash every tensor as it streams */
  hash?: HashPool;
  /** checked before each chunk: a truthy value aborts the write with it */
  stop?: () => unknown;
  /** with `hash`: called with every tensor's sha256 once the weight files are written, before the side files */
  onHashes?: (sha256: Map<string, string>) => void;
}

export interface ExecuteResult {
  /** weight files, index and side files written, relative to the checkpoint folder */
  files: string[];
  /** tensor bytes written */
  bytes: number;
  /** sha256 per tensor (with `hash`) */
  sha256: Map<string, string>;
}

/** Slab buffers: from the arena (where the SIMD transposes work), else a heap pool by size, so a long run recycles warm memory. */
class SlabPool {
  private free = new Map<number, Buffer[]>();
  acquire(n: number): Buffer {
    return arena.alloc(n) ?? this.free.get(n)?.pop() ?? allocAligned(n);
  }
  release(b: Buffer): void {
    if (arena.holds(b)) {
      arena.release(b);
      return;
    }
    let l = this.free.get(b.byteLength);
    if (!l) this.free.set(b.byteLength, (l = []));
    if (l.length < 8) l.push(b);
  }
}

/** Apply a tensor's transforms to a chunk (a transformed chunk is a new buffer: the source buffer goes back at once). */
function transformed(t: TensorPlan, c: Chunk): Chunk {
  if (t.transforms.length === 0) return c;
  const data = applyTransforms(t.transforms, c.data);
  c.release?.();
  return { data };
}

/**
 * The assembly queue of one checkpoint: assembled slabs numbered in write order. Asking for slab g
 * starts slabs g..g+window-1, so the next tensors' slabs are read and assembled while the current
 * one is written.
 */
class Assembler {
  private readonly queue: Extract<SlabPlan, { kind: 'assemble' }>[] = [];
  private readonly index = new Map<SlabPlan, number>();
  private readonly started = new Map<number, Promise<Buffer>>();
  private readonly taken = new Set<number>();
  private readonly limit;
  readonly pool = new SlabPool();

  constructor(
    tensors: TensorPlan[],
    private readonly window: number,
  ) {
    this.limit = pLimit(window);
    for (const t of tensors) {
      for (const s of t.slabs) {
        if (s.kind !== 'assemble') continue;
        this.index.set(s, this.queue.length);
        this.queue.push(s);
      }
    }
  }

  private build(s: Extract<SlabPlan, { kind: 'assemble' }>): () => Promise<Buffer> {
    return async () => {
      const buf = this.pool.acquire(byteSize(s.dtype, s.shape));
      const storage = { kind: 'memory' as const, buf };
      for (const p of s.parts) await copyView(p.src, new View(storage, p.dst.dtype, p.dst.offset, p.dst.shape, p.dst.strides));
      return buf;
    };
  }

  get(s: Extract<SlabPlan, { kind: 'assemble' }>): Promise<Buffer> {
    const g = this.index.get(s)!;
    for (let k = g; k < Math.min(this.queue.length, g + this.window); k++) {
      if (this.started.has(k) || this.taken.has(k)) continue;
      const p = this.limit(this.build(this.queue[k]!));
      p.catch(() => undefined); // surfaced when awaited
      this.started.set(k, p);
    }
    const p = this.started.get(g) ?? this.limit(this.build(s)); // a tensor streamed twice rebuilds its slabs
    this.started.delete(g);
    this.taken.add(g);
    return p;
  }
}

/** The writer's entry for one planned tensor. */
function entryOf(t: TensorPlan, asm: Assembler, opts: ExecuteOptions, sha: Map<string, Promise<string>>): WriteEntry {
  async function* bytes(): AsyncGenerator<Chunk> {
    for (const s of t.slabs) {
      if (s.kind === 'range') {
        for await (const c of s.store.chunks(s.info, sharedPool, 3, s.start, s.end)) yield transformed(t, c);
      } else {
        const buf = await asm.get(s);
        yield transformed(t, { data: buf, release: () => asm.pool.release(buf) });
      }
    }
  }
  return {
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    source: async function* () {
      const h = opts.hash?.stream();
      for await (const c of bytes()) {
        const why = opts.stop?.() ?? (interrupted() && new MoekitError('interrupted', 'interrupted'));
        if (why) {
          c.release?.();
          throw why;
        }
        if (h) {
          // shared-memory chunks are hashed in place: back to their pool once written and hashed
          const { read } = await h.feed(c.data);
          const release = c.release;
          yield release ? { data: c.data, release: () => void read.then(release) } : c;
        } else yield c;
      }
      if (h) {
        const d = h.digest();
        d.catch(() => undefined); // awaited after the checkpoint is written
        sha.set(t.name, d);
      }
    },
  };
}

/** Under --max-memory: read chunks of 4 MiB, at most 2 kept free. */
const CAPPED_CHUNK = 4 * 2 ** 20;
/** A run's peak RSS besides its slabs (measured: ~110 MiB for the process, its code and read chunks). */
const BASE_MEMORY = 110 * 2 ** 20;
/** A strided source is read in pieces of at most PIECE_BYTES: one read, one copied per job. */
const PIECE_MEMORY = 2 * PIECE_BYTES;
/**
 * Beside its slabs a run that assembles them holds more than a plain copy: measured 145 MiB
 * outside the arena on 2 cores and ~240 MiB with 8 transpose workers on 16 (Mixtral-8x7B shapes
 * to nemo), so 40 MiB plus 6 MiB per transpose worker on top of BASE_MEMORY.
 */
const assemblyOverhead = () => (40 + 6 * transposeThreads()) * 2 ** 20;
/** Slabs assembled at once unless --jobs says otherwise. */
export const DEFAULT_JOBS = 2;
/** What a run may hold when --max-memory is not given. */
const DEFAULT_MEMORY = 512 * 2 ** 20;
/** Bands are never made smaller than this. */
const MIN_BAND = 4 * 2 ** 20;

/**
 * Peak RSS of a run with `jobs` slabs of `slab` bytes assembling at once. Measured on a 1.1 GB
 * bf16 Mixtral converted to nemo (44 MiB slabs, jobs 1 / 2 / 4 → 248 / 352 / 466 MiB): per job
 * the slab assembling and one source piece, then the slab being written, the next one ready and
 * the arena's slack.
 */
const peakOf = (jobs: number, slab: number) => BASE_MEMORY + assemblyOverhead() + (jobs + 2.5) * slab + jobs * PIECE_MEMORY;

export interface MemoryFit {
  /** slabs assembled at once */
  jobs: number;
  /** assembled slabs larger than this are built in row bands (Infinity: none) */
  band: number;
}

const MiB = (n: number) => Math.ceil(n / 2 ** 20);

/** Bytes of the largest assembled slab (0: the run only copies byte ranges). */
function largestSlab(tensors: TensorPlan[]): number {
  let m = 0;
  for (const t of tensors) for (const s of t.slabs) if (s.kind === 'assemble') m = Math.max(m, byteSize(s.dtype, s.shape));
  return m;
}

/**
 * How a run stays inside its memory budget (`maxMemory`, else DEFAULT_MEMORY): fewer slabs in
 * flight (not below 2, so reading and writing still overlap), then slabs built in row bands
 * (bandSlab). An explicit budget that not even one job of the smallest band fits is refused; the
 * default budget is a target, never a refusal.
 */
export function fitMemory(tensors: TensorPlan[], jobs: number, maxMemory?: number): MemoryFit {
  const budget = maxMemory ?? DEFAULT_MEMORY;
  const largest = largestSlab(tensors);
  if (maxMemory !== undefined && maxMemory < BASE_MEMORY)
    throw new MoekitError('usage', `--max-memory ${MiB(maxMemory)} MiB is below what any run needs (about ${MiB(BASE_MEMORY)} MiB)`);
  if (largest === 0) return { jobs, band: Infinity };
  for (let j = jobs; j >= Math.min(jobs, 2); j--) if (peakOf(j, largest) <= budget) return { jobs: j, band: Infinity };
  for (const j of new Set([Math.min(jobs, 2), 1])) {
    const band = (budget - BASE_MEMORY - assemblyOverhead() - j * PIECE_MEMORY) / (j + 2.5);
    if (band >= MIN_BAND) return { jobs: j, band };
  }
  if (maxMemory === undefined) return { jobs: 1, band: MIN_BAND };
  throw new MoekitError(
    'usage',
    `--max-memory ${MiB(maxMemory)} MiB cannot hold this job: its largest assembled slab is ${(largest / 2 ** 20).toFixed(1)} MiB, built in bands of at least ${MiB(MIN_BAND)} MiB beside ${MiB(BASE_MEMORY + assemblyOverhead())} MiB; give at least ${MiB(peakOf(1, MIN_BAND))} MiB`,
  );
}

/** Peak RSS (bytes) a run of these tensors is expected to reach: what fitMemory plans for. */
export function expectedPeak(tensors: TensorPlan[], jobs: number, maxMemory?: number): number {
  const fit = fitMemory(tensors, jobs, maxMemory);
  const largest = largestSlab(tensors);
  return largest === 0 ? BASE_MEMORY : peakOf(fit.jobs, Math.min(largest, fit.band));
}

/** The tensors with every slab larger than `band` split into row bands. */
function banded(tensors: TensorPlan[], band: number): Map<TensorPlan, TensorPlan> {
  const out = new Map<TensorPlan, TensorPlan>();
  for (const t of tensors) {
    const big = t.slabs.some((s) => s.kind === 'assemble' && byteSize(s.dtype, s.shape) > band);
    out.set(t, big ? { ...t, slabs: t.slabs.flatMap((s): SlabPlan[] => (s.kind === 'assemble' ? bandSlab(s, band) : [s])) } : t);
  }
  return out;
}

/** The largest assembled slab after banding, refused under an explicit cap it breaks (a slab that could not be banded). */
function checkBands(tensors: Iterable<TensorPlan>, fit: MemoryFit, maxMemory?: number): void {
  if (maxMemory === undefined || fit.band === Infinity) return;
  for (const t of tensors)
    for (const s of t.slabs)
      if (s.kind === 'assemble' && byteSize(s.dtype, s.shape) > fit.band)
        throw new MoekitError(
          'usage',
          `--max-memory ${MiB(maxMemory)} MiB cannot hold this job: ${t.name} is assembled in slabs of ${(byteSize(s.dtype, s.shape) / 2 ** 20).toFixed(1)} MiB that cannot be built in bands; give at least ${MiB(peakOf(1, byteSize(s.dtype, s.shape)))} MiB (or convert to a layout that copies the experts as they are)`,
        );
}

/** Write one planned checkpoint (weight files, index, side files) into `dir`. */
export async function executeCheckpoint(cp: CheckpointPlan, dir: string, opts: ExecuteOptions = {}): Promise<ExecuteResult> {
  const tensors = cp.files.flatMap((f) => f.tensors);
  const fit = fitMemory(tensors, Math.max(1, opts.jobs ?? DEFAULT_JOBS), opts.maxMemory);
  const band = banded(tensors, fit.band);
  checkBands(band.values(), fit, opts.maxMemory);
  const asm = new Assembler([...band.values()], fit.jobs);
  if (opts.maxMemory !== undefined) sharedPool.shrink(CAPPED_CHUNK, 2);
  const sha = new Map<string, Promise<string>>();
  let last = 0;
  const res = await writerFor(cp.format ?? 'safetensors').write(
    dir,
    cp.files.map((f) => ({ name: f.name, entries: f.tensors.map((t) => entryOf(band.get(t)!, asm, opts, sha)) })),
    cp.index,
    {
      metadata: cp.metadata,
      fsync: opts.fsync,
      onProgress: (b) => {
        opts.onProgress?.(b - last);
        last = b;
      },
    },
  );
  const hashes = new Map<string, string>();
  for (const [n, h] of sha) hashes.set(n, await h);
  opts.onHashes?.(hashes);
  const files = [...res.files];
  await mkdir(dir, { recursive: true });
  for (const s of cp.sideFiles) {
    if ('text' in s) await writeFile(join(dir, s.name), s.text);
    else if ('json' in s) await writeJsonAtomic(join(dir, s.name), typeof s.json === 'function' ? (s.json as () => unknown)() : s.json);
    else if ('load' in s) await writeFile(join(dir, s.name), await s.load());
    else await copyFile(s.copyFrom, join(dir, s.name));
    files.push(s.name);
  }
  return { files, bytes: res.totalSize, sha256: hashes };
}
