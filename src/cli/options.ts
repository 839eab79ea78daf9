/**
 * Flags shared by several commands, each defined once, and the parsers the commands share.
 */
import { DEFAULT_JOBS } from '../engine/execute.js';
import { type Command, Option } from 'commander';
import { MoekitError } from '../errors.js';
import { parseFloatDtype, type FloatDtype } from '../store/dtypes.js';

/** A size flag: "5GB", "500MB", "1.5GiB", "1000000" → bytes. */
export const sizeArg =
  (flag: string) =>
  (s: string): number => {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$/i.exec(s);
    if (!m) throw new MoekitError('usage', `${flag}: cannot read '${s}' (examples: 5GB, 500MB, 2GiB)`);
    const unit = (m[2] ?? 'b').toLowerCase();
    const pow = { b: 0, k: 1, m: 2, g: 3, t: 4 }[unit[0] as 'b' | 'k' | 'm' | 'g' | 't'];
    const base = unit.includes('i') ? 1024 : 1000;
    return Math.floor(Number(m[1]) * base ** pow);
  };

/** A number flag ≥ min (integers only when `integer`). */
export const numberArg =
  (what: string, min: number, integer = true) =>
  (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
      throw new MoekitError('usage', `${what}: expected ${integer ? 'an integer' : 'a number'} ≥ ${min}, got '${v}'`);
    }
    return n;
  };

export function dtypeArg(v: string): FloatDtype {
  try {
    return parseFloatDtype(v);
  } catch (e) {
    throw new MoekitError('usage', `--dtype: ${(e as Error).message}`);
  }
}

/** Options every writing command takes. */
export interface WriteFlags {
  output: string;
  maxShardSize: number;
  maxMemory?: number;
  jobs: number;
  force?: boolean;
  fsync: boolean;
  json?: boolean;
  dryRun?: boolean;
}

/** -o, --max-shard-size, --jobs, --force, --no-fsync, --dry-run, --json. */
export function writeFlags(cmd: Command, what = 'the output'): Command {
  return cmd
    .requiredOption('-o, --output <dst>', `destination folder of ${what} (must not exist or be empty, unless --force; never the source or a folder holding it)`)
    .addOption(
      new Option('--max-shard-size <size>', 'split each checkpoint into weight files of at most this size')
        .default(5e9, '5GB')
        .argParser(sizeArg('--max-shard-size')),
    )
    .addOption(
      new Option('--jobs <n>', 'expert slabs assembled at once (fewer when the memory budget asks)').default(DEFAULT_JOBS).argParser(numberArg('--jobs', 1)),
    )
    .addOption(
      new Option(
        '--max-memory <size>',
        'keep the slabs in flight under this (fewer at a time; refused when one slab alone cannot fit); --json reports peakRssMB',
      ).argParser(sizeArg('--max-memory')),
    )
    .option('--force', 'replace a non-empty destination (the old one is removed only once the new one is complete)')
    .option('--no-fsync', 'skip fsync of the written files before the final rename (faster; not crash-safe)')
    .option('--dry-run', 'print the plan (per output file: tensors, bytes, what is copied / renamed / transposed / cast) and write nothing')
    .option('--json', 'print a JSON summary on stdout (with --dry-run: the same summary plus the plan)');
}
