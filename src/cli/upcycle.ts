import type { Command } from 'commander';
import { Option } from 'commander';
import { upcycle } from '../ops/upcycle.js';
import type { FloatDtype } from '../store/dtypes.js';
import { TARGET_NAMES } from '../../converters/index.js';
import { runWrite } from './plan-output.js';
import { dtypeArg, numberArg, writeFlags, type WriteFlags } from './options.js';
import { human } from './progress.js';

interface UpcycleFlags extends WriteFlags {
  experts: number;
  topK: number;
  granularity: number;
  sharedExperts: number;
  family?: string;
  router: 'random' | 'uniform';
  scheme: 'exact' | 'megatron';
  routerStd?: number;
  seed: number;
  expertsFrom?: string[];
  to?: string;
  ep?: number;
  etp?: number;
  dtype?: FloatDtype;
}

export function registerUpcycle(program: Command): void {
  const cmd = program
    .command('upcycle')
    .argument('<dense>', 'dense HF checkpoint (Llama, Mistral, Qwen2, Qwen3, ... with mlp.gate_proj/up_proj/down_proj)')
    .requiredOption('--experts <E>', 'routed experts per MoE layer', numberArg('--experts', 1))
    .requiredOption('--top-k <K>', 'experts selected per token (a multiple of the routed slices per copy)', numberArg('--top-k', 1))
    .option(
      '--granularity <G>',
      'slices of every dense MLP along its intermediate dim (Megatron --moe-upcycling-granularity)',
      numberArg('--granularity', 1),
      1,
    )
    .option('--shared-experts <S>', 'slices that become the always-on shared expert (qwen2_moe)', numberArg('--shared-experts', 0), 0)
    .option('--family <family>', 'target architecture: mixtral, qwen3_moe, qwen2_moe, granitemoe, glm4_moe (default: the one matching the source attention)')
    .addOption(
      new Option('--scheme <scheme>', "exact (default), or megatron: Megatron-LM's act_scale^(1/3) on fc1 and fc2 (approximate for SwiGLU)")
        .choices(['exact', 'megatron'])
        .default('exact'),
    )
    .addOption(new Option('--router <init>', 'router rows: seeded N(0, σ²) per copy, or all equal').choices(['random', 'uniform']).default('random'))
    .option('--router-std <σ>', 'standard deviation of random router rows (default 0.02)', numberArg('--router-std', 0, false))
    .option('--seed <n>', 'seed of the router rows', numberArg('--seed', 0), 0)
    .option('--experts-from <dense...>', 'more dense checkpoints of the same architecture, one per further copy (not function-preserving)')
    .option('--to <layout>', `layout to write: ${TARGET_NAMES.join(', ')} (default: the target family's HF layout)`)
    .option('--ep <N>', 'write the expert-parallel form directly (one folder per rank, as moekit shard)', numberArg('--ep', 1))
    .option('--etp <M>', 'expert tensor-parallel size with --ep', numberArg('--etp', 1))
    .addOption(new Option('--dtype <dtype>', 'cast every float tensor to f32, bf16 or f16').argParser(dtypeArg));
  writeFlags(cmd)
    .description('turn a dense checkpoint into an MoE checkpoint that computes the same function (sparse upcycling)')
    .addHelpText(
      'after',
      [
        '',
        'Each dense MLP is cut into G slices along I; S of them form the shared expert, and each of E / (G − S) copies',
        'holds the other G − S slices as experts whose router rows are tied, so a copy is always selected whole.',
        'Renormalised top-k weights then sum to 1/(G − S) per slice: every routed down projection is scaled by G − S',
        '(a Qwen2-MoE shared expert, gated by sigmoid(0) = 1/2, by 2). The result equals the dense model to float',
        'rounding; check it with `moekit verify <dense> <upcycled>`.',
        '',
        'Examples:',
        '  moekit upcycle fixtures/hf/llama_dense --experts 8 --top-k 2 -o /tmp/llama-moe          # Llama → Mixtral, 8 copies',
        '  moekit upcycle fixtures/hf/qwen3_dense --experts 16 --top-k 4 --granularity 4 -o /tmp/q3moe   # Qwen3 → Qwen3-MoE, fine-grained',
        '  moekit upcycle fixtures/hf/llama_dense --family qwen2_moe --granularity 4 --shared-experts 1 --experts 6 --top-k 3 -o /tmp/q2',
        '  moekit verify fixtures/hf/llama_dense /tmp/llama-moe',
      ].join('\n'),
    )
    .action((src: string, o: UpcycleFlags) =>
      runWrite(
        o,
        (w) => upcycle(src, o.output, { ...o, ...w }),
        (s) => `upcycle → ${s.family} (${s.layout}) into ${s.destination}`,
        (s) =>
          `dense → ${s.family} (${s.layout}): ${s.moeLayers} MoE layers × ${s.experts} experts (top-${s.topK}, G ${s.granularity}, ${s.copies} copies${s.sharedSlices ? `, ${s.sharedSlices} shared slices` : ''}), ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
        (s) => s.warnings,
      ),
    );
}
