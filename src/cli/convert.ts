import type { Command } from 'commander';
import { Option } from 'commander';
import { convert } from '../ops/convert.js';
import type { FloatDtype } from '../store/dtypes.js';
import { LAYOUTS, TARGET_NAMES } from '../../converters/index.js';
import type { GateUpOrder } from '../engine/layout.js';
import { runWrite } from './plan-output.js';
import { dtypeArg, writeFlags, type WriteFlags } from './options.js';
import { human } from './progress.js';
import { MoekitError } from '../errors.js';
import { writeMegatron } from '../ops/megatron-write.js';
import { writeMegatronLegacy } from '../ops/megatron-legacy-write.js';

interface ConvertFlags extends WriteFlags {
  to: string;
  card: boolean;
  format: 'safetensors' | 'torch_dist' | 'torch' | 'dcp' | 'pt' | 'fast_llm';
  gateUp?: GateUpOrder;
  dtype?: FloatDtype;
}

export function registerConvert(program: Command): void {
  const hf = LAYOUTS.filter((l) => l.families);
  const other = LAYOUTS.filter((l) => !l.families);
  const cmd = program
    .command('convert')
    .argument('<src>', 'checkpoint folder, .safetensors file, or model.safetensors.index.json')
    .requiredOption('--to <layout>', `target expert layout: ${TARGET_NAMES.join(', ')}`)
    .addOption(new Option('--gate-up <order>', 'order of gate and up in a fused gate/up tensor').choices(['concat', 'interleaved']))
    .addOption(new Option('--dtype <dtype>', 'cast every float tensor to f32, bf16 or f16 (round to nearest even)').argParser(dtypeArg))
    .addOption(
      new Option(
        '--format <container>',
        "container of the output: safetensors; pt (torch.save of the state dict: pytorch_model.bin, or shards + pytorch_model.bin.index.json); dcp (a torch.distributed.checkpoint folder of the converted tensors); with --to megatron: torch_dist (Megatron-Core dist checkpoint) or torch (legacy mp_rank_00/model_optim_rng.pt; per EP rank with moekit shard); with --to fast-llm: fast_llm (Fast-LLM's own checkpoint: metadata.yaml + model_0.safetensors, Mixtral architecture)",
      )
        .choices(['safetensors', 'pt', 'dcp', 'torch_dist', 'torch', 'fast_llm'])
        .default('safetensors'),
    )
    .option('--no-card', "don't write README.md (a model card: base_model, tags, this command, who loads the layout; the source's card below it)");
  writeFlags(cmd)
    .description('convert the experts of a MoE checkpoint to another layout, streaming and bit-exact')
    .addHelpText(
      'after',
      [
        '',
        'Layouts (--to):',
        `  hf                 the model family's own Hugging Face layout, so every layout converts back:`,
        ...hf.map((l) => `                       ${l.families!.join(', ')}: ${l.description}`),
        ...other.map((l) => `  ${l.id.padEnd(18)} ${l.description}${l.cannotHold ? ` (no ${l.cannotHold})` : ''}`),
        '',
        'Only expert-block tensors are renamed: routed experts, router weight/bias, score-correction bias,',
        'shared experts and shared-expert gate of every MoE layer (Megatron layouts use decoder.layers.<n>.mlp.).',
        'Every other tensor (embeddings, attention, norms, dense MLPs, lm_head) is copied byte for byte',
        'under its own name.',
        '',
        'Writes config.json (HF targets: updated for --dtype; others: kept) and moekit.json (family, layout,',
        'dims, routing, gate/up order, per-layer info) so the output converts back with --to hf alone.',
        'Refuses (one-line error, nothing written) unknown layouts, experts of mixed shapes, and anything',
        'it cannot do losslessly (e.g. GPT-OSS expert biases into megatron-grouped). Block-FP8 experts move',
        'with their scale blocks (<weight>_scale_inv beside each weight) where every cut falls on a block',
        'boundary; other quantized checkpoints (MXFP4, int4, NVFP4) re-lay out through moekit dequant --to.',
        '',
        'With --to megatron --format torch_dist the whole model (embeddings, norms, fused QKV per query group,',
        'router, experts, shared experts) is written as a Megatron-Core torch_dist checkpoint:',
        'latest_checkpointed_iteration.txt + iter_0000001/ (.metadata, __0_0.distcp, metadata.json), with the',
        'args in its common state; Megatron-Core loads it with dist_checkpointing.load into the matching',
        'GPTModel (local or TE spec, SequentialMLP experts). Mixtral, Qwen2-MoE and Qwen3-MoE so far.',
        'moekit reads it back (and Megatron legacy mp_rank_* folders) like any HF folder.',
        '',
        'With --to fast-llm --format fast_llm a Mixtral model is written as Fast-LLM saves it (metadata.yaml,',
        'model_0.safetensors with <parameter>/weights keys, k_proj and v_proj joined into key_value); Fast-LLM',
        'checkpoints read back, and a Mixtral one converts to HF byte for byte.',
        '',
        'Add --dry-run to see the plan first: per output file, which tensors are copied, renamed, restacked,',
        'transposed or cast, their bytes, and the expected peak memory.',
        '',
        'Examples:',
        '  moekit convert /models/Mixtral-8x7B --to te -o /ckpt/mixtral-te',
        '  moekit convert /ckpt/mixtral-te --to hf -o /models/mixtral-back',
        '  moekit convert fixtures/hf/qwen3_moe --to nemo --gate-up interleaved -o /tmp/q3-nemo',
        '  moekit convert fixtures/hf/mixtral --to fast-llm --format fast_llm -o /tmp/mixtral-fast-llm',
        '  moekit convert fixtures/hf/deepseek_v3 --to megatron --dtype bf16 --max-shard-size 2GB --jobs 8 -o /tmp/ds-mcore',
      ].join('\n'),
    )
    .action((src: string, o: ConvertFlags) => {
      if (o.format === 'torch_dist' || o.format === 'torch') return convertMegatron(src, o, 1);
      return runWrite(
        o,
        (w) =>
          convert(src, o.output, {
            ...w,
            to: o.to,
            gateUp: o.gateUp,
            dtype: o.dtype,
            format: o.format === 'dcp' || o.format === 'pt' || o.format === 'fast_llm' ? o.format : undefined,
            card: o.card ? { command: commandLine() } : undefined,
          }),
        (s) => `${s.sourceLayout} → ${s.layout} into ${s.destination}`,
        (s) =>
          `${s.sourceLayout} → ${s.layout}${s.identity ? ' (same layout: byte copy)' : ''}: ${s.tensors} tensors, ${human(s.bytes)} in ${s.files.filter((f) => /\.(safetensors|distcp|bin)$/.test(f)).length} file(s), ${s.moeLayers} MoE layers, ${s.seconds.toFixed(1)} s → ${s.destination}`,
        () => [],
        (s) => s.skipped.map((n) => `skipped: ${n} (weights in another format; not copied)`),
      );
    });
}

