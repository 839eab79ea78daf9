import type { Command } from 'commander';
import { Option } from 'commander';
import { convert, type ConvertSummary } from '../ops/convert.js';
import { parseFloatDtype, type FloatDtype } from '../store/dtypes.js';
import { peakRssMB } from '../output/transaction.js';
import { MoekitError } from '../errors.js';
import { LAYOUTS, TARGET_NAMES } from '../../converters/index.js';
import type { GateUpOrder } from '../engine/layout.js';

/** "5GB", "500MB", "1.5GiB", "1000000" → bytes. */
export function parseSize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$/i.exec(s);
  if (!m) throw new MoekitError('usage', `--max-shard-size: cannot read '${s}' (examples: 5GB, 500MB, 2GiB)`);
  const unit = (m[2] ?? 'b').toLowerCase();
  const pow = { b: 0, k: 1, m: 2, g: 3, t: 4 }[unit[0] as 'b' | 'k' | 'm' | 'g' | 't'];
  const base = unit.includes('i') ? 1024 : 1000;
  return Math.floor(Number(m[1]) * base ** pow);
}

const human = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);
const clock = (s: number) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, '0')}`;

function progressBar(): (bytes: number, tensors: number, total: number, totalTensors: number) => void {
  const t0 = Date.now();
  let last = 0;
  return (bytes, tensors, total, totalTensors) => {
    const now = Date.now();
    if (now - last < 100 && tensors < totalTensors) return;
    last = now;
    const f = total ? bytes / total : 1;
    const w = 30;
    const el = (now - t0) / 1000;
    const eta = f > 0 && f < 1 ? clock((el / f) * (1 - f)) : '0:00';
    const bar = '#'.repeat(Math.round(f * w)).padEnd(w, '.');
    process.stderr.write(`\r[${bar}] ${(f * 100).toFixed(0).padStart(3)}%  ${human(bytes)}/${human(total)}  ${tensors}/${totalTensors} tensors  ETA ${eta} `);
  };
}

export function registerConvert(program: Command): void {
  const hf = LAYOUTS.filter((l) => l.families);
  const other = LAYOUTS.filter((l) => !l.families);
  program
    .command('convert')
    .argument('<src>', 'checkpoint folder, .safetensors file, or model.safetensors.index.json')
    .requiredOption('--to <layout>', `target expert layout: ${TARGET_NAMES.join(', ')}`)
    .requiredOption('-o, --output <dst>', 'destination folder (must not exist or be empty, unless --force)')
    .addOption(new Option('--gate-up <order>', 'order of gate and up in a fused gate/up tensor').choices(['concat', 'interleaved']))
    .option('--dtype <dtype>', 'cast every float tensor to f32, bf16 or f16 (round to nearest even)')
    .option('--max-shard-size <size>', 'split the output into files of at most this size', '5GB')
    .option('--jobs <n>', 'expert slabs assembled concurrently', '4')
    .option('--force', 'replace a non-empty destination')
    .option('--no-fsync', 'skip fsync of the written files before the final rename (faster; not crash-safe)')
    .option('--json', 'print a JSON summary on stdout')
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
        'it cannot do losslessly (e.g. GPT-OSS expert biases into megatron-grouped). Quantized checkpoints',
        '(FP8 block scales, MXFP4) are copied only to their own layout; dequantize to re-layout them.',
        '',
        'Examples:',
        '  moekit convert /models/Mixtral-8x7B --to te -o /ckpt/mixtral-te',
        '  moekit convert /ckpt/mixtral-te --to hf -o /models/mixtral-back',
        '  moekit convert fixtures/hf/qwen3_moe --to nemo --gate-up interleaved -o /tmp/q3-nemo',
        '  moekit convert fixtures/hf/deepseek_v3 --to megatron --dtype bf16 --max-shard-size 2GB --jobs 8 -o /tmp/ds-mcore',
      ].join('\n'),
    )
    .action(async (src: string, opts: { to: string; output: string; gateUp?: GateUpOrder; dtype?: string; maxShardSize: string; jobs: string; force?: boolean; fsync: boolean; json?: boolean }) => {
      let dtype: FloatDtype | undefined;
      if (opts.dtype) {
        try {
          dtype = parseFloatDtype(opts.dtype);
        } catch (e) {
          throw new MoekitError('usage', `--dtype: ${(e as Error).message}`);
        }
      }
      const jobs = Number(opts.jobs);
      if (!Number.isInteger(jobs) || jobs < 1) throw new MoekitError('usage', `--jobs: expected a positive integer, got '${opts.jobs}'`);
      const tty = process.stderr.isTTY && !opts.json;
      const summary: ConvertSummary = await convert(src, opts.output, {
        to: opts.to,
        gateUp: opts.gateUp,
        dtype,
        maxShardSize: parseSize(opts.maxShardSize),
        jobs,
        force: opts.force,
        fsync: opts.fsync,
        onProgress: tty ? progressBar() : undefined,
      });
      if (tty) process.stderr.write('\n');
      if (opts.json) process.stdout.write(JSON.stringify({ ...summary, peakRssMB: peakRssMB() }, null, 2) + '\n');
      else {
        process.stdout.write(
          `${summary.sourceLayout} → ${summary.layout}${summary.identity ? ' (same layout: byte copy)' : ''}: ${summary.tensors} tensors, ${human(summary.bytes)} in ${summary.files.filter((f) => f.endsWith('.safetensors')).length} file(s), ${summary.moeLayers} MoE layers, ${summary.seconds.toFixed(1)} s → ${summary.destination}\n`,
        );
      }
    });
}
