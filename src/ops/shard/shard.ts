/**
 * `moekit shard` / `moekit reshard`: cut a model IR into expert-parallel (and expert-TP) ranks.
 *
 * Each rank is `sliceIntermediate(selectExperts(ir, experts), t, etp)` planned through the target
 * layout spec (engine/plan.ts) into one CheckpointPlan, and the executor streams it with the sha256
 * of every tensor computed from the chunks as they pass to the writer (no second read). Placement:
 * Megatron-Core contiguous (rank r holds experts [r·E/N, (r+1)·E/N),
 * megatron/core/transformer/moe/moe_layer.py `local_expert_indices`) or round-robin (expert e on
 * rank e mod N). Expert-TP follows Megatron's expert_tensor_parallel_size / SGLang's moe_tp_size:
 * gate/up split along their output rows (column-parallel), down along its input columns
 * (row-parallel), so the down bias, added once after the row-parallel all-reduce, lives on ETP rank
 * 0 only.
 *
 * One-shot: everything is written in one output transaction on <dst>. `--rank k`: only rank k is
 * written (its own transaction on <dst>/<rank dir>), plus the plan manifest, which every job
 * computes identically from headers; the rank's checksums go to its own rank-manifest.json.
 */
import { join, resolve } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { MoekitError } from '../../errors.js';
import { peakRssMB, sideFilesOf, withOutput } from '../../output/transaction.js';
import { openStore } from '../../store/registry.js';
import { writeJsonAtomic } from '../../store/safetensors/writer.js';
import { layerDims, selectExperts, sliceIntermediate, type ModelIR } from '../../engine/ir.js';
import {
  detectStoreLayout,
  digestOf,
  loadMeta,
  moekitJson,
  quantizedTensors,
  readIR,
  resolveTarget,
  type ModelMeta,
  type MoekitJson,
} from '../../engine/read.js';
import {
  describePlan,
  planBytes,
  planTensors,
  splitFiles,
  type CheckpointPlan,
  type Plan,
  type PlanOptions,
  type SideFile,
  type TensorsPlan,
} from '../../engine/plan.js';
import { executeCheckpoint, DEFAULT_JOBS } from '../../engine/execute.js';
import { HashPool } from '../../engine/hash-pool.js';
import { ruleRegex, type GateUpOrder, type LayoutSpec } from '../../engine/layout.js';
import { layoutOf } from '../../engine/block-prefix.js';
import { placeExperts, rankDirName, validateEtp, type Placement } from './placement.js';
import { openScaled, planScaled, selectScaled, type ScaledIR } from '../../engine/scales.js';
import { MANIFEST, RANK_MANIFEST, planOf, readManifest, type RankPlan, type ShardManifest, type TensorRecord } from './manifest.js';
import { openSharded, verifyChecksums } from './sharded.js';
import type { WriteOptions } from '../options.js';

export interface ShardOptions extends WriteOptions {
  ep: number;
  etp?: number;
  /** target layout ('hf' or a spec id); default: the source's layout */
  to?: string;
  placement?: Placement;
  dense?: 'replicate' | 'rank0';
  /** write only this flat rank index (ep · etp + t) */
  rank?: number;
  /** container of the rank checkpoints: safetensors (default) or torch.save of each rank's state dict */
  format?: 'safetensors' | 'pt';
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
  dryRun?: true;
  plan?: unknown;
}

interface RankJob {
  plan: RankPlan;
  ir: ModelIR;
  write: TensorsPlan;
}

export interface CutInput {
  ir: ModelIR;
  /** a block-FP8 model: `ir` is its weights, whose scale grids are cut the same way */
  scaled?: ScaledIR;
  /** per-field transforms for every rank (upcycling's scales) */
  fieldTransforms?: PlanOptions['fieldTransforms'];
  /** config.json text for every rank, when it must be written as is (floats kept as floats) */
  configText?: string;
  /** moekit.json's upcycle record */
  upcycle?: MoekitJson['upcycle'];
  target: LayoutSpec;
  gateUp?: GateUpOrder;
  source: ShardManifest['source'];
  /** folder whose side files (tokenizer, ...) every rank gets */
  sideFrom?: string;
  /** paths the destination must not touch */
  sources: string[];
}

/** One rank's IR (experts `global`, I slice `t` of `etp`) and its tensor plan. */
function planRank(input: CutInput, global: number[], t: number, etp: number, holdsDense: boolean): { rir: ModelIR; write: TensorsPlan } {
  const opts = { gateUp: input.gateUp, fieldTransforms: input.fieldTransforms };
  // a rank without the dense tensors still keeps those a layer tensor takes a part from (layout.ts TensorRule.rest)
  const rests = input.target.rules.filter((r) => r.rest).map((r) => ruleRegex(input.target, r));
  const dense = (ir: ModelIR): ModelIR => (holdsDense ? ir : { ...ir, passthrough: ir.passthrough.filter((p) => rests.some((re) => re.test(p.info.name))) });
  if (input.scaled) {
    const s = selectScaled(input.scaled, global, t, etp);
    const weights = dense(s.weights);
    return { rir: weights, write: planScaled({ ...s, weights }, input.target, opts) };
  }
  let rir = selectExperts(input.ir, global);
  if (etp > 1) rir = sliceIntermediate(rir, t, etp);
  rir = dense(rir);
  return { rir, write: planTensors(rir, input.target, opts) };
}

