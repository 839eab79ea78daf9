/**
 * Writer registry: how a planned checkpoint is put on disk, per container format. The executor
 * (src/engine/execute.ts) looks the plan's format up here; a torch.save or DCP writer plugs in as
 * one more entry beside safetensors.
 */
import { MoekitError } from '../errors.js';
import { planShards, shardFileName, writeFiles, type FileEntries, type WriteOptions, type WriteResult } from './safetensors/writer.js';

export interface CheckpointWriter {
  /** weight-file names: file i of n */
  fileName(stem: string, i: number, n: number): string;
  /** the index file naming which file holds each tensor, when there are several */
  indexName(stem: string, n: number): string | undefined;
  /** split tensors (in order) into files of at most `max` bytes */
  split<T extends { dtype: FileEntries['entries'][number]['dtype']; shape: number[] }>(tensors: T[], max?: number): T[][];
  write(dir: string, files: FileEntries[], index: string | undefined, opts: WriteOptions): Promise<WriteResult>;
}

const WRITERS: Record<string, CheckpointWriter> = {
  safetensors: {
    fileName: shardFileName,
    indexName: (stem, n) => (n > 1 ? `${stem}.safetensors.index.json` : undefined),
    split: planShards,
    write: writeFiles,
  },
};

export function writerFor(format: string): CheckpointWriter {
  if (!Object.hasOwn(WRITERS, format))
    throw new MoekitError('unsupported', `no writer for '${format}' checkpoints (writers: ${Object.keys(WRITERS).join(', ')})`);
  return WRITERS[format]!;
}
