import type { Command } from 'commander';
import { Option } from 'commander';
import { quant } from '../ops/quant.js';
import { runWrite } from './plan-output.js';
import { numberArg, writeFlags, type WriteFlags } from './options.js';
import { human } from './progress.js';

interface QuantFlags extends WriteFlags {
  format: 'fp8-block';
  block?: number;
  include?: string[];
  exclude?: string[];
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function registerQuant(program: Command): void {
  const cmd = program
    .command('quant')
    .argument('<src>', 'float checkpoint folder, .safetensors file, or model.safetensors.index.json')
    .addOption(new Option('--format <format>', 'quantized format').choices(['fp8-block']).makeOptionMandatory())
    .addOption(new Option('--block <n>', 'block edge of the per-block scales (default 128)').argParser(numberArg('--block', 1)))
    .option('--include <glob>', 'quantize only 2-D weights whose name matches (repeatable; * and ?)', collect)
    .option('--exclude <glob>', 'never quantize weights whose name matches (repeatable)', collect);
  writeFlags(cmd)
    .description('quantize a float checkpoint to DeepSeek-V3-style block FP8 (E4M3 weights + weight_scale_inv per block), streaming')
    .addHelpText(
      'after',
      [
        '',
        'Per block of --block × --block values: scale_inv = amax / 448 (1 for an all-zero block), weight =',
        'E4M3(w / scale_inv) rounded to nearest even, saturating at ±448. The scales are stored as',
        '<name>_scale_inv F32 [⌈out/block⌉, ⌈in/block⌉]; config.json gets quantization_config (quant_method fp8,',
        'weight_block_size, modules_to_not_convert listing every 2-D weight left in float).',
        '',
        'Default selection, as the DeepSeek-V3 FP8 release: attention, routed-expert, shared-expert and dense',
        'MLP projections (q/k/v/o, q_a/q_b/kv_a/kv_b, gate/up/down, w1/w2/w3). Routers, norms, embeddings and',
        'lm_head stay in float. --include replaces the default; --exclude removes from it.',
        '',
        'moekit verify <quantized> <src> compares the two at FP8 tolerance (rtol 0.1 by default there).',
        '',
        'Examples:',
        '  moekit quant /models/Qwen3-30B-A3B --format fp8-block -o /models/Qwen3-30B-A3B-FP8',
        "  moekit quant fixtures/hf/deepseek_v3 --format fp8-block --exclude '*.self_attn.*' -o /tmp/ds-fp8",
      ].join('\n'),
    )
    .action((src: string, o: QuantFlags) =>
      runWrite(
        o,
        (w) => quant(src, o.output, { ...w, format: o.format, block: o.block, include: o.include, exclude: o.exclude }),
        (s) => `quantize (${s.format}) into ${s.destination}`,
        (s) =>
          `${s.format}, blocks ${s.block}×${s.block}: ${s.quantized} weights quantized; ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
      ),
    );
}
