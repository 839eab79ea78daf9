#!/usr/bin/env node
// moekit CLI entry: runs the compiled TypeScript in dist/ (built by `npm ci` via the prepare script).
import { existsSync, statSync } from 'node:fs';
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
  // the one-file bundle of the same modules (scripts/bundle.mjs) starts ~0.1 s sooner; a bundle older
  // than the modules (a bare `tsc` since the last `npm run build`) is stale and not used
  const bundle = new URL('../dist/moekit.js', import.meta.url);
  const mtime = (u) => statSync(fileURLToPath(u), { throwIfNoEntry: false })?.mtimeMs ?? -1;
  const { main } = await import((mtime(bundle) >= mtime(cli) ? bundle : cli).href);
  process.exitCode = await main(process.argv);
}
