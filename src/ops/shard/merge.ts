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
import { describePlan, planBytes, planTensors, splitFiles, type Plan } from '../../engine/plan.js';
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
    const { files, index } = splitFiles(tp.tensors, opts.maxShardSize);
    const rank0 = join(root, m.ranks.find((r) => r.index === 0)!.dir);
    const sideFiles = [
      ...(m.source.config ? [{ name: 'config.json', json: m.source.config }] : []),
      { name: 'moekit.json', json: moekitJson(sh.ir, tp, m.source.layout) },
      ...(await sideFilesOf(rank0)),
    ];
    const plan: Plan = { outputs: [{ dir: '', files, index, metadata: m.source.metadata, sideFiles }], jobs: Math.max(1, opts.jobs ?? DEFAULT_JOBS) };
    const totalBytes = planBytes(plan);
    const summary = (bytes: number, written: string[]): MergeSummary => ({
      source: sharded,
      destination: dst,
      family: m.source.family,
      layout: target.id,
      ranks: m.ranks.length,
      tensors: tp.tensors.length,
      bytes,
      files: written.sort(),
      seconds: (Date.now() - t0) / 1000,
      peakRssMB: peakRssMB(),
    });
    if (opts.dryRun) {
      const names = [...files.map((f) => f.name), ...(index ? [index] : []), ...sideFiles.map((f) => f.name)];
      return { ...summary(totalBytes, names), dryRun: true, plan: describePlan(plan) };
    }
    let done = 0;
    return await withChecksums(sh, (commit, stop) =>
      withOutput(dst, { force: opts.force, sources: [root] }, async (tmp) => {
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
  } finally {
    await sh.close();
  }
}
