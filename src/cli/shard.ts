import type { Command } from 'commander';
import { Option } from 'commander';
import { shard, reshard, type ShardSummary } from '../ops/shard/shard.js';
import { TARGET_NAMES } from '../../converters/index.js';
import { printResult, writeRun } from './plan-output.js';
import { numberArg, writeFlags, type WriteFlags } from './options.js';
import { human, progress } from './progress.js';
import { convertMegatron } from './convert.js';
import { MoekitError } from '../errors.js';

interface CutFlags extends WriteFlags {
  ep: number;
  etp: number;
  to?: string;
  placement?: 'contiguous' | 'round-robin';
  dense?: 'replicate' | 'rank0';
  rank?: number;
  format?: 'safetensors' | 'torch' | 'torch_dist' | 'pt';
}

function report(s: ShardSummary, json?: boolean): void {
  const ep = `EP ${s.ep}${s.etp > 1 ? ` × ETP ${s.etp}` : ''}`;
  printResult(
    s,
    json,
    `${s.sourceLayout} → ${s.layout}, ${ep} into ${s.destination}`,
    () =>
      `${s.sourceLayout} → ${s.layout}, ${ep} (${s.placement}, dense ${s.dense}): wrote ${s.ranks.length} rank(s) [${s.ranks.join(', ')}], ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
  );
}

/** The flags shared by shard and reshard. */
function cutFlags(cmd: Command, defaults: boolean): Command {
  cmd
    .requiredOption('--ep <n>', 'expert-parallel size N: ranks that split the experts', numberArg('--ep', 1))
    .option('--etp <m>', "expert tensor-parallel size M: slices of every expert's intermediate dim", numberArg('--etp', 1), 1)
    .option('--to <layout>', `layout of the rank checkpoints: ${TARGET_NAMES.join(', ')} (default: ${defaults ? "the source's" : "the sharded checkpoint's"})`)
    .addOption(
      new Option('--placement <p>', `which experts each rank holds${defaults ? ' (default contiguous)' : " (default: the source sharding's)"}`).choices([
        'contiguous',
        'round-robin',
      ]),
    )
    .addOption(
      new Option('--dense <d>', `non-expert tensors on every rank or on rank 0 only${defaults ? ' (default replicate)' : ''}`).choices(['replicate', 'rank0']),
    )
    .option('--rank <r>', 'write only rank r (ep_rank · etp + etp_rank) and the manifest: one job of a job array', numberArg('--rank', 0));
  return writeFlags(cmd, 'the sharded checkpoint');
}

/** The options shared by shard and reshard, as the library takes them. */
const cutArgs = (o: CutFlags, onProgress: (b: number, t: number) => void) => ({
  ep: o.ep,
  etp: o.etp,
  to: o.to,
  placement: o.placement,
  dense: o.dense,
  rank: o.rank,
  format: o.format === 'pt' ? ('pt' as const) : undefined,
  ...writeRun(o, onProgress),
});

export function registerShard(program: Command): void {
  cutFlags(program.command('shard').argument('<src>', 'checkpoint folder, .safetensors file, or model.safetensors.index.json'), true)
    .addOption(
      new Option(
        '--format <container>',
        'safetensors rank folders (default); pt: each rank a torch.save of its state dict (pytorch_model.bin, what an EP rank of a framework without save code, e.g. flashfusemoe, torch.saves); with --to megatron: torch (Megatron legacy iter_0000001/mp_rank_00_<r>/model_optim_rng.pt) or torch_dist (one Megatron-Core dist checkpoint whose EP rank r writes its experts into __<r>_0.distcp, as Megatron with EP N saves)',
      ).choices(['safetensors', 'pt', 'torch', 'torch_dist']),
    )
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
        '  moekit shard /models/Mixtral-8x7B --ep 8 --to megatron --format torch -o /ckpt/mcore   # Megatron legacy per-rank files',
        '  moekit shard /models/Mixtral-8x7B --ep 8 --to megatron --format torch_dist -o /ckpt/mcore   # dist checkpoint, __<r>_0.distcp per EP rank',
      ].join('\n'),
    )
    .action(async (src: string, o: CutFlags) => {
      if (o.format === 'torch' || o.format === 'torch_dist') {
        if (o.etp > 1 || o.rank !== undefined || o.placement === 'round-robin')
          throw new MoekitError('usage', `--format ${o.format} writes Megatron's own EP checkpoints: contiguous experts, ETP 1, every rank in one run`);
        return convertMegatron(src, { ...o, format: o.format }, o.ep);
      }
      const bar = progress(o.json || o.dryRun);
      const s = await shard(
        src,
        o.output,
        cutArgs(o, (b, t) => bar.update(b, t)),
      );
      bar.done();
      report(s, o.json);
    });
}

export function registerReshard(program: Command): void {
  cutFlags(program.command('reshard').argument('<sharded>', 'folder written by moekit shard'), false)
    .description('re-cut a sharded checkpoint for another EP/ETP size directly from its ranks (no merged copy)')
    .addHelpText(
      'after',
      [
        '',
        'Reads every rank of <sharded> (checking each sha256 against its manifest) and writes the new ranks, as shard does.',
        '',
        'Examples:',
        '  moekit reshard /ckpt/mixtral-ep8 --ep 4 -o /ckpt/mixtral-ep4',
        '  moekit reshard /ckpt/mixtral-ep8 --ep 8 --etp 2 --to te -o /ckpt/mixtral-ep8-etp2',
      ].join('\n'),
    )
    .action(async (src: string, o: CutFlags) => {
      const bar = progress(o.json || o.dryRun);
      const s = await reshard(
        src,
        o.output,
        cutArgs(o, (b, t) => bar.update(b, t)),
      );
      bar.done();
      report(s, o.json);
    });
}
