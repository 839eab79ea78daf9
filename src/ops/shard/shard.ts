/**
 * `moekit shard` / `moekit reshard`: cut a model IR into expert-parallel (and expert-TP) ranks.
 *
 * Each rank is `sliceIntermediate(selectExperts(ir, experts), t, etp)` planned through the target
 * layout spec and streamed by the safetensors writer; the sha256 of every tensor is computed from
 * the chunks as they pass to the writer (no second read). Placement: Megatron-Core contiguous
 * (rank r holds experts [r·E/N, (r+1)·E/N), megatron/core/transformer/moe/moe_layer.py
 * `local_expert_indices`) or round-robin (expert e on rank e mod N). Expert-TP follows
 * Megatron's expert_tensor_parallel_size / SGLang's moe_tp_size: gate/up split along their output
 * rows (column-parallel), down along its input columns (row-parallel), so the down bias, added
 * once after the row-parallel all-reduce, lives on ETP rank 0 only.
 *
 * One-shot: everything is written into a temp folder next to <dst> and renamed into place.
 * `--rank k`: only rank k is written (temp folder inside <dst>, renamed), plus the plan manifest,
 * which every job computes identically from headers; the rank's checksums go to its own
 * rank-manifest.json (see manifest.ts).
 */
import { copyFile, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MoekitError } from '../../errors.js';
import { checkDestination, peakRssMB, tempSibling } from '../../output/transaction.js';
export { checkDestination, peakRssMB, tempSibling };
import type { TensorStore } from '../../store/types.js';
import { openStore } from '../../store/registry.js';
import { writeCheckpoint, writeJsonAtomic, type WriteEntry } from '../../store/safetensors/writer.js';
import { byteSize } from '../../store/dtypes.js';
import { layerDims, selectExperts, sliceIntermediate, type ModelIR } from '../../engine/ir.js';
import { detectLayout, loadMeta, moekitJson, planWrite, quantizedTensors, readIR, resolveTarget, type ModelMeta, type Plan } from '../../engine/plan.js';
import type { GateUpOrder, LayoutSpec } from '../../engine/layout.js';
import { layoutById } from '../../../converters/index.js';
import { placeExperts, rankDirName, validateEtp, type Placement } from './placement.js';
import { MANIFEST, RANK_MANIFEST, planOf, readManifest, type RankPlan, type ShardManifest, type TensorRecord } from './manifest.js';
import { openSharded, verifyChecksums } from './sharded.js';
import { HashPool } from '../../engine/hash-pool.js';

export interface ShardOptions {
  ep: number;
  etp?: number;
  /** target layout ('hf' or a spec id); default: the source's layout */
  to?: string;
  placement?: Placement;
  dense?: 'replicate' | 'rank0';
  /** write only this flat rank index (ep · etp + t) */
  rank?: number;
  maxShardSize?: number;
  jobs?: number;
  force?: boolean;
  fsync?: boolean;
  onProgress?: (bytes: number, totalBytes: number) => void;
  /** internal (reshard): awaited before the result is renamed into place */
  commit?: () => Promise<void>;
  /** internal (reshard): a truthy value aborts the write */
  stop?: () => unknown;
}

export interface ShardSummary {
  source: string;
  destination: string;
  family: string;
  sourceLayout: string;
  layout: string;
  ep: number;
  etp: number;
  placement: Placement;
  dense: 'replicate' | 'rank0';
  /** rank folders written by this run */
  ranks: string[];
  tensors: number;
  bytes: number;
  seconds: number;
  /** peak resident memory of this process so far */
  peakRssMB: number;
}


const FP8_BLOCK = 128;


/** Entries whose bytes are hashed (in worker threads) as they stream to the writer. */
function hashed(entries: WriteEntry[], pool: HashPool, out: Map<string, Promise<string>>, stop?: () => unknown): WriteEntry[] {
  return entries.map((e) => ({
    ...e,
    source: async function* () {
      const h = pool.stream();
      for await (const c of e.source()) {
        const why = stop?.();
        if (why) {
          c.release?.();
          throw why;
        }
        await h.update(c.data);
        yield c;
      }
      const d = h.digest();
      d.catch(() => undefined); // awaited after the rank is written
      out.set(e.name, d);
    },
  }));
}

interface RankJob {
  plan: RankPlan;
  ir: ModelIR;
  write: Plan;
}

