/** moekit command line: each command lives in src/commands/ and registers itself here. */
import { Command, CommanderError } from 'commander';
import { EXIT_CODES, MoekitError, oneLine, signalExitCode } from '../errors.js';
import { interrupted } from '../output/transaction.js';
import { registerInspect } from './inspect.js';
import { registerConvert } from './convert.js';
import { registerVerify } from './verify.js';
import { registerReshard, registerShard } from './shard.js';
import { registerMerge } from './merge.js';
import { registerUpcycle } from './upcycle.js';
import { registerDequant } from './dequant.js';
import { human, info, setQuiet } from './progress.js';
import { runEvents } from '../output/events.js';
import { registerQuant } from './quant.js';
import { registerPlan } from './plan.js';
import { setMegatronHints, setStrictPickles } from '../store/registry.js';
import { MOEKIT_VERSION } from '../output/card.js';
import { editDistance } from '../engine/read.js';
import { setBlockPrefix } from '../engine/block-prefix.js';

function buildProgram(): Command {
  const program = new Command();
  program
    .name('moekit')
    .description(
      'Streaming, exact tools for Mixture-of-Experts checkpoints: inspect, convert between expert layouts, shard for expert parallelism, upcycle dense models, and verify numerically on a WebGPU kernel.',
    )
    .addHelpText(
      'after',
      [
        '',
        'A typical session:',
        '  moekit inspect /models/Mixtral-8x7B                       # what is it? family, layout, experts, dtypes',
        '  moekit convert /models/Mixtral-8x7B --to te -o /ckpt/te  # HF → Transformer Engine GroupedLinear',
        '  moekit verify /models/Mixtral-8x7B /ckpt/te               # same function? layer by layer, on WebGPU',
        '  moekit shard /ckpt/te --ep 8 -o /ckpt/te-ep8              # one folder per expert-parallel rank',
        '  moekit upcycle /models/Llama-3-8B --experts 8 --top-k 2 -o /ckpt/llama-moe   # dense → MoE, same function',
        '  moekit dequant /models/DeepSeek-V3 -o /models/DeepSeek-V3-bf16   # block FP8 / MXFP4 / int4 / NVFP4 → float',
        '  moekit plan /models/Qwen3-235B-A22B-FP8                   # which TP × EP sizes can serve it',
        '',
        'Long commands show progress on stderr: one redrawn line on a terminal, a plain line every 5 s',
        '(MOEKIT_PROGRESS_SECONDS) when piped to a log; --quiet (-q, anywhere) silences it, --verbose (-v)',
        'adds a line per weight file written.',
        'Checkpoints may be safetensors, torch.save (.bin/.pt/.pth, sharded with an index), DCP folders or',
        "Megatron-Core torch_dist checkpoints. Pickles are read by moekit's own unpickler, which never runs",
        'code; --strict (anywhere) refuses any pickle that names a class outside its allow list.',
        'A Megatron checkpoint reads as the HF family its args imply, or that config.json beside it names;',
        '--family <mixtral|qwen2_moe|qwen3_moe> and --hf-config <config.json> (anywhere) say it instead;',
        '--hf-config also gives the family of any checkpoint without a config.json (a torch.save state dict).',
        "--block-prefix <p> (anywhere): where a source's non-HF MoE blocks sit, {n} for the layer index, e.g.",
        "'blocks.{n}.moe.' for a flashfusemoe model's own module path, '' for a single MoELayer state dict;",
        "--to <layout>@<p> (e.g. 'flashfusemoe@blocks.{n}.moe.') writes there; moekit.json records it.",
        "Run `moekit <command> --help` for each command's options and examples.",
      ].join('\n'),
    )
    .version(MOEKIT_VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerInspect(program);
  registerConvert(program);
  registerVerify(program);
  registerShard(program);
  registerMerge(program);
  registerReshard(program);
  registerUpcycle(program);
  registerDequant(program);
  registerQuant(program);
  registerPlan(program);
  return program;
}

/** Exit status of an error that escaped a command (README "Exit codes"). */
function exitCodeOf(e: unknown): number {
  if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT_CODES.usage;
  if (e instanceof MoekitError) return e.exitCode;
  const err = e as NodeJS.ErrnoException;
  if (err && typeof err.code === 'string' && err.message) return err.code === 'ENOENT' ? EXIT_CODES['not-found'] : EXIT_CODES.io;
  return EXIT_CODES.internal;
}

/**
 * `--hf-config <file>` and `--family <name>` (but upcycle's own --family) name how a Megatron
 * checkpoint (or any without a config.json) reads as HF; `--block-prefix <p>` where a non-HF layout's
 * MoE blocks sit (engine/block-prefix.ts).
 */
function takeMegatronHints(argv: string[]): string[] {
  const rest = argv.slice(0, 2);
  const hints: { family?: string; hfConfig?: string } = {};
  const upcycle = argv[2] === 'upcycle';
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const flag = eq > 0 ? a.slice(0, eq) : a;
    if (flag === '--hf-config' || (flag === '--family' && !upcycle) || flag === '--block-prefix') {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined) throw new MoekitError('usage', `${flag} needs a value`);
      if (flag === '--hf-config') hints.hfConfig = v;
      else if (flag === '--block-prefix') setBlockPrefix(v);
      else hints.family = v;
    } else rest.push(a);
  }
  setMegatronHints(hints);
  return rest;
}

