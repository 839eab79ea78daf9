import type { Command } from 'commander';
import { Option } from 'commander';
import { plan } from '../ops/plan.js';
import { numberArg } from './options.js';

export function registerPlan(program: Command): void {
  program
    .command('plan')
    .argument('<src>', 'checkpoint folder (only config.json is read)')
    .addOption(new Option('--tp <n>', 'check one tensor-parallel size').argParser(numberArg('--tp', 1)))
    .addOption(new Option('--ep <n>', 'expert-parallel size with --tp (default 1)').argParser(numberArg('--ep', 1)))
    .option('--json', 'print the report as JSON')
    .description('tell which TP × EP sizes can serve a MoE checkpoint (SGLang-style divisibility rules, block/group quantization included)')
    .addHelpText(
      'after',
      [
        '',
        'Rules (moe_tp_size = tp / ep): EP divides TP and the routed experts; the expert intermediate size',
        'splits into moe_tp_size slices of whole quantization blocks ((I / moe_tp_size) % block_n == 0 for',
        'block FP8, whole scale groups for MXFP4 / NVFP4 / int4); dense MLPs and shared experts split over',
        'all TP ranks in whole blocks; attention heads divide by TP, KV heads divide TP or TP divides them.',
        '',
        'Without --tp: a table of TP 1–16 × every EP dividing it, and the combinations that work.',
        'With --tp: exit 0 if that combination works, 1 if not (each failing rule on its own line).',
        '',
        'Examples:',
        '  moekit plan /models/Qwen3-235B-A22B-FP8            # TP8 needs EP2 with FP8 blocks of 128',
        '  moekit plan /models/DeepSeek-V3 --tp 8 --ep 2',
      ].join('\n'),
    )
    .action(async (src: string, o: { tp?: number; ep?: number; json?: boolean }) => {
      const r = await plan(src, o.tp ? { tp: o.tp, ep: o.ep } : undefined);
      if (o.json) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      else {
        const s = r.shape;
        const q = s.quant ? `${s.quant.method}, ${s.quant.kind} ${s.quant.blockN}` : 'none';
        const lines = [
          `${r.source}: ${s.experts} experts, moe_intermediate_size ${s.moeInter}${s.denseInters.map((d) => `, ${d.what} ${d.size}`).join('')}, heads ${s.heads ?? '?'} / kv ${s.kvHeads ?? '?'}, quantization ${q}`,
          '',
          '  TP  EP  moe_tp  result',
          ...r.rows.map(
            (x) => `${String(x.tp).padStart(4)}${String(x.ep).padStart(4)}${String(x.moeTp).padStart(8)}  ${x.ok ? 'ok' : `no: ${x.errors.join('; ')}`}`,
          ),
          '',
          r.valid.length ? `valid: ${r.valid.join(', ')}` : 'no combination is valid',
        ];
        process.stdout.write(`${lines.join('\n')}\n`);
      }
      if (o.tp && !r.rows[0]!.ok) process.exitCode = 1;
    });
}