/** Every rank's IR and tensor plan (headers only), and the manifest they make. */
function planRanks(input: CutInput, opts: ShardOptions): { jobs: RankJob[]; manifest: ShardManifest } {
  const { ir } = input;
  const etp = opts.etp ?? 1;
  const placement = opts.placement ?? 'contiguous';
  const dense = opts.dense ?? 'replicate';
  if (ir.layers.length === 0) throw new MoekitError('unsupported', 'no MoE layers to shard');
  const d0 = layerDims(ir.layers[0]!);
  for (const l of ir.layers) {
    const d = layerDims(l);
    if (d.E !== d0.E || d.I !== d0.I)
      throw new MoekitError(
        'unsupported',
        `layer ${l.layer} has ${d.E} experts of I ${d.I}, layer ${ir.layers[0]!.layer} has ${d0.E} of I ${d0.I}; moekit shards models whose MoE layers are alike`,
      );
  }
  const placed = placeExperts(d0.E, opts.ep, placement);
  validateEtp(d0.I, etp, input.scaled?.block);
  const jobs: RankJob[] = [];
  for (const pr of placed) {
    for (let t = 0; t < etp; t++) {
      const index = pr.rank * etp + t;
      const holdsDense = dense === 'replicate' || index === 0;
      const { rir, write } = planRank(input, pr.global, t, etp, holdsDense);
      const tensors: Record<string, TensorRecord> = Object.create(null);
      for (const e of write.tensors) tensors[e.name] = { dtype: e.dtype, shape: e.shape };
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
  manifest.digest = digestOf(planOf(manifest));
  return { jobs, manifest };
}

/** One rank as a CheckpointPlan; rank-manifest.json is filled in with the checksums once the tensors are written. */
async function rankPlan(input: CutInput, job: RankJob, opts: ShardOptions): Promise<CheckpointPlan> {
  const { files, index } = splitFiles(job.write.tensors, opts.maxShardSize, opts.format);
  const sideFiles: SideFile[] = [
    ...(input.configText ? [{ name: 'config.json', text: input.configText }] : input.source.config ? [{ name: 'config.json', json: input.source.config }] : []),
    { name: 'moekit.json', json: moekitJson(job.ir, job.write, input.source.layout, input.upcycle) },
    { name: RANK_MANIFEST, json: () => ({ format: 'moekit-shard-rank', version: 1, ...job.plan }) },
    ...(input.sideFrom ? await sideFilesOf(input.sideFrom) : []),
  ];
  return { dir: job.plan.dir, format: opts.format, files, index, metadata: input.source.metadata, sideFiles };
}

/** Write the ranks of `plan` into `root` (hashing every tensor into its job's plan). */
async function writeRanks(plan: Plan, jobs: RankJob[], root: string, opts: ShardOptions, progress: (n: number) => void): Promise<number> {
  const pool = new HashPool();
  let bytes = 0;
  try {
    for (const [k, cp] of plan.outputs.entries()) {
      const job = jobs[k]!;
      const onHashes = (sha: Map<string, string>) => {
        for (const [n, h] of sha) job.plan.tensors[n]!.sha256 = h;
      };
      const res = await executeCheckpoint(cp, join(root, cp.dir), {
        jobs: plan.jobs,
        maxMemory: opts.maxMemory,
        fsync: opts.fsync,
        hash: pool,
        stop: opts.stop,
        onProgress: progress,
        onHashes,
      });
      bytes += res.bytes;
    }
  } finally {
    await pool.close();
  }
  return bytes;
}

/** Plan and write the ranks (all, or `opts.rank`) of `input` into `dst`. */
export async function cut(input: CutInput, dst: string, opts: ShardOptions, t0: number, srcLabel: string): Promise<ShardSummary> {
  const { jobs, manifest } = planRanks(input, opts);
  const pick = opts.rank === undefined ? jobs : jobs.filter((j) => j.plan.index === opts.rank);
  if (opts.rank !== undefined && pick.length === 0) {
    throw new MoekitError(
      'usage',
      `--rank ${opts.rank} is out of range: ep ${manifest.ep} × etp ${manifest.etp} gives ranks 0..${jobs.length - 1}${manifest.etp > 1 ? ' (rank = ep_rank · etp + etp_rank)' : ''}`,
    );
  }
  const plan: Plan = { outputs: await Promise.all(pick.map((j) => rankPlan(input, j, opts))), jobs: Math.max(1, opts.jobs ?? DEFAULT_JOBS) };
  const totalBytes = planBytes(plan);
  const summary = (bytes: number): ShardSummary => ({
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
    tensors: pick.reduce((a, j) => a + j.write.tensors.length, 0),
    bytes,
    seconds: (Date.now() - t0) / 1000,
    peakRssMB: peakRssMB(),
  });
  if (opts.dryRun) {
    plan.outputs.push({ dir: '', files: [], sideFiles: [{ name: MANIFEST, json: manifest }] });
    return { ...summary(totalBytes), dryRun: true, plan: describePlan(plan) };
  }
  let done = 0;
  const progress = (n: number) => {
    done += n;
    opts.onProgress?.(done, totalBytes);
  };
  const tx = { force: opts.force, sources: input.sources };
  let bytes: number;
  if (opts.rank === undefined) {
    bytes = await withOutput(dst, tx, async (tmp) => {
      const n = await writeRanks(plan, pick, tmp, opts, progress);
      await writeJsonAtomic(join(tmp, MANIFEST), manifest);
      await opts.commit?.();
      return n;
    });
  } else {
    // job-array mode: other jobs write their ranks into the same folder concurrently
    await mkdir(dst, { recursive: true });
    const have = await readManifest(dst);
    const planned = { ...planOf(manifest), digest: manifest.digest };
    if (have && JSON.stringify(planOf(have)) !== JSON.stringify(planOf(manifest))) {
      throw new MoekitError(
        'destination',
        `${join(dst, MANIFEST)} describes a different sharding (ep ${have.ep}, etp ${have.etp}, ${have.placement}, layout ${have.layout}); use another -o or remove it`,
      );
    }
    const cp = plan.outputs[0]!;
    const final = join(dst, cp.dir);
    bytes = await withOutput(final, tx, async (tmp) => {
      const n = await writeRanks({ ...plan, outputs: [{ ...cp, dir: '' }] }, pick, tmp, opts, progress);
      await opts.commit?.();
      if (!have) await writeJsonAtomic(join(dst, MANIFEST), planned);
      return n;
    });
  }
  return summary(bytes);
}

/** The gate/up order to write in `target`: the source's own when writing its layout back. */
export function gateUpFor(target: LayoutSpec, sourceLayout: string, sourceGateUp: string): GateUpOrder | undefined {
  if (!target.gateUp) return undefined;
  if (target.id === sourceLayout && sourceGateUp !== 'separate' && target.gateUp.allowed.includes(sourceGateUp as GateUpOrder))
    return sourceGateUp as GateUpOrder;
  return undefined;
}

export async function shard(src: string, dst: string, opts: ShardOptions): Promise<ShardSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const ck = await openStore(src);
  try {
    const meta: ModelMeta = await loadMeta(ck);
    const source = detectStoreLayout(ck, meta);
    if (!source)
      throw new MoekitError(
        'unsupported',
        `${src}: no expert tensors of any layout moekit knows (a dense model? run \`moekit inspect ${src}\`; MoE blocks under your own module path: --block-prefix)`,
      );
    const q = quantizedTensors(ck);
    const target = opts.to ? resolveTarget(opts.to, meta, source) : source;
    const srcGateUp = meta.moekit?.layout === source.id ? meta.moekit.gateUp : (source.gateUp?.default ?? 'separate');
    const gateUp = gateUpFor(target, source.id, srcGateUp);
    // block-FP8 experts stay quantized: their scale grids are cut and placed with them
    const scaled = q ? await openScaled(ck, q, source, meta, srcGateUp as GateUpOrder | 'separate', opts.to ?? 'hf') : undefined;
    const ir = scaled?.weights ?? readIR(ck, source, meta);
    const d0 = layerDims(ir.layers[0]!);
    const input: CutInput = {
      ir,
      scaled,
      target,
      gateUp,
      sideFrom: ck.dir,
      sources: [ck.dir, ...ck.files],
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
  const sh = await openSharded(resolve(sharded));
  try {
    const m = sh.manifest;
    const target = opts.to ? resolveTarget(opts.to, sh.meta, sh.sourceSpec) : layoutOf(m.layout)!;
    const input: CutInput = {
      ir: sh.ir,
      scaled: sh.scaled,
      target,
      gateUp: gateUpFor(target, m.layout, m.gateUp) ?? gateUpFor(target, m.source.layout, m.source.gateUp),
      sideFrom: join(sh.root, m.ranks.find((r) => r.index === 0)!.dir),
      source: m.source,
      sources: [sh.root],
    };
    if (opts.dryRun) return await cut(input, dst, { ...opts, placement: opts.placement ?? m.placement, dense: opts.dense ?? m.dense }, t0, sharded);
    return await withChecksums(sh, (commit, stop) =>
      cut(input, dst, { ...opts, placement: opts.placement ?? m.placement, dense: opts.dense ?? m.dense, commit, stop }, t0, sharded),
    );
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
export async function withChecksums<T>(
  sh: Awaited<ReturnType<typeof openSharded>>,
  write: (commit: () => Promise<void>, stop: () => unknown) => Promise<T>,
): Promise<T> {
  let failed: unknown;
  const v = verifyChecksums(sh).catch((e: unknown) => {
    failed = e;
    throw e;
  });
  v.catch(() => undefined);
  try {
    return await write(
      () => v,
      () => failed,
    );
  } catch (e) {
    throw failed ?? e;
  } finally {
    await v.catch(() => undefined);
  }
}
