import type { Command } from 'commander';
import { merge } from '../ops/shard/merge.js';
import { TARGET_NAMES } from '../../converters/index.js';
import { runWrite } from './plan-output.js';
import { writeFlags, type WriteFlags } from './options.js';
import { human } from './progress.js';

export function registerMerge(program: Command): void {
  const cmd = program
    .command('merge')
    .argument('<sharded>', 'folder written by moekit shard')
    .option('--to <layout>', `layout of the merged checkpoint: ${TARGET_NAMES.join(', ')} (default: the original source layout)`);
  writeFlags(cmd)
    .description('glue the ranks of a sharded checkpoint back into one checkpoint, checking every sha256')
    .addHelpText(
      'after',
      [
        '',
        'Refuses (one-line error, nothing written) a missing rank, an expert claimed by two ranks, and a tensor whose',
        'sha256 does not match the manifest.',
        '',
        'Examples:',
        '  moekit merge /ckpt/mixtral-ep8 -o /models/mixtral-merged',
        '  moekit merge /ckpt/mixtral-ep8 --to te --max-memory 2GB -o /ckpt/mixtral-te   # merge and re-lay out in one pass',
      ].join('\n'),
    )
    .action((src: string, o: WriteFlags & { to?: string }) =>
      runWrite(
        o,
        (w) => merge(src, o.output, { ...w, to: o.to }),
        (s) => `merge ${s.ranks} ranks → ${s.layout} into ${s.destination}`,
        (s) => `merged ${s.ranks} ranks → ${s.layout}: ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
      ),
    );
}
