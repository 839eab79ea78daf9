/**
 * The one error type meant for the user: one line, no stack trace, and a stable code that the CLI
 * maps to a documented exit status (README "Exit codes"). Anything else that escapes is a bug and
 * exits with 70.
 */
export const EXIT_CODES = {
  /** `verify` ran and some check failed (not an error of moekit's) */
  'verify-failed': 1,
  /** bad flags or arguments */
  usage: 2,
  /** a path that does not exist */
  'not-found': 2,
  /** malformed, truncated or inconsistent input: headers, index, config, moekit.json, manifests */
  'bad-input': 2,
  /** `verify` found no difference but could not check everything (layers without a reference, unsupported routing) */
  unchecked: 3,
  /** valid input moekit will not do: unknown layout or family, lossy conversion, quantized storage, unread container */
  unsupported: 4,
  /** the destination cannot be written: exists, is or contains the source, is locked by another run */
  destination: 5,
  /** a checksum in a shard manifest does not match the bytes */
  checksum: 6,
  /** an operating-system I/O error (permissions, disk full, ...) */
  io: 7,
  /** no usable WebGPU adapter */
  gpu: 8,
  /** a bug in moekit */
  internal: 70,
  /** stopped by SIGINT (130) or SIGTERM (143); output removed */
  interrupted: 130,
} as const;

export type ErrorCode = keyof typeof EXIT_CODES;

/** The signals moekit stops on cleanly (removing partial output), with their exit status: 128 + the signal's number. */
export const STOP_SIGNALS = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 } as const;

/** Exit status of a run stopped by `sig`; `other` for a signal not in STOP_SIGNALS. */
export function signalExitCode(sig: string, other = 130): number {
  return (STOP_SIGNALS as Record<string, number>)[sig] ?? other;
}

/** Longest error line: values echoed from hostile input (a 10^6-element array) are cut. */
const MAX_MESSAGE = 600;

/** One line of at most MAX_MESSAGE characters. */
export function oneLine(message: string): string {
  const m = message.replace(/\s*\n\s*/g, ' ');
  return m.length <= MAX_MESSAGE ? m : `${m.slice(0, MAX_MESSAGE - 1)}…`;
}

export class MoekitError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(oneLine(message));
    this.name = 'MoekitError';
  }

  get exitCode(): number {
    return EXIT_CODES[this.code];
  }
}
