/**
 * `moekit merge`: a sharded checkpoint back to one checkpoint. A missing rank or a duplicate expert
 * is refused before anything is written. The merged IR (views over the rank files) is planned
 * through the target layout (default: the original source layout, with its gate/up order, so the
 * result is byte-identical to the source per tensor) and written in an output transaction, while
 * every rank's checksums are verified (worker threads); it is renamed into place only if all match.
 */
import { join, resolve } from 'node:path';
import { sideFilesOf, peakRssMB, withOutput } from '../../output/transaction.js';
import { moekitJson, resolveTarget } from '../../engine/read.js';
import { planScaled } from '../../engine/scales.js';
import { describePlan, planBytes, planTensors, splitFiles, type Plan, type TensorsPlan } from '../../engine/plan.js';
import type { ModelIR } from '../../engine/ir.js';
import { executeCheckpoint, DEFAULT_JOBS } from '../../engine/execute.js';
import { layoutOf } from '../../engine/block-prefix.js';
import { openSharded } from './sharded.js';
import { gateUpFor, withChecksums } from './shard.js';
import type { WriteOptions } from '../options.js';

export interface MergeOptions extends WriteOptions {
  to?: string;
}

export interface MergeSummary {
  source: string;
  destination: string;
  family: string;
  layout: string;
  ranks: number;
  tensors: number;
  bytes: number;
  files: string[];
  seconds: number;
  peakRssMB: number;
  dryRun?: true;
  plan?: unknown;
}

/** What a merged checkpoint is made of, whichever ranks it came from. */
export interface MergedModel {
  ir: ModelIR;
  tp: TensorsPlan;
  /** the layout the experts came from (moekit.json's source.layout) */
  sourceLayout: string;
  family: string;
  config?: Record<string, unknown>;
  metadata?: Record<string, string>;
  /** the folder whose side files (tokenizer, …) the output gets */
  sideDir: string;
  /** the source as the summary names it, the paths the destination must not touch, how many ranks */
  source: string;
  sources: string[];
  ranks: number;
  t0: number;
  /** run the write (merge: while the ranks' checksums are verified; commit before the rename) */
  guard?: <T>(write: (commit: () => Promise<void>, stop: () => unknown) => Promise<T>) => Promise<T>;
}

/** Plan and write one merged checkpoint into `dst` (or describe it, with dryRun). */
export async function writeMerged(m: MergedModel, dst: string, opts: MergeOptions): Promise<MergeSummary> {
  const { files, index } = splitFiles(m.tp.tensors, opts.maxShardSize);
  const sideFiles = [
    ...(m.config ? [{ name: 'config.json', json: m.config }] : []),
    { name: 'moekit.json', json: moekitJson(m.ir, m.tp, m.sourceLayout) },
    ...(await sideFilesOf(m.sideDir)),
  ];
  const plan: Plan = { outputs: [{ dir: '', files, index, metadata: m.metadata, sideFiles }], jobs: Math.max(1, opts.jobs ?? DEFAULT_JOBS) };
  const totalBytes = planBytes(plan);
  const summary = (bytes: number, written: string[]): MergeSummary => ({
    source: m.source,
    destination: dst,
    family: m.family,
    layout: m.tp.target.id,
    ranks: m.ranks,
    tensors: m.tp.tensors.length,
    bytes,
    files: written.sort(),
    seconds: (Date.now() - m.t0) / 1000,
    peakRssMB: peakRssMB(),
  });
  if (opts.dryRun) {
    const names = [...files.map((f) => f.name), ...(index ? [index] : []), ...sideFiles.map((f) => f.name)];
    return { ...summary(totalBytes, names), dryRun: true, plan: describePlan(plan) };
  }
  let done = 0;
  const guard =
    m.guard ??
    ((write) =>
      write(
        async () => {},
        () => undefined,
      ));
  return guard((commit, stop) =>
    withOutput(dst, { force: opts.force, sources: m.sources }, async (tmp) => {
      const res = await executeCheckpoint(plan.outputs[0]!, tmp, {
        jobs: plan.jobs,
        maxMemory: opts.maxMemory,
        fsync: opts.fsync,
        stop,
        onProgress: (d) => {
          done += d;
          opts.onProgress?.(done, totalBytes);
        },
      });
      await commit();
      return summary(res.bytes, res.files);
    }),
  );
}

export async function merge(sharded: string, dst: string, opts: MergeOptions = {}): Promise<MergeSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const root = resolve(sharded);
  const sh = await openSharded(root);
  try {
    const m = sh.manifest;
    const target = opts.to ? resolveTarget(opts.to, sh.meta, sh.sourceSpec) : layoutOf(m.source.layout)!;
    const gateUp = gateUpFor(target, m.source.layout, m.source.gateUp) ?? gateUpFor(target, m.layout, m.gateUp);
    const tp = sh.scaled ? planScaled(sh.scaled, target, { gateUp }) : planTensors(sh.ir, target, { gateUp });
    return await writeMerged(
      {
        ir: sh.ir,
        tp,
        sourceLayout: m.source.layout,
        family: m.source.family,
        config: m.source.config,
        metadata: m.source.metadata,
        sideDir: join(root, m.ranks.find((r) => r.index === 0)!.dir),
        source: sharded,
        sources: [root],
        ranks: m.ranks.length,
        t0,
        guard: (write) => withChecksums(sh, write),
      },
      dst,
      opts,
    );
  } finally {
    await sh.close();
  }
}