/** options every command takes (taken out of argv before commander sees it) */
const GLOBAL_OPTIONS = ['--quiet', '-q', '--verbose', '-v', '--strict', '--hf-config', '--family', '--block-prefix', '--help', '-h', '--version', '-V'];

/** An option the command does not know, caught before commander (which reports a missing -o first): one line with the nearest name. */
function checkOptions(program: Command, argv: string[]): void {
  const cmd = program.commands.find((c) => c.name() === argv[2]);
  if (!cmd) return;
  const known = [...GLOBAL_OPTIONS, ...cmd.options.flatMap((o) => [o.long, o.short].filter((x): x is string => Boolean(x)))];
  for (const a of argv.slice(3)) {
    if (a === '--') return;
    if (!a.startsWith('--')) continue;
    const flag = a.split('=')[0]!;
    if (known.includes(flag)) continue;
    const near = known.filter((k) => k.startsWith('--')).sort((x, y) => editDistance(x, flag) - editDistance(y, flag))[0];
    const hint = near && editDistance(near, flag) <= 3 ? ` (did you mean ${near}?)` : '';
    throw new MoekitError('usage', `unknown option '${flag}' for moekit ${cmd.name()}${hint}; see moekit ${cmd.name()} --help`);
  }
}

/** Run the CLI; returns the exit code. Errors meant for the user print as one line. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  // --quiet / -q is global: taken out before the subcommand's own options are parsed
  const q = argv.slice(2).filter((a) => a === '--quiet' || a === '-q').length > 0;
  setQuiet(q);
  if (q) argv = [...argv.slice(0, 2), ...argv.slice(2).filter((a) => a !== '--quiet' && a !== '-q')];
  // --verbose / -v: a line per weight file written (and the detail commands print anyway)
  if (argv.slice(2).some((a) => a === '--verbose' || a === '-v')) {
    argv = [...argv.slice(0, 2), ...argv.slice(2).filter((a) => a !== '--verbose' && a !== '-v')];
    runEvents.on('file', (f) => info(`wrote ${f.name}: ${f.tensors} tensors, ${human(f.bytes)}`));
  }
  // --strict is global too: pickles (torch.save, DCP) naming a global off the allow list are refused
  const strict = argv.slice(2).includes('--strict');
  setStrictPickles(strict);
  if (strict) argv = [...argv.slice(0, 2), ...argv.slice(2).filter((a) => a !== '--strict')];
  try {
    argv = takeMegatronHints(argv);
    checkOptions(program, argv);
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    const sig = interrupted();
    if (sig) return signalExitCode(sig); // the signal handler is finishing up
    const code = exitCodeOf(e);
    if (e instanceof CommanderError) return code;
    const err = e as NodeJS.ErrnoException;
    if (e instanceof MoekitError || (err && typeof err.code === 'string' && err.message)) {
      process.stderr.write(`moekit: error: ${oneLine(err.message.split('\n')[0]!)}\n`);
    } else {
      process.stderr.write(`moekit: internal error (please report): ${err?.stack || String(e)}\n`);
    }
    return code;
  }
}
