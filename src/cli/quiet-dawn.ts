/**
 * Dawn (the webgpu package) and the Vulkan loader print warnings of their own straight to the
 * process's stderr while an adapter is looked for: "Warning: maxDynamic…PerPipelineLayout
 * artificially reduced …" on lavapipe; "Warning: Couldn't load Vulkan: …" or "Warning:
 * vkCreateInstance: Found no drivers!" with a C++ source location and a blank line where there is
 * no driver. moekit's own messages never start with "Warning: ". They
 * say nothing a user can act on (verify prints its own line when it falls back to the CPU), and a
 * native library's writes cannot be redirected from JavaScript. So a command that may start WebGPU
 * runs as a child whose stderr passes through this filter, which drops exactly those lines.
 */
import { spawn } from 'node:child_process';
import { signalExitCode } from '../errors.js';

/** Commands that may open a WebGPU adapter. */
export function mayUseGpu(argv: string[]): boolean {
  const args = argv.slice(2);
  return args[0] === 'verify' && !args.includes('--cpu') && !args.includes('--help') && !args.includes('-h');
}

const DAWN = /^Warning: /;
/** the source location (and blank line) Dawn prints under a warning */
const WHERE = /^( {4}at \S+ \(.*\.(cpp|cc|h):\d+\))?$/;

/** A stderr line filter: whole lines are checked, a partial line is passed on unless it could still become a Dawn line. */
export function dawnFilter(write: (s: string) => void): { push: (chunk: string) => void; end: () => void } {
  let pending = '';
  let dropped = false;
  const line = (l: string) => {
    if (DAWN.test(l) || (dropped && WHERE.test(l))) {
      dropped = true;
      return;
    }
    dropped = false;
    write(`${l}\n`);
  };
  return {
    push(chunk) {
      pending += chunk;
      let nl = pending.indexOf('\n');
      while (nl >= 0) {
        line(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
        nl = pending.indexOf('\n');
      }
      // progress redraws (\r, no newline) go through at once unless they may be the start of a Dawn line
      if (pending && !'Warning:'.startsWith(pending.slice(0, 8)) && !(dropped && pending.startsWith(' '))) {
        write(pending);
        pending = '';
        dropped = false;
      }
    },
    end() {
      if (pending) write(pending);
      pending = '';
    },
  };
}

/** Run this CLI again as a child with `MOEKIT_CHILD=1`, its stderr filtered; resolves to the exit code. */
export function runFiltered(entry: string, argv: string[]): Promise<number> {
  return new Promise((resolve) => {
    const env = { ...process.env, MOEKIT_CHILD: '1', ...(process.stderr.isTTY ? { MOEKIT_STDERR_TTY: '1' } : {}) };
    const child = spawn(process.execPath, [...process.execArgv, entry, ...argv.slice(2)], { stdio: ['inherit', 'inherit', 'pipe'], env });
    const f = dawnFilter((s) => process.stderr.write(s));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (c: string) => f.push(c));
    // Ctrl-C reaches the child through the terminal's process group (the parent only waits); other signals are passed on
    process.on('SIGINT', () => {});
    for (const sig of ['SIGTERM', 'SIGHUP'] as const) process.on(sig, () => child.kill(sig));
    child.on('close', (code, signal) => {
      f.end();
      resolve(code ?? (signal ? signalExitCode(signal, 1) : 1));
    });
  });
}
