#!/usr/bin/env node
// moekit CLI entry: runs the compiled TypeScript in dist/ (built by `npm ci` via the prepare script).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

process.env.UV_THREADPOOL_SIZE ??= '8'; // parallel positioned reads and writes
// `moekit ... | head`: a closed pipe is not an error worth a stack trace
process.stdout.on('error', (e) => process.exit(e.code === 'EPIPE' ? 0 : 1));
const cli = new URL('../dist/src/cli/index.js', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  process.stderr.write('moekit: not built yet; run `npm run build` (npm ci does it for you)\n');
  process.exit(2);
}
if (!process.env.MOEKIT_CHILD) {
  // a command that may open WebGPU runs as a child whose stderr loses Dawn's own warnings (see quiet-dawn.ts)
  const { mayUseGpu, runFiltered } = await import(new URL('../dist/src/cli/quiet-dawn.js', import.meta.url).href);
  if (mayUseGpu(process.argv)) {
    process.exitCode = await runFiltered(fileURLToPath(import.meta.url), process.argv);
  }
}
if (process.exitCode === undefined) {
  const { main } = await import(cli.href);
  process.exitCode = await main(process.argv);
}