/** flags that change how a run goes, not what it writes: left out of the card */
const RUN_ONLY = new Set(['--force', '--no-fsync', '-q', '--quiet', '--json', '--strict']);

/** This run's command line as a user would retype it (quoted where needed), the destination shown as `<this folder>`, without RUN_ONLY flags and --jobs */
const commandLine = (): string => {
  const here = '<this folder>';
  const args = process.argv
    .slice(2)
    .map((a, i, all) => (all[i - 1] === '-o' || all[i - 1] === '--output' ? here : a.startsWith('--output=') ? `--output=${here}` : a))
    .filter((a, i, all) => !RUN_ONLY.has(a) && a !== '--jobs' && all[i - 1] !== '--jobs' && !a.startsWith('--jobs='));
  const quote = (a: string) => (a.endsWith(here) || /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`);
  return ['moekit', ...args.map(quote)].join(' ');
};

/** --to megatron --format torch_dist | torch: the whole model as Megatron itself saves it (also `moekit shard --format torch`). */
export function convertMegatron(src: string, o: WriteFlags & { to?: string; format: string; dtype?: unknown; gateUp?: unknown }, ep: number): Promise<void> {
  if (o.to !== 'megatron')
    throw new MoekitError('usage', `--format ${o.format} writes Megatron checkpoints: use it with --to megatron (not --to ${o.to ?? 'its own layout'})`);
  if (o.dtype || o.gateUp)
    throw new MoekitError('usage', `--format ${o.format} copies the tensors as they are: convert with --dtype first, then to ${o.format}`);
  if (o.format === 'torch')
    return runWrite(
      o,
      (w) => writeMegatronLegacy(src, o.output, { ...w, ep }),
      (s) => `${s.family} → Megatron legacy torch format, EP ${s.ep} into ${s.destination}`,
      (s) =>
        `${s.family} → Megatron legacy torch format, EP ${s.ep}: ${s.ranks.join(', ')}, ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
    );
  // one checkpoint whatever the EP size (Megatron-Core reshards on load); with --ep each EP rank's experts in its own __<r>_0.distcp
  return runWrite(
    o,
    (w) => writeMegatron(src, o.output, { ...w, ep }),
    (s) => `${s.family} → Megatron-Core torch_dist into ${s.destination}`,
    (s) =>
      `${s.family} → Megatron-Core torch_dist${ep > 1 ? `, EP ${ep}` : ''}: ${s.tensors} stacked tensors in ${s.chunks} chunks, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
  );
}
