#!/usr/bin/env node
/**
 * Bundles the compiled CLI (dist/src/cli/index.js and every module it imports, 'webgpu' aside)
 * into one file, dist/moekit.js, which bin/moekit.js runs when it is newer than the modules.
 * Node 20 has no compile cache, and resolving and loading the ~100 modules one by one took
 * 110–180 ms of every command's start; the one file loads in 40–70 ms (2-core VM). The modules
 * stay in dist/src (the library export, the tests, the GPU child's filter). Run by `npm run build`.
 */
import { build } from 'esbuild';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// a copy of kernels/ that scripts/device/pack-dist.sh put in dist/ (with a package.json) would be found
// before kernels/ itself (src/gpu/kernels.ts kernelsDir) and run stale kernels after an edit
for (const p of ['dist/kernels', 'dist/package.json']) rmSync(join(root, p), { recursive: true, force: true });
await build({
  entryPoints: [join(root, 'dist/src/cli/index.js')],
  outfile: join(root, 'dist/moekit.js'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['webgpu'],
  // commander and p-limit's CommonJS require node built-ins: give the ES module a require
  banner: { js: "import { createRequire as moekitRequire } from 'node:module'; const require = moekitRequire(import.meta.url);" },
  legalComments: 'none',
  logLevel: 'warning',
});
