import type { Command } from 'commander';
import { Option } from 'commander';
import { merge } from '../ops/shard/merge.js';
import { mergeRankFiles } from '../ops/shard/merge-ranks.js';
import type { Placement } from '../ops/shard/placement.js';
import { TARGET_NAMES } from '../../converters/index.js';
import { runWrite } from './plan-output.js';
import { writeFlags, type WriteFlags } from './options.js';
import { human } from './progress.js';

export function registerMerge(program: Command): void {
  const cmd = program
    .command('merge')
    .argument('<sharded...>', 'folder written by moekit shard; or the files (or folders) of every expert-parallel rank, in rank order')
    .option('--to <layout>', `layout of the merged checkpoint: ${TARGET_NAMES.join(', ')} (default: the original source layout)`)
    .addOption(
      new Option('--placement <p>', 'rank files without a manifest: rank r holds experts [r·E/N, (r+1)·E/N) (contiguous, default) or e ≡ r mod N').choices([
        'contiguous',
        'round-robin',
      ]),
    );
  writeFlags(cmd)
    .description('glue the ranks of a sharded checkpoint back into one checkpoint, checking every sha256')
    .addHelpText(
      'after',
      [
        '',
        'Refuses (one-line error, nothing written) a missing rank, an expert claimed by two ranks, and a tensor whose',
        'sha256 does not match the manifest.',
        '',
        "Rank files that no moekit manifest describes (each rank's torch.save(state_dict()) of a framework without",
        "save code of its own, e.g. flashfusemoe: the same keys, the rank's experts renumbered from 0) merge when",
        'given in rank order: N files × E/N experts must be the E the router scores, and every tensor outside the',
        'experts must be byte-identical on every rank (so files of another EP size or another run are refused).',
        '',
        'Examples:',
        '  moekit merge /ckpt/mixtral-ep8 -o /models/mixtral-merged',
        '  moekit merge /ckpt/mixtral-ep8 --to te --max-memory 2GB -o /ckpt/mixtral-te   # merge and re-lay out in one pass',
        '  moekit merge rank0.pt rank1.pt rank2.pt rank3.pt --hf-config config.json --to hf -o /models/merged   # user EP files',
      ].join('\n'),
    )
    .action((srcs: string[], o: WriteFlags & { to?: string; placement?: Placement }) =>
      runWrite(
        o,
        (w) => (srcs.length === 1 ? merge(srcs[0]!, o.output, { ...w, to: o.to }) : mergeRankFiles(srcs, o.output, { ...w, to: o.to, placement: o.placement })),
        (s) => `merge ${s.ranks} ranks → ${s.layout} into ${s.destination}`,
        (s) => `merged ${s.ranks} ranks → ${s.layout}: ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
      ),
    );
}
