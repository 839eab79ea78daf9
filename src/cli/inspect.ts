import type { Command } from 'commander';
import { formatInspect, inspect } from '../ops/inspect.js';
import { isSharded } from '../ops/shard/sharded.js';
import { formatSharded, inspectSharded } from '../ops/shard/inspect-sharded.js';

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .argument('<path>', 'checkpoint folder, .safetensors file, or model.safetensors.index.json')
    .option('--json', 'print one JSON object instead of a table')
    .description('describe a checkpoint: family, expert layout, MoE layers, sizes, routing, dtypes, quantization, bytes')
    .addHelpText(
      'after',
      '\nReads only headers and config.json, never tensor data.\n' +
        'Examples:\n  moekit inspect fixtures/hf/deepseek_v3\n  moekit inspect /models/Mixtral-8x7B --json | jq .moeLayers',
    )
    .action(async (path: string, opts: { json?: boolean }) => {
      if (await isSharded(path)) {
        const r = await inspectSharded(path);
        process.stdout.write(opts.json ? JSON.stringify(r, null, 2) + '\n' : formatSharded(r) + '\n');
        return;
      }
      const r = await inspect(path);
      process.stdout.write(opts.json ? JSON.stringify(r, null, 2) + '\n' : formatInspect(r) + '\n');
    });
}