export interface CutInput {
  ir: ModelIR;
  /** checkpoint used for reads (views carry their own file) */
  ck: TensorStore;
  target: LayoutSpec;
  gateUp?: GateUpOrder;
  source: ShardManifest['source'];
  sideFrom?: string;
}

/** Every rank's IR and write plan (headers only), and the manifest they make. */
export function planRanks(input: CutInput, opts: ShardOptions): { jobs: RankJob[]; manifest: ShardManifest } {
  const { ir } = input;
  const etp = opts.etp ?? 1;
  const placement = opts.placement ?? 'contiguous';
  const dense = opts.dense ?? 'replicate';
  if (ir.layers.length === 0) throw new MoekitError('unsupported', 'no MoE layers to shard');
  const d0 = layerDims(ir.layers[0]!);
  for (const l of ir.layers) {
    const d = layerDims(l);
    if (d.E !== d0.E || d.I !== d0.I) throw new MoekitError('unsupported', `layer ${l.layer} has ${d.E} experts of I ${d.I}, layer ${ir.layers[0]!.layer} has ${d0.E} of I ${d0.I}; moekit shards models whose MoE layers are alike`);
  }
  const placed = placeExperts(d0.E, opts.ep, placement);
  validateEtp(d0.I, etp);
  const jobs: RankJob[] = [];
  for (const pr of placed) {
    for (let t = 0; t < etp; t++) {
      const index = pr.rank * etp + t;
      let rir = selectExperts(ir, pr.global);
      if (etp > 1) rir = sliceIntermediate(rir, t, etp);
      const holdsDense = dense === 'replicate' || index === 0;
      if (!holdsDense) rir = { ...rir, passthrough: [] };
      const write = planWrite(input.ck, rir, input.target, { gateUp: input.gateUp, jobs: opts.jobs });
      const tensors: Record<string, TensorRecord> = {};
      for (const e of write.entries) tensors[e.name] = { dtype: e.dtype, shape: e.shape };
      const downBias = ir.layers.some((l) => l.experts[0]?.down_bias !== undefined) && t === 0;
      jobs.push({
        ir: rir,
        write,
        plan: {
          index,
          ep: pr.rank,
          etp: t,
          dir: rankDirName(pr.rank, opts.ep, t, etp),
          experts: pr.global,
          intermediate: [(t * d0.I) / etp, ((t + 1) * d0.I) / etp],
          downBias,
          dense: holdsDense,
          tensors,
        },
      });
    }
  }
  const manifest: ShardManifest = {
    format: 'moekit-shard',
    version: 1,
    source: input.source,
    layout: input.target.id,
    gateUp: jobs[0]!.write.gateUp,
    ep: opts.ep,
    etp,
    placement,
    dense,
    ranks: jobs.map((j) => j.plan),
  };
  return { jobs, manifest };
}

/** Write one rank into `dir` (a temp folder the caller renames); returns bytes written. */
async function writeRank(input: CutInput, job: RankJob, dir: string, opts: ShardOptions, pool: HashPool, progress: (n: number) => void): Promise<number> {
  const sha = new Map<string, Promise<string>>();
  let last = 0;
  const res = await writeCheckpoint(dir, hashed(job.write.entries, pool, sha, opts.stop), {
    maxShardSize: opts.maxShardSize,
    metadata: input.source.metadata,
    fsync: opts.fsync,
    onProgress: (b) => {
      progress(b - last);
      last = b;
    },
  });
  for (const [n, h] of sha) job.plan.tensors[n]!.sha256 = await h;
  if (input.source.config) await writeJsonAtomic(join(dir, 'config.json'), input.source.config);
  const mk = moekitJson(job.ir, job.write, input.source.layout);
  await writeJsonAtomic(join(dir, 'moekit.json'), mk);
  await writeJsonAtomic(join(dir, RANK_MANIFEST), { format: 'moekit-shard-rank', version: 1, ...job.plan });
  if (input.sideFrom) await copySideFiles(input.sideFrom, dir);
  return res.totalSize;
}

/** Tokenizer and other small files travel along to every rank. */
async function copySideFiles(src: string, dst: string): Promise<void> {
  let names: string[];
  try {
    if (!(await stat(src)).isDirectory()) return;
    names = await readdir(src);
  } catch {
    return;
  }
  for (const name of names) {
    if (/\.safetensors$|\.safetensors\.index\.json$|^config\.json$|^moekit\.json$|^rank-manifest\.json$|^moekit-manifest\.json$|^reference\.safetensors$|\.moekit-tmp-|^\./.test(name)) continue;
    const s = await stat(join(src, name));
    if (s.isFile()) await copyFile(join(src, name), join(dst, name));
  }
}

