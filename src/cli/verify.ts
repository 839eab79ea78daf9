import type { Command } from 'commander';
import { peakRssMB } from '../output/transaction.js';
import { numberArg, sizeArg } from './options.js';
import { info } from './progress.js';
import { formatReport, parseLayers, verify, type VerifyOptions } from '../ops/verify.js';

export function registerVerify(program: Command): void {
  program
    .command('verify')
    .argument('<a>', 'checkpoint to verify (folder, .safetensors or index.json)')
    .argument('[b]', 'second checkpoint: both are fed the same tokens and compared layer by layer')
    .option('--reference <file>', 'safetensors with `input` [T,H] and `layers.N.output` (e.g. fixtures/hf/mixtral/reference.safetensors)')
    .option('--tokens <n>', 'random tokens to feed (default 32), or the first n rows of the reference input', numberArg('--tokens', 1))
    .option('--seed <s>', 'seed of the random tokens (default 0)', numberArg('--seed', 0))
    .option('--layers <list>', 'only these layers, e.g. 1,3-5', parseLayers)
    .option('--atol <x>', 'absolute tolerance added to rtol·max|ref| (default 0)', numberArg('--atol', 0, false))
    .option('--rtol <y>', 'max |a−b| / max |ref| allowed (default 1e-4, or 2e-2 when either side has 16-bit weights)', numberArg('--rtol', 0, false))
    .option('--json', 'print the report as JSON')
    .option('--cpu', 'run the CPU forward (WebAssembly SIMD on every core; MOEKIT_CPU_THREADS caps it) instead of WebGPU')
    .option('--gpu', 'require WebGPU: a missing adapter is an error (default: fall back to the CPU forward, with a notice)')
    .option(
      '--max-memory <size>',
      'stream expert weights (CPU ring chunks, GPU upload pieces, tensor reads) in pieces sized to stay under this; --json reports peakRssMB',
      sizeArg('--max-memory'),
    )
    .description('numerically verify MoE/MLP layers on a WebGPU kernel against reference outputs or another checkpoint')
    .addHelpText(
      'after',
      '\nA layer passes when max|a−b| ≤ atol + rtol·max|ref|. Every other tensor is accounted for: compared byte for byte\n' +
        'with <b> by name (attention, norms, embeddings, lm_head), one-sided tensors listed, every float tensor scanned for\n' +
        'NaN/Inf, and every sha256 of a sharded checkpoint checked. Exit status: 0 everything proven, 1 a difference found,\n' +
        '2 usage or bad input, 3 no difference but something unchecked (e.g. layers without a reference output).\n' +
        'Examples:\n  moekit verify fixtures/hf/mixtral --reference fixtures/hf/mixtral/reference.safetensors\n' +
        '  moekit verify /models/src /models/converted --tokens 64 --layers 0-3 --json',
    )
    .action(async (a: string, b: string | undefined, o: Omit<VerifyOptions, 'maxBinding' | 'onProgress'> & { json?: boolean }) => {
      const report = await verify(a, b, {
        ...o,
        onProgress: (m) => info(`verify: ${m}`),
      });
      process.stdout.write(o.json ? JSON.stringify({ ...report, peakRssMB: peakRssMB() }, null, 2) + '\n' : formatReport(report) + '\n');
      // 1: a difference found; 3: nothing differs, but not everything could be checked
      process.exitCode = !report.pass ? 1 : report.unchecked.length > 0 ? 3 : 0;
    });
}
