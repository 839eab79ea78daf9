import type { Command } from 'commander';
import { Option } from 'commander';
import { MoekitError } from '../errors.js';
import { parseSize } from './convert.js';
import { shard, reshard, type ShardSummary } from '../ops/shard/shard.js';
import { merge } from '../ops/shard/merge.js';
import { TARGET_NAMES } from '../../converters/index.js';

const human = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);

const int = (what: string, min: number) => (v: string): number => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isInteger(n) || n < min) throw new MoekitError('usage', `${what}: expected an integer ≥ ${min}, got '${v}'`);
  return n;
};

function progress(json?: boolean): ((b: number, total: number) => void) | undefined {
  if (!process.stderr.isTTY || json) return undefined;
  let last = 0;
  return (b, total) => {
    const now = Date.now();
    if (now - last < 100 && b < total) return;
    last = now;
    const f = total ? b / total : 1;
    process.stderr.write(`\r[${'#'.repeat(Math.round(f * 30)).padEnd(30, '.')}] ${(f * 100).toFixed(0).padStart(3)}%  ${human(b)}/${human(total)} `);
  };
}

function report(s: ShardSummary, json?: boolean): void {
  if (process.stderr.isTTY && !json) process.stderr.write('\n');
  if (json) process.stdout.write(JSON.stringify(s, null, 2) + '\n');
  else {
    process.stdout.write(
      `${s.sourceLayout} → ${s.layout}, EP ${s.ep}${s.etp > 1 ? ` × ETP ${s.etp}` : ''} (${s.placement}, dense ${s.dense}): wrote ${s.ranks.length} rank(s) [${s.ranks.join(', ')}], ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}\n`,
    );
  }
}

interface CutOpts {
  ep: number;
  etp: number;
  to?: string;
  placement?: 'contiguous' | 'round-robin';
  dense?: 'replicate' | 'rank0';
  rank?: number;
  maxShardSize: string;
  jobs: number;
  force?: boolean;
  fsync: boolean;
  json?: boolean;
  output: string;
}

function cutOptions(cmd: Command, defaults: boolean): Command {
  return cmd
    .requiredOption('--ep <n>', 'expert-parallel size N: ranks that split the experts', int('--ep', 1))
    .option('--etp <m>', 'expert tensor-parallel size M: slices of every expert\'s intermediate dim', int('--etp', 1), 1)
    .option('--to <layout>', `layout of the rank checkpoints: ${TARGET_NAMES.join(', ')} (default: ${defaults ? "the source's" : "the sharded checkpoint's"})`)
    .addOption(new Option('--placement <p>', `which experts each rank holds${defaults ? ' (default contiguous)' : " (default: the source sharding's)"}`).choices(['contiguous', 'round-robin']))
    .addOption(new Option('--dense <d>', `non-expert tensors on every rank or on rank 0 only${defaults ? ' (default replicate)' : ''}`).choices(['replicate', 'rank0']))
    .option('--rank <r>', 'write only rank r (ep_rank · etp + etp_rank) and the manifest: one job of a job array', int('--rank', 0))
    .option('--max-shard-size <size>', 'split each rank into files of at most this size', '5GB')
    .option('--jobs <n>', 'expert slabs assembled concurrently', int('--jobs', 1), 4)
    .option('--force', 'replace a non-empty destination (or, with --rank, an existing rank folder)')
    .option('--no-fsync', 'skip fsync before the rename (faster; not crash-safe)')
    .option('--json', 'print a JSON summary on stdout (includes peakRssMB)')
    .requiredOption('-o, --output <dst>', 'destination folder of the sharded checkpoint');
}

