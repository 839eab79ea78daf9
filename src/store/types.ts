/**
 * The tensor-store interface: everything moekit reads goes through it, whatever the container
 * (safetensors today; torch.save zip, DCP and Megatron checkpoints plug in beside it in
 * `src/store/registry.ts`). A store lists its tensors (name, dtype, shape, byte length) from
 * headers alone and reads byte ranges of one tensor on demand, so memory never grows with the
 * checkpoint.
 */
import type { Dtype } from './dtypes.js';
import type { BufferPool, Chunk } from './pool.js';

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  nbytes: number;
  /**
   * The file and absolute byte offset of the tensor's contiguous bytes, where there is one: lets
   * hashing workers and zero-copy paths read the file directly. Absent for tensors that exist only
   * as the result of a read (compressed or computed storage).
   */
  file?: string;
  offset?: number;
}

export interface TensorStore {
  /** container format id, e.g. 'safetensors' */
  readonly format: string;
  /** folder of the checkpoint: config.json, moekit.json and side files live here */
  readonly dir: string;
  /** the weight files read (absolute paths) */
  readonly files: readonly string[];
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** container metadata kept across conversions (safetensors `__metadata__`) */
  readonly metadata: Record<string, string> | undefined;
  readonly totalBytes: number;
  names(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  /** bytes [start, end) of one tensor (default: all of it), into `into` or a new buffer */
  read(t: TensorInfo | string, start?: number, end?: number, into?: Buffer): Promise<Buffer>;
  /** one tensor's bytes [start, end) (default: all) in pooled chunks, `readahead` reads in flight; release each once consumed */
  chunks(t: TensorInfo | string, pool?: BufferPool, readahead?: number, start?: number, end?: number): AsyncGenerator<Chunk>;
  /** config.json next to the checkpoint, or undefined */
  config(): Promise<Record<string, unknown> | undefined>;
  close(): Promise<void>;
}
