/**
 * The progress display of long commands: bytes done / total, throughput and ETA, redrawn in place
 * on a TTY (stderr) and kept within 80 columns; plain lines every few seconds when stderr is piped.
 */
const human = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);
const clock = (s: number) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, '0')}`;

export { human };

export interface Progress {
  update(bytes: number, total: number): void;
  /** end the line (TTY) */
  done(): void;
}

let quiet = false;
/** `--quiet` (anywhere on the command line): no progress and no informational lines. */
export function setQuiet(q: boolean): void {
  quiet = q;
}

/** An informational stderr line (`verify: layer 3 (4/12)`), silenced by --quiet. */
export function info(line: string): void {
  if (!quiet) process.stderr.write(`${line}\n`);
}

/** Seconds between plain progress lines when stderr is not a terminal (Slurm and Kubernetes logs). */
const plainEvery = () => Number(process.env.MOEKIT_PROGRESS_SECONDS) || 5;

/**
 * On a TTY: one line redrawn in place within 80 columns. Piped: a plain line every few seconds
 * (and one at the end; nothing for a job shorter than that). Silent with --json, --dry-run's callers, or --quiet.
 */
export function progress(json?: boolean, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (json || quiet) return { update: () => {}, done: () => {} };
  // MOEKIT_STDERR_TTY: stderr is a pipe to the parent moekit that filters it (quiet-dawn.ts) and is a TTY there
  const tty = stream.isTTY || (stream === process.stderr && process.env.MOEKIT_STDERR_TTY === '1');
  const t0 = Date.now();
  const every = tty ? 100 : plainEvery() * 1000; // ms between lines
  let last = tty ? 0 : t0; // piped: the first line after one interval
  let drawn = false;
  let finished = false;
  const text = (bytes: number, total: number, now: number) => {
    const f = total ? Math.min(1, bytes / total) : 1;
    const el = (now - t0) / 1000;
    const rate = el > 0 ? bytes / el : 0;
    const eta = f > 0 && f < 1 ? clock((el / f) * (1 - f)) : '0:00';
    // floor, so 100% means done (99.6% rounded up would print a second "100%" line before the last)
    return { f, line: `${String(Math.floor(f * 100)).padStart(3)}% ${human(bytes)}/${human(total)} ${human(rate)}/s ETA ${eta}` };
  };
  return {
    update(bytes, total) {
      const now = Date.now();
      const end = bytes >= total;
      if (finished || (now - last < every && !end)) return;
      if (!tty && end && !drawn) return; // piped: a job shorter than one interval prints no progress at all
      finished = end && !tty; // piped: the last line once
      last = now;
      const { f, line } = text(bytes, total, now);
      if (tty) {
        const bar = '#'.repeat(Math.round(f * 20)).padEnd(20, '.');
        stream.write(`\r${`[${bar}] ${line}`.slice(0, 79).padEnd(79)}`);
      } else stream.write(`progress: ${line} (${clock((now - t0) / 1000)} elapsed)\n`);
      drawn = true;
    },
    done() {
      if (drawn && tty) stream.write('\n');
    },
  };
}