export function registerShard(program: Command): void {
  cutOptions(program.command('shard').argument('<src>', 'checkpoint folder, .safetensors file, or model.safetensors.index.json'), true)
    .description('cut a MoE checkpoint into expert-parallel (and expert-TP) rank checkpoints, streaming')
    .addHelpText(
      'after',
      [
        '',
        'Writes <dst>/ep<r>-of-<N>/ (with --etp M: <dst>/ep<r>-etp<t>/), each a normal checkpoint in the target',
        'layout holding its experts with LOCAL ids 0..E/N-1 (the router keeps all E rows), and',
        '<dst>/moekit-manifest.json (source, EP/ETP, placement, global↔local expert map, per tensor shape,',
        'dtype, sha256). Placement: contiguous (Megatron: rank r holds [r·E/N, (r+1)·E/N)) or round-robin',
        '(expert e on rank e mod N). Expert-TP splits gate/up rows and down columns; the up/gate biases are',
        'split, the down bias stays on ETP rank 0 (it is added once after the all-reduce).',
        '',
        'Examples:',
        '  moekit shard fixtures/hf/qwen3_moe --ep 4 -o /tmp/q3-ep4',
        '  moekit shard /models/Mixtral-8x7B --ep 8 --etp 2 --to te -o /ckpt/mixtral-ep8',
        '  moekit shard /models/ds --ep 8 --rank $SLURM_ARRAY_TASK_ID -o /ckpt/ds-ep8   # one job per rank',
      ].join('\n'),
    )
    .action(async (src: string, o: CutOpts) => {
      const s = await shard(src, o.output, cutArgs(o));
      report(s, o.json);
    });
}

/** The options shared by shard and reshard, as the library takes them. */
const cutArgs = (o: CutOpts) => ({
  ep: o.ep,
  etp: o.etp,
  to: o.to,
  placement: o.placement,
  dense: o.dense,
  rank: o.rank,
  maxShardSize: parseSize(o.maxShardSize),
  jobs: o.jobs,
  force: o.force,
  fsync: o.fsync,
  onProgress: progress(o.json),
});

export function registerReshard(program: Command): void {
  cutOptions(program.command('reshard').argument('<sharded>', 'folder written by moekit shard'), false)
    .description('re-cut a sharded checkpoint for another EP/ETP size directly from its ranks (no merged copy)')
    .action(async (src: string, o: CutOpts) => {
      const s = await reshard(src, o.output, cutArgs(o));
      report(s, o.json);
    });
}

export function registerMerge(program: Command): void {
  program
    .command('merge')
    .argument('<sharded>', 'folder written by moekit shard')
    .option('--to <layout>', `layout of the merged checkpoint: ${TARGET_NAMES.join(', ')} (default: the original source layout)`)
    .option('--max-shard-size <size>', 'split the output into files of at most this size', '5GB')
    .option('--jobs <n>', 'expert slabs assembled concurrently', int('--jobs', 1), 4)
    .option('--force', 'replace a non-empty destination')
    .option('--no-fsync', 'skip fsync before the rename (faster; not crash-safe)')
    .option('--json', 'print a JSON summary on stdout (includes peakRssMB)')
    .requiredOption('-o, --output <dst>', 'destination folder')
    .description('glue the ranks of a sharded checkpoint back into one checkpoint, checking every sha256')
    .addHelpText('after', '\nRefuses (one-line error, nothing written) a missing rank, an expert claimed by two ranks, and a tensor whose\nsha256 does not match the manifest.')
    .action(async (src: string, o: { to?: string; maxShardSize: string; jobs: number; force?: boolean; fsync: boolean; json?: boolean; output: string }) => {
      const s = await merge(src, o.output, { to: o.to, maxShardSize: parseSize(o.maxShardSize), jobs: o.jobs, force: o.force, fsync: o.fsync, onProgress: progress(o.json) });
      if (process.stderr.isTTY && !o.json) process.stderr.write('\n');
      if (o.json) process.stdout.write(JSON.stringify(s, null, 2) + '\n');
      else process.stdout.write(`merged ${s.ranks} ranks → ${s.layout}: ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}\n`);
    });
}
