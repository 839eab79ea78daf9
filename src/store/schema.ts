/**
 * Typed checks for everything moekit reads from JSON it did not compute itself (config.json,
 * moekit.json, shard manifests): numbers are safe integers within stated bounds, strings are
 * bounded, objects have the right shape. A failed check is a one-line `bad-input` error naming the
 * file and the field.
 */
import { MoekitError } from '../errors.js';

/** Bounds generous enough for any real model and small enough that no loop or allocation explodes. */
export const LIMITS = {
  layers: 100_000,
  hidden: 1 << 20,
  intermediate: 1 << 24,
  experts: 1 << 16,
  ranks: 1 << 16,
  dims: 8,
  string: 4096,
} as const;

export class Checker {
  constructor(private readonly where: string) {}

  fail(field: string, what: string): never {
    throw new MoekitError('bad-input', `${this.where}: ${field} ${what}`);
  }

  obj(v: unknown, field: string): Record<string, unknown> {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) this.fail(field, 'must be an object');
    return v as Record<string, unknown>;
  }

  int(v: unknown, field: string, min: number, max: number): number {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) this.fail(field, `must be an integer in ${min}..${max}, not ${preview(v)}`);
    return v;
  }

  num(v: unknown, field: string): number {
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(field, `must be a finite number, not ${preview(v)}`);
    return v;
  }

  bool(v: unknown, field: string): boolean {
    if (typeof v !== 'boolean') this.fail(field, `must be true or false, not ${preview(v)}`);
    return v;
  }

  str(v: unknown, field: string, oneOf?: readonly string[]): string {
    if (typeof v !== 'string' || v.length > LIMITS.string) this.fail(field, `must be a string, not ${preview(v)}`);
    if (oneOf && !oneOf.includes(v)) this.fail(field, `must be one of ${oneOf.join(', ')}, not ${preview(v)}`);
    return v;
  }

  arr(v: unknown, field: string, max: number): unknown[] {
    if (!Array.isArray(v) || v.length > max) this.fail(field, `must be an array of at most ${max} items`);
    return v;
  }

  ints(v: unknown, field: string, min: number, max: number, maxLen: number): number[] {
    return this.arr(v, field, maxLen).map((x, i) => this.int(x, `${field}[${i}]`, min, max));
  }

  /** An object of string values (safetensors `__metadata__`). */
  strings(v: unknown, field: string): Record<string, string> {
    const o = this.obj(v, field);
    for (const [k, x] of Object.entries(o)) if (typeof x !== 'string') this.fail(`${field}.${k.slice(0, 80)}`, 'must be a string');
    return o as Record<string, string>;
  }

  optional<T>(v: unknown, check: (v: unknown) => T): T | undefined {
    return v === undefined ? undefined : check(v);
  }
}

/** A short rendering of a value for an error line. */
function preview(v: unknown): string {
  const s =
    typeof v === 'string'
      ? JSON.stringify(v)
      : Array.isArray(v)
        ? `an array of ${v.length}`
        : v === null
          ? 'null'
          : typeof v === 'object'
            ? 'an object'
            : String(v);
  return s.length > 60 ? `${s.slice(0, 59)}…` : s;
}