/** Plan and write the ranks (all, or `opts.rank`) of `input` into `dst`. */
export async function cut(input: CutInput, dst: string, opts: ShardOptions, t0: number, srcLabel: string): Promise<ShardSummary> {
  const { jobs, manifest } = planRanks(input, opts);
  const pick = opts.rank === undefined ? jobs : jobs.filter((j) => j.plan.index === opts.rank);
  if (opts.rank !== undefined && pick.length === 0) {
    throw new MoekitError('usage', `--rank ${opts.rank} is out of range: ep ${manifest.ep} × etp ${manifest.etp} gives ranks 0..${jobs.length - 1}${manifest.etp > 1 ? ' (rank = ep_rank · etp + etp_rank)' : ''}`);
  }
  const totalBytes = pick.reduce((a, j) => a + j.write.entries.reduce((s, e) => s + byteSize(e.dtype, e.shape), 0), 0);
  let done = 0;
  const progress = (n: number) => {
    done += n;
    opts.onProgress?.(done, totalBytes);
  };
  let bytes = 0;
  const pool = new HashPool();
  try {
    if (opts.rank === undefined) {
      const dstExists = await checkDestination(dst, !!opts.force);
      await mkdir(dirname(dst), { recursive: true });
      const tmp = tempSibling(dst);
      try {
        for (const j of pick) bytes += await writeRank(input, j, join(tmp, j.plan.dir), opts, pool, progress);
        await writeJsonAtomic(join(tmp, MANIFEST), manifest);
        await opts.commit?.();
        if (dstExists) await rm(dst, { recursive: true, force: true });
        await rename(tmp, dst);
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        throw e;
      }
    } else {
      // job-array mode: other jobs write their ranks into the same folder concurrently
      await mkdir(dst, { recursive: true });
      const have = await readManifest(dst);
      const plan = planOf(manifest);
      if (have && JSON.stringify(planOf(have)) !== JSON.stringify(plan)) {
        throw new MoekitError('destination', `${join(dst, MANIFEST)} describes a different sharding (ep ${have.ep}, etp ${have.etp}, ${have.placement}, layout ${have.layout}); use another -o or remove it`);
      }
      const j = pick[0]!;
      const final = join(dst, j.plan.dir);
      let exists = false;
      try {
        exists = (await stat(final)).isDirectory();
      } catch {
        /* absent */
      }
      if (exists && !opts.force) throw new MoekitError('destination', `${final} exists (written by an earlier job); pass --force to rewrite rank ${j.plan.index}`);
      const tmp = join(dst, `.${j.plan.dir}.moekit-tmp-${randomBytes(4).toString('hex')}`);
      try {
        bytes += await writeRank(input, j, tmp, opts, pool, progress);
        await opts.commit?.();
        if (!have) await writeJsonAtomic(join(dst, MANIFEST), plan);
        if (exists) await rm(final, { recursive: true, force: true });
        await rename(tmp, final);
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        throw e;
      }
    }
  } finally {
    await pool.close();
  }
  return {
    source: srcLabel,
    destination: dst,
    family: input.source.family,
    sourceLayout: input.source.layout,
    layout: manifest.layout,
    ep: manifest.ep,
    etp: manifest.etp,
    placement: manifest.placement,
    dense: manifest.dense,
    ranks: pick.map((j) => j.plan.dir),
    tensors: pick.reduce((a, j) => a + j.write.entries.length, 0),
    bytes,
    seconds: (Date.now() - t0) / 1000,
    peakRssMB: peakRssMB(),
  };
}

/** The gate/up order to write in `target`: the source's own when writing its layout back. */
export function gateUpFor(target: LayoutSpec, sourceLayout: string, sourceGateUp: string): GateUpOrder | undefined {
  if (!target.gateUp) return undefined;
  if (target.id === sourceLayout && sourceGateUp !== 'separate' && target.gateUp.allowed.includes(sourceGateUp as GateUpOrder)) return sourceGateUp as GateUpOrder;
  return undefined;
}

