/**
 * The progress display of long commands: bytes done / total, throughput and ETA, redrawn in place
 * on a TTY (stderr) and kept within 80 columns; silent when stderr is not a TTY or with --json.
 */
const human = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);
const clock = (s: number) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, '0')}`;

export { human };

export interface Progress {
  update(bytes: number, total: number): void;
  /** end the line (TTY) */
  done(): void;
}

export function progress(json?: boolean, stream: NodeJS.WriteStream = process.stderr): Progress {
  // MOEKIT_STDERR_TTY: stderr is a pipe to the parent moekit that filters it (quiet-dawn.ts) and is a TTY there
  const tty = stream.isTTY || (stream === process.stderr && process.env.MOEKIT_STDERR_TTY === '1');
  if (!tty || json) return { update: () => {}, done: () => {} };
  const t0 = Date.now();
  let last = 0;
  let drawn = false;
  return {
    update(bytes, total) {
      const now = Date.now();
      if (now - last < 100 && bytes < total) return;
      last = now;
      const f = total ? Math.min(1, bytes / total) : 1;
      const el = (now - t0) / 1000;
      const rate = el > 0 ? bytes / el : 0;
      const eta = f > 0 && f < 1 ? clock((el / f) * (1 - f)) : '0:00';
      const bar = '#'.repeat(Math.round(f * 20)).padEnd(20, '.');
      const line = `[${bar}] ${(f * 100).toFixed(0).padStart(3)}% ${human(bytes)}/${human(total)} ${human(rate)}/s ETA ${eta}`;
      stream.write(`\r${line.slice(0, 79).padEnd(79)}`);
      drawn = true;
    },
    done() {
      if (drawn) stream.write('\n');
    },
  };
}
