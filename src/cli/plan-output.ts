/** `--dry-run` text output: the plan described by engine/plan.ts `describePlan`, one line per output file. */
import { peakRssMB } from '../output/transaction.js';
import type { WriteFlags } from './options.js';
import { info, progress } from './progress.js';

interface DescribedPlan {
  expectedPeakMB: number;
  outputs: {
    dir: string;
    files: { name: string; bytes: number; tensors: { action: string; transforms: string[] }[] }[];
    index: string | null;
    sideFiles: string[];
  }[];
}

function formatPlanSummary(plan: unknown): string {
  const p = plan as DescribedPlan;
  const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
  const lines: string[] = [];
  let tensors = 0;
  let bytes = 0;
  for (const o of p.outputs) {
    const at = o.dir ? `${o.dir}/` : '';
    for (const f of o.files) {
      const count = new Map<string, number>();
      for (const t of f.tensors) {
        const k = t.action + t.transforms.map((x) => ` + ${x}`).join('');
        count.set(k, (count.get(k) ?? 0) + 1);
      }
      lines.push(`  ${at}${f.name}: ${f.tensors.length} tensors, ${mb(f.bytes)} (${[...count].map(([k, n]) => `${n} ${k}`).join(', ')})`);
      tensors += f.tensors.length;
      bytes += f.bytes;
    }
    const side = [...(o.index ? [o.index] : []), ...o.sideFiles];
    if (side.length) lines.push(`  ${at}+ ${side.join(', ')}`);
  }
  lines.push(`total: ${tensors} tensors, ${mb(bytes)}; expected peak memory about ${p.expectedPeakMB} MB; nothing written (--dry-run)`);
  return lines.join('\n');
}

/** A writing command's result on stdout: its JSON summary, the plan of a --dry-run (after `head`), or its one-line report. */
export function printResult(s: { dryRun?: true; plan?: unknown }, json: boolean | undefined, head: string, line: () => string, extraJson: object = {}): void {
  if (json) process.stdout.write(`${JSON.stringify({ ...s, ...extraJson }, null, 2)}\n`);
  else if (s.dryRun) process.stdout.write(`${head}\n${formatPlanSummary(s.plan)}\n`);
  else process.stdout.write(`${line()}\n`);
}

/** The options a writing command passes on from its flags, with the one progress display wired in. */
export interface WriteRun {
  maxShardSize: number;
  maxMemory?: number;
  jobs: number;
  force?: boolean;
  fsync: boolean;
  dryRun?: boolean;
  onProgress: (bytes: number, total: number) => void;
}

/** The shared writing flags as the library's options take them. */
export const writeRun = (o: WriteFlags, onProgress: WriteRun['onProgress']): WriteRun => ({
  maxShardSize: o.maxShardSize,
  maxMemory: o.maxMemory,
  jobs: o.jobs,
  force: o.force,
  fsync: o.fsync,
  dryRun: o.dryRun,
  onProgress,
});

/**
 * Run a writing command: progress on stderr while `run` works, then its warnings (stderr) and its
 * summary (JSON, the dry-run plan, or `line`). Peak RSS goes into the JSON summary.
 */
export async function runWrite<S extends { dryRun?: true; plan?: unknown }>(
  o: WriteFlags,
  run: (w: WriteRun) => Promise<S>,
  head: (s: S) => string,
  line: (s: S) => string,
  warnings: (s: S) => string[] = () => [],
  notes: (s: S) => string[] = () => [],
): Promise<void> {
  const bar = progress(o.json || o.dryRun);
  const s = await run(writeRun(o, (b, t) => bar.update(b, t)));
  bar.done();
  for (const w of warnings(s)) process.stderr.write(`warning: ${w}\n`);
  for (const n of notes(s)) info(n);
  printResult(s, o.json, head(s), () => line(s), { peakRssMB: peakRssMB() });
}
