/**
 * The part of a TensorStore that is only its name → TensorInfo map (listing, lookup, total bytes),
 * shared by the stores that read files (safetensors) and those that derive tensors from another.
 */
import { MoekitError } from '../errors.js';
import type { TensorInfo } from './types.js';

export abstract class TensorMap {
  readonly tensors = new Map<string, TensorInfo>();
  abstract readonly dir: string;

  /** the one-line error for a name the store does not hold */
  protected missing(name: string): string {
    return `${this.dir}: no tensor named '${name}'`;
  }

  get totalBytes(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.nbytes;
    return n;
  }
  names(): string[] {
    return [...this.tensors.keys()];
  }
  has(name: string): boolean {
    return this.tensors.has(name);
  }
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new MoekitError('bad-input', this.missing(name));
    return t;
  }
}
