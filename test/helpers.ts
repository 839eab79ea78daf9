import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, readdirSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const ROOT = new URL('..', import.meta.url).pathname;
export const FIXTURES = join(ROOT, 'fixtures', 'hf');
export const fixtureNames = (): string[] =>
  readdirSync(FIXTURES)
    .filter((d) => existsSync(join(FIXTURES, d, 'config.json')))
    .sort();

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run the built CLI (`npm test` builds dist/ first); `ulimitKb` caps its address space (bash `ulimit -v`). */
export function runCli(args: string[], opts: { env?: Record<string, string>; ulimitKb?: number } = {}): CliResult {
  const argv = [join(ROOT, 'bin', 'moekit.js'), ...args];
  const [cmd, cmdArgs] =
    opts.ulimitKb === undefined ? [process.execPath, argv] : ['bash', ['-c', `ulimit -v ${opts.ulimitKb} && exec "${process.execPath}" "$@"`, 'sh', ...argv]];
  const r = spawnSync(cmd, cmdArgs, {
    encoding: 'utf8',
    env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp', ...opts.env },
    maxBuffer: 64 * 1024 * 1024,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function tempDir(prefix = 'moekit-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The kernels a generator script writes into a temp folder, compared with the committed ones: a list of files that differ. */
export function generatedKernelsDiffer(script: string, files: string[]): string[] {
  const t = tempDir();
  try {
    const r = spawnSync(process.execPath, [join(ROOT, 'scripts', script), '--out', t.dir], { encoding: 'utf8' });
    if (r.status !== 0) return [`${script} failed: ${r.stderr.slice(-300)}`];
    return files.filter((f) => !readFileSync(join(t.dir, f)).equals(readFileSync(join(ROOT, 'kernels', f))));
  } finally {
    t.cleanup();
  }
}
