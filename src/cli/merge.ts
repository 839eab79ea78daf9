import type { Command } from 'commander';
import { merge } from '../ops/shard/merge.js';
import { TARGET_NAMES } from '../../converters/index.js';
import { printResult } from './plan-output.js';
import { writeFlags, type WriteFlags } from './options.js';
import { human, progress } from './progress.js';

export function registerMerge(program: Command): void {
  const cmd = program
    .command('merge')
    .argument('<sharded>', 'folder written by moekit shard')
    .option('--to <layout>', `layout of the merged checkpoint: ${TARGET_NAMES.join(', ')} (default: the original source layout)`);
  writeFlags(cmd)
    .description('glue the ranks of a sharded checkpoint back into one checkpoint, checking every sha256')
    .addHelpText(
      'after',
      '\nRefuses (one-line error, nothing written) a missing rank, an expert claimed by two ranks, and a tensor whose\nsha256 does not match the manifest.',
    )
    .action(async (src: string, o: WriteFlags & { to?: string }) => {
      const bar = progress(o.json || o.dryRun);
      const s = await merge(src, o.output, {
        to: o.to,
        maxShardSize: o.maxShardSize,
        jobs: o.jobs,
        force: o.force,
        fsync: o.fsync,
        dryRun: o.dryRun,
        onProgress: (b, t) => bar.update(b, t),
      });
      bar.done();
      printResult(
        s,
        o.json,
        `merge ${s.ranks} ranks → ${s.layout} into ${s.destination}`,
        () => `merged ${s.ranks} ranks → ${s.layout}: ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
      );
    });
}
