import type { Command } from 'commander';
import { Option } from 'commander';
import { dequant } from '../ops/dequant.js';
import type { FloatDtype } from '../store/dtypes.js';
import { TARGET_NAMES } from '../../converters/index.js';
import { runWrite } from './plan-output.js';
import { dtypeArg, writeFlags, type WriteFlags } from './options.js';
import { human } from './progress.js';

interface DequantFlags extends WriteFlags {
  to?: string;
  dtype?: FloatDtype;
}

export function registerDequant(program: Command): void {
  const cmd = program
    .command('dequant')
    .argument('<src>', 'quantized checkpoint folder, .safetensors file, or model.safetensors.index.json')
    .addOption(new Option('--dtype <dtype>', 'dtype of the dequantized weights: bf16 (default), f16 or f32').argParser(dtypeArg))
    .option('--to <layout>', `expert layout of the output (default: the source's own): ${TARGET_NAMES.join(', ')}`);
  writeFlags(cmd)
    .description('dequantize a block-FP8, MXFP4, int4 (compressed-tensors) or NVFP4 checkpoint into plain float weights, streaming')
    .addHelpText(
      'after',
      [
        '',
        'Schemes, recognised by their tensors (quantization_config supplies block sizes):',
        '  fp8-block  W F8_E4M3 [out, in] + W_scale_inv [⌈out/128⌉, ⌈in/128⌉]   (DeepSeek-V3, Qwen3, MiniMax-M2 FP8)',
        '  mxfp4      P_blocks U8 [E, out, in/32, 16] + P_scales (E8M0)         (GPT-OSS)',
        '  int4-pack  X.weight_packed I32 + X.weight_scale + X.weight_shape      (compressed-tensors, Kimi-K2)',
        '  nvfp4      X.weight U8 (E2M1 pairs) + X.weight_scale F8 per 16 + X.weight_scale_2  (ModelOpt)',
        '',
        'Quantized weights become --dtype; their scale tensors and static activation scales (input_scale)',
        'are left out; every other tensor is copied byte for byte. config.json loses quantization_config',
        '(transformers then loads a plain model) and records the dtype. MXFP4 → bf16 is exact; FP8 → bf16',
        'rounds the product with its scale (use --dtype f32 to keep it exact).',
        'A missing or misshapen scale tensor, a NaN scale, or a block size that does not match the scales',
        'is a one-line error (exit 2) and nothing is written.',
        '',
        'Examples:',
        '  moekit dequant /models/DeepSeek-V3 -o /models/DeepSeek-V3-bf16',
        '  moekit dequant /models/gpt-oss-20b --dtype f32 --to te -o /ckpt/gpt-oss-te',
      ].join('\n'),
    )
    .action((src: string, o: DequantFlags) =>
      runWrite(
        o,
        (w) => dequant(src, o.output, { ...w, to: o.to, dtype: o.dtype }),
        (s) => `dequantize (${s.method}) into ${s.destination}`,
        (s) =>
          `${s.method} → ${s.dtype}, ${s.sourceLayout} → ${s.layout}: ${s.dequantized} weights dequantized, ${s.dropped} activation scales left out; ${s.tensors} tensors, ${human(s.bytes)}, ${s.seconds.toFixed(1)} s → ${s.destination}`,
      ),
    );
}
