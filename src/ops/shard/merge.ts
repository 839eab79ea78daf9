/**
 * `moekit merge`: a sharded checkpoint back to one checkpoint. A missing rank or a duplicate expert
 * is refused before anything is written; every rank's checksums are verified (worker threads) while
 * the output streams into a temp folder, which is renamed into place only if all match. The merged IR (views over the rank files) is then planned through the
 * target layout (default: the original source layout, with its gate/up order, so the result is
 * byte-identical to the source per tensor) and written into a temp folder renamed into place.
 */
import { copyFile, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { MoekitError } from '../../errors.js';
import { writeCheckpoint, writeJsonAtomic } from '../../store/safetensors/writer.js';
import { byteSize } from '../../store/dtypes.js';
import { moekitJson, planWrite, resolveTarget } from '../../engine/plan.js';
import { layoutById } from '../../../converters/index.js';
import { openSharded } from './sharded.js';
import { checkDestination, gateUpFor, peakRssMB, tempSibling, withChecksums } from './shard.js';

export interface MergeOptions {
  to?: string;
  maxShardSize?: number;
  jobs?: number;
  force?: boolean;
  fsync?: boolean;
  onProgress?: (bytes: number, totalBytes: number) => void;
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
}

export async function merge(sharded: string, dst: string, opts: MergeOptions = {}): Promise<MergeSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const root = resolve(sharded);
  if (root === dst) throw new MoekitError('destination', `destination ${dst} is the source folder`);
  const dstExists = await checkDestination(dst, !!opts.force);
  const sh = await openSharded(root);
  try {
    const m = sh.manifest;
    const target = opts.to ? resolveTarget(opts.to, sh.meta, sh.sourceSpec) : layoutById(m.source.layout)!;
    const plan = planWrite(sh.reader, sh.ir, target, { gateUp: gateUpFor(target, m.source.layout, m.source.gateUp) ?? gateUpFor(target, m.layout, m.gateUp), jobs: opts.jobs });
    const totalBytes = plan.entries.reduce((a, e) => a + byteSize(e.dtype, e.shape), 0);
    return await withChecksums(sh, async (commit, stop) => {
      await mkdir(dirname(dst), { recursive: true });
      const tmp = tempSibling(dst);
      try {
        const entries = plan.entries.map((e) => ({
          ...e,
          source: async function* () {
            for await (const c of e.source()) {
              const why = stop();
              if (why) {
                c.release?.();
                throw why;
              }
              yield c;
            }
          },
        }));
        const res = await writeCheckpoint(tmp, entries, {
          maxShardSize: opts.maxShardSize,
          metadata: m.source.metadata,
          fsync: opts.fsync,
          onProgress: opts.onProgress && ((b) => opts.onProgress!(b, totalBytes)),
        });
        const files = [...res.files];
        if (m.source.config) {
          await writeJsonAtomic(join(tmp, 'config.json'), m.source.config);
          files.push('config.json');
        }
        await writeJsonAtomic(join(tmp, 'moekit.json'), moekitJson(sh.ir, plan, m.source.layout));
        files.push('moekit.json');
        const rank0 = join(root, m.ranks.find((r) => r.index === 0)!.dir);
        for (const name of await readdir(rank0)) {
          if (/\.safetensors$|\.safetensors\.index\.json$|^config\.json$|^moekit\.json$|^rank-manifest\.json$|\.moekit-tmp-|^\./.test(name)) continue;
          if (!(await stat(join(rank0, name))).isFile()) continue;
          await copyFile(join(rank0, name), join(tmp, name));
          files.push(name);
        }
        await commit();
        if (dstExists) await rm(dst, { recursive: true, force: true });
        await rename(tmp, dst);
        return {
          source: sharded,
          destination: dst,
          family: m.source.family,
          layout: target.id,
          ranks: m.ranks.length,
          tensors: plan.entries.length,
          bytes: res.totalSize,
          files: files.sort(),
          seconds: (Date.now() - t0) / 1000,
          peakRssMB: peakRssMB(),
        };
      } catch (e) {
        await rm(tmp, { recursive: true, force: true });
        throw e;
      }
    });
  } finally {
    await sh.close();
  }
}