/** I of the first MoE layer as the config states it (for quantized checkpoints, whose experts are not read). */
function configInter(config: Record<string, unknown> | undefined): number | undefined {
  const c = (config?.text_config as Record<string, unknown> | undefined) ?? config;
  const v = c?.moe_intermediate_size ?? c?.intermediate_size;
  return typeof v === 'number' ? v : undefined;
}

export async function shard(src: string, dst: string, opts: ShardOptions): Promise<ShardSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const ck = await openStore(src);
  try {
    if (resolve(ck.dir) === dst) throw new MoekitError('destination', `destination ${dst} is the source folder`);
    const meta: ModelMeta = await loadMeta(ck);
    const source = detectLayout(ck.names(), meta);
    if (!source) throw new MoekitError('unsupported', `${src}: no expert tensors of any layout moekit knows (a dense model? run \`moekit inspect ${src}\`)`);
    const q = quantizedTensors(ck);
    if (q) {
      // The SGLang rule (moe_tp_size = tp / ep) for 128×128 block scales: each I slice must be whole blocks.
      const inter = configInter(meta.config);
      if (/FP8|block-scaled/.test(q) && inter && (opts.etp ?? 1) > 1) validateEtp(inter, opts.etp!, FP8_BLOCK);
      throw new MoekitError('unsupported', `${src} is quantized (${q}); moekit shards float checkpoints only: dequantize it first (e.g. to bf16), then shard`);
    }
    const target = opts.to ? resolveTarget(opts.to, meta, source) : source;
    const srcGateUp = meta.moekit?.layout === source.id ? meta.moekit.gateUp : (source.gateUp?.default ?? 'separate');
    const ir = readIR(ck, source, meta);
    const d0 = layerDims(ir.layers[0]!);
    const input: CutInput = {
      ir,
      ck,
      target,
      gateUp: gateUpFor(target, source.id, srcGateUp),
      sideFrom: src,
      source: {
        family: meta.family,
        modelType: meta.modelType,
        layout: source.id,
        gateUp: srcGateUp,
        numExperts: d0.E,
        hiddenSize: d0.H,
        moeIntermediateSize: d0.I,
        ...(meta.config ? { config: meta.config } : {}),
        ...(ck.metadata ? { metadata: ck.metadata } : {}),
      },
    };
    return await cut(input, dst, opts, t0, src);
  } finally {
    await ck.close();
  }
}

/**
 * N → M without a merged checkpoint: the merged IR is views over the old ranks, each new rank
 * selects from it and reads only its own bytes. The old ranks' checksums are verified meanwhile,
 * and the result is renamed into place only if they all match.
 */
export async function reshard(sharded: string, dst: string, opts: ShardOptions): Promise<ShardSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  if (resolve(sharded) === dst) throw new MoekitError('destination', `destination ${dst} is the source folder`);
  const sh = await openSharded(resolve(sharded));
  try {
    const m = sh.manifest;
    const target = opts.to ? resolveTarget(opts.to, sh.meta, sh.sourceSpec) : layoutById(m.layout)!;
    const input: CutInput = {
      ir: sh.ir,
      ck: sh.reader,
      target,
      gateUp: gateUpFor(target, m.layout, m.gateUp) ?? gateUpFor(target, m.source.layout, m.source.gateUp),
      sideFrom: join(sh.root, m.ranks.find((r) => r.index === 0)!.dir),
      source: m.source,
    };
    return await withChecksums(sh, (commit, stop) => cut(input, dst, { ...opts, placement: opts.placement ?? m.placement, dense: opts.dense ?? m.dense, commit, stop }, t0, sharded));
  } finally {
    await sh.close();
  }
}

/**
 * Run `write` while the checksums of every rank of `sh` are verified (worker threads). `write`
 * streams into a temp folder and must call `commit` before renaming it into place: `commit` waits
 * for the verification, so a corrupt rank leaves nothing behind; `stop()` turns true as soon as a
 * mismatch is found, so the write can give up early.
 */
export async function withChecksums<T>(sh: Awaited<ReturnType<typeof openSharded>>, write: (commit: () => Promise<void>, stop: () => unknown) => Promise<T>): Promise<T> {
  let failed: unknown;
  const v = verifyChecksums(sh).catch((e: unknown) => {
    failed = e;
    throw e;
  });
  v.catch(() => undefined);
  try {
    return await write(() => v, () => failed);
  } catch (e) {
    throw failed ?? e;
  } finally {
    await v.catch(() => undefined);
  }
}
