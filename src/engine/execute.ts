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
import { write } from 'node:fs';
import { promisify } from 'node:util';
import pLimit from 'p-limit';
import { type Chunk, sharedPool } from '../store/pool.js';
import { byteSize, dtypeSize } from '../store/dtypes.js';
import type { TensorInfo, TensorStore } from '../store/types.js';
import { writeJsonAtomic, type WriteEntry } from '../store/safetensors/writer.js';
import { writerFor } from '../store/writers.js';
import { PIECE_BYTES, View, allocAligned, copyView } from './ir.js';
import { applyTransforms } from './transforms.js';
import { arena, transposeCalls, transposeThreads } from './arena.js';
import type { WriteBand } from './wasm-workers.js';
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
  /** bytes of the row bands a transposed slab is built and written in by the transpose workers (writeBands; default STREAM_BAND, 0: whole slabs) */
  streamBand?: number;
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

const fsWrite = promisify(write);

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
  private readonly started = new Map<number, Promise<Built>>();
  private readonly taken = new Set<number>();
  private readonly limit;
  readonly pool = new SlabPool();

  constructor(
    tensors: TensorPlan[],
    private readonly window: number,
    /** slabs whose sources are only read (pinSources): the transpose workers build and write them (writeBands) */
    private readonly pin = new Set<Assembled>(),
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

  private build(s: Extract<SlabPlan, { kind: 'assemble' }>): () => Promise<Built> {
    return async () => {
      return this.pin.has(s) ? pinSources(s, this.pool) : assemble(s, this.pool);
    };
  }

  get(s: Extract<SlabPlan, { kind: 'assemble' }>): Promise<Built> {
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

type Assembled = Extract<SlabPlan, { kind: 'assemble' }>;
/** An assembled slab (a buffer), or its sources read into memory for writeBands. */
type Built = Buffer | Pinned;
interface Pinned {
  slab: Assembled;
  /** the buffers the parts' sources were read into */
  held: Buffer[];
}

/**
 * Row bands of a transposed slab, in bytes, for writeBands. Transposing a whole slab (tens of MiB)
 * writes every destination line to memory no cache holds, and the write to the file then reads it
 * back from memory; a band this size stays in the core's L2 from the transpose to the write. On a
 * 2-core Xeon (a prototype over the bench's 2 GiB checkpoint to nemo's layout): 2.4–2.8 s against
 * 3.1–3.7 s for whole slabs, CPU 2.3–2.5 s against 3.0–3.2 s. MOEKIT_STREAM_BAND=<bytes> sets it
 * (0: whole slabs), for measurements.
 */
const STREAM_BAND = process.env.MOEKIT_STREAM_BAND !== undefined ? Number(process.env.MOEKIT_STREAM_BAND) || 0 : 768 * 2 ** 10;

/** A range of a checkpoint tensor's elements [lo, hi) that a slab's parts read (es: bytes per element). */
interface SourceRange {
  store: TensorStore;
  info: TensorInfo;
  es: number;
  lo: number;
  hi: number;
}

/**
 * The source ranges a slab's parts read: overlapping ranges of one tensor merged (the gate and up
 * halves of an interleaved gate_up_proj cover the same rows), each part with the range it reads from;
 * undefined when a part does not read a checkpoint tensor.
 */
function sourceRanges(s: Assembled): { ranges: SourceRange[]; of: number[] } | undefined {
  const ranges: SourceRange[] = [];
  const of: number[] = [];
  for (const p of s.parts) {
    if (p.src.storage.kind !== 'tensor') return undefined;
    const [lo, hi] = p.src.extent();
    const { store, info } = p.src.storage;
    const k = ranges.findIndex((r) => r.info === info && lo < r.hi && r.lo < hi);
    if (k < 0) {
      of.push(ranges.length);
      ranges.push({ store, info, es: dtypeSize(p.src.dtype), lo, hi });
    } else {
      of.push(k);
      ranges[k]!.lo = Math.min(ranges[k]!.lo, lo);
      ranges[k]!.hi = Math.max(ranges[k]!.hi, hi);
    }
  }
  return { ranges, of };
}

/**
 * Whether a slab can be built in bands: larger than two bands, some part strided on either side
 * (a transpose), every part read from a checkpoint tensor, the ranges read not much larger than
 * the slab (the sources read whole hold about the slab's bytes), and cut into row bands.
 */
function streams(s: Assembled, band: number): boolean {
  const bytes = byteSize(s.dtype, s.shape);
  if (bytes <= 2 * band || s.parts.every((p) => p.src.isContiguous() && p.dst.isContiguous())) return false;
  const r = sourceRanges(s);
  if (!r) return false;
  const covered = r.ranges.reduce((a, x) => a + (x.hi - x.lo) * x.es, 0);
  return covered <= bytes * 1.125 && rowBands(s, band).length > 1;
}

/** The slab as rows of its last dim (the same bytes), so bands can be cut at any row, not only along its leading dim. */
function asRows(s: Assembled): Assembled {
  const last = s.shape.at(-1) ?? 1;
  return s.shape.length < 2 ? s : { ...s, shape: [s.shape.reduce((a, b) => a * b, 1) / last, last] };
}

/**
 * The slab's row bands of about `band` bytes, a multiple of 32 rows when that fits (of 8 when not):
 * a band's rows are a strip of columns of each transposed source, so whole 64-byte lines of bf16
 * are read once, not once by each of two bands.
 */
function rowBands(s: Assembled, band: number): Assembled[] {
  const r = asRows(s);
  const rowBytes = byteSize(r.dtype, r.shape.slice(1));
  const fit = Math.max(1, Math.floor(band / rowBytes));
  const rows = fit >= 32 ? fit - (fit % 32) : fit >= 8 ? fit - (fit % 8) : fit;
  return bandSlab(r, rows * rowBytes);
}

/** Read each source range (sourceRanges) whole into memory (the arena first, where the transpose workers reach it): the slab's parts over those buffers. */
async function pinSources(s: Assembled, pool: SlabPool): Promise<Pinned> {
  const r = sourceRanges(s);
  if (!r) throw new MoekitError('internal', 'internal: a banded slab part must read a checkpoint tensor');
  const held: Buffer[] = [];
  try {
    const bufs = await Promise.all(
      r.ranges.map(async ({ store, info, es, lo, hi }) => {
        const buf = pool.acquire((hi - lo) * es);
        held.push(buf);
        await store.read(info, lo * es, hi * es, buf);
        return buf;
      }),
    );
    const parts = s.parts.map((p, k) => {
      const { lo } = r.ranges[r.of[k]!]!;
      const buf = bufs[r.of[k]!]!;
      return { src: new View({ kind: 'memory', buf }, p.src.dtype, p.src.offset - lo, p.src.shape, p.src.strides), dst: p.dst };
    });
    return { slab: { ...s, parts }, held };
  } catch (e) {
    for (const b of held) pool.release(b);
    throw e;
  }
}

/** A slab built whole in a pool buffer, each part copied into its place (the buffer goes back if a copy fails). */
async function assemble(s: Assembled, pool: SlabPool): Promise<Buffer> {
  const buf = pool.acquire(byteSize(s.dtype, s.shape));
  try {
    const storage = { kind: 'memory' as const, buf };
    for (const p of s.parts) await copyView(p.src, new View(storage, p.dst.dtype, p.dst.offset, p.dst.shape, p.dst.strides));
  } catch (e) {
    pool.release(buf);
    throw e;
  }
  return buf;
}

/** A slab's bytes: the buffer, or a pinned slab built whole from its sources (which then go back). */
async function built(b: Built, pool: SlabPool): Promise<Buffer> {
  if (Buffer.isBuffer(b)) return b;
  try {
    return await assemble(b.slab, pool);
  } finally {
    for (const h of b.held) pool.release(h);
  }
}

/** The kernel calls of each band (destination offsets relative to the band's buffer), or undefined when a part is not a SIMD transpose. */
function bandCalls(bands: Assembled[]): WriteBand['calls'][] | undefined {
  const out: WriteBand['calls'][] = [];
  for (const b of bands) {
    const calls: WriteBand['calls'] = [];
    for (const p of b.parts) {
      if (p.src.storage.kind !== 'memory') return undefined;
      const unit = dtypeSize(p.src.dtype);
      const c = transposeCalls(p.dst.offset, p.dst.strides, p.src.storage.buf, p.src.offset, p.src.strides, p.src.shape, unit);
      if (!c) return undefined;
      calls.push(...c);
    }
    out.push(calls);
  }
  return out;
}

/**
 * Write a pinned slab at `position` of file `fd` in row bands, each built by a transpose worker in
 * its own arena buffer and written by that worker (band k on worker k mod threads), so the bytes go
 * from the kernel's stores to the file while still in the core's cache. A slab whose parts are not
 * all SIMD transposes, or that gets no arena buffers, is built whole and written from here.
 */
async function writeBands(p: Pinned, fd: number, position: number, pool: SlabPool, band: number): Promise<number> {
  const bytes = byteSize(p.slab.dtype, p.slab.shape);
  const bands = rowBands(p.slab, band);
  const calls = bandCalls(bands);
  const workers = calls && arena.workers();
  const largest = Math.max(...bands.map((b) => byteSize(b.dtype, b.shape)));
  const bufs = workers ? Array.from({ length: Math.min(workers.threads, bands.length) }, () => arena.alloc(largest)) : [];
  const banded = !!workers && !!calls && bufs.every((b) => b);
  try {
    // built() gives the sources back, writeBuffer the slab
    if (!banded) return await writeBuffer(fd, await built(p, pool), position, pool);
    const per: WriteBand[][] = bufs.map(() => []);
    let pos = position;
    for (const [k, b] of bands.entries()) {
      const n = byteSize(b.dtype, b.shape);
      per[k % bufs.length]!.push({ pos, bytes: n, calls: calls[k]! });
      pos += n;
    }
    // every worker's writes end before this returns (the file may be closed right after)
    const runs = await Promise.allSettled(per.map((list, w) => workers!.writeBands(w, fd, bufs[w]!.byteOffset, list)));
    const failed = runs.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    return bytes;
  } finally {
    for (const b of bufs) if (b) arena.release(b);
    if (banded) for (const h of p.held) pool.release(h);
  }
}

/**
 * A banded tensor (every slab pinned): written slab by slab by writeBands, checking for a stop before
 * each, two slabs in flight, so a worker done with its bands of one goes on to the next without
 * waiting for the others (2 cores, bench checkpoint to nemo, six interleaved rounds: 1.62 s against
 * 1.82 s for one slab at a time and 1.66 s for three).
 */
async function writeTensor(
  t: TensorPlan,
  asm: Assembler,
  band: number,
  opts: ExecuteOptions,
  fd: number,
  position: number,
  progress: (bytes: number) => void,
): Promise<number> {
  let pos = position;
  const inflight: Promise<number>[] = [];
  try {
    for (const s of t.slabs) {
      if (s.kind !== 'assemble') throw new MoekitError('internal', `internal: ${t.name} has a slab that is not assembled`);
      const why = opts.stop?.() ?? (interrupted() && new MoekitError('interrupted', 'interrupted'));
      if (why) throw why;
      const b = await asm.get(s);
      const at = pos;
      pos += byteSize(s.dtype, s.shape);
      const w = (Buffer.isBuffer(b) ? writeBuffer(fd, b, at, asm.pool) : writeBands(b, fd, at, asm.pool, band)).then((n) => {
        progress(n);
        return n;
      });
      w.catch(() => undefined); // awaited below
      inflight.push(w);
      if (inflight.length >= 2) await inflight.shift();
    }
    await Promise.all(inflight);
  } finally {
    // no write may still be going when the caller closes the file
    await Promise.allSettled(inflight);
  }
  return pos - position;
}

/** Write a whole slab buffer at `position` (then back to the pool). */
async function writeBuffer(fd: number, buf: Buffer, position: number, pool: SlabPool): Promise<number> {
  try {
    for (let done = 0; done < buf.byteLength; ) done += (await fsWrite(fd, buf, done, buf.byteLength - done, position + done)).bytesWritten;
    return buf.byteLength;
  } finally {
    pool.release(buf);
  }
}

/** The writer's entry for one planned tensor. */
function entryOf(t: TensorPlan, asm: Assembler, opts: ExecuteOptions, sha: Map<string, Promise<string>>, band: number): WriteEntry {
  async function* bytes(): AsyncGenerator<Chunk> {
    for (const s of t.slabs) {
      if (s.kind === 'range') {
        for await (const c of s.store.chunks(s.info, sharedPool, 3, s.start, s.end)) yield transformed(t, c);
      } else {
        const buf = await built(await asm.get(s), asm.pool);
        yield transformed(t, { data: buf, release: () => asm.pool.release(buf) });
      }
    }
  }
  return {
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    writeTo: band > 0 ? (fd, position, progress) => writeTensor(t, asm, band, opts, fd, position, progress) : undefined,
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
  // transposed slabs the workers build and write in bands: a writer that takes such entries, no hashes, no casts
  const writer = writerFor(cp.format ?? 'safetensors');
  const streamBand = opts.streamBand ?? STREAM_BAND;
  const selfWrite = (t: TensorPlan) =>
    streamBand > 0 &&
    !!writer.selfWrites &&
    !opts.hash &&
    t.transforms.length === 0 &&
    t.slabs.length > 0 &&
    t.slabs.every((s) => s.kind === 'assemble' && streams(s, streamBand));
  const bandOf = new Map([...band.values()].map((t) => [t, selfWrite(t) ? streamBand : 0]));
  const pin = new Set([...bandOf].flatMap(([t, b]) => (b > 0 ? (t.slabs as Assembled[]) : [])));
  const asm = new Assembler([...band.values()], fit.jobs, pin);
  if (opts.maxMemory !== undefined) sharedPool.shrink(CAPPED_CHUNK, 2);
  const sha = new Map<string, Promise<string>>();
  let last = 0;
  const res = await writer.write(
    dir,
    cp.files.map((f) => ({ name: f.name, entries: f.tensors.map((t) => entryOf(band.get(t)!, asm, opts, sha, bandOf.get(band.get(t)!)!)) })),
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
