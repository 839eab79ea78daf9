/**
 * Writer registry: how a planned checkpoint is put on disk, per container format. The executor
 * (src/engine/execute.ts) looks the plan's format up here: safetensors, or a DCP folder (the
 * torch.distributed.checkpoint of the state dict, which NeMo Automodel and torch's dcp.load read).
 */
import { MoekitError } from '../errors.js';
import { planShards, shardFileName, writeFiles, type FileEntries, type WriteOptions, type WriteResult } from './safetensors/writer.js';
import { chunkBytes } from './pool.js';
import { writeDcp } from './torch/dcp-writer.js';

/** A plain DCP folder of the planned tensors: one chunk per tensor, in `__0_0.distcp` (what `dcp.save` of the state dict writes on one rank). */
async function writeDcpFiles(dir: string, files: FileEntries[], _index: string | undefined, opts: WriteOptions): Promise<WriteResult> {
  const entries = files.flatMap((f) => f.entries);
  let done = 0;
  let count = 0;
  const tensors = entries.map((e) => ({
    fqn: e.name,
    dtype: e.dtype,
    shape: e.shape,
    chunks: [
      {
        offsets: e.shape.map(() => 0),
        sizes: e.shape,
        data: async function* () {
          yield* chunkBytes(e.source());
          opts.onProgress?.(done, ++count);
        },
      },
    ],
  }));
  const total = await writeDcp(dir, tensors, [], { checkpointId: '.', fsync: opts.fsync, onBytes: (b) => opts.onProgress?.((done += b), count) });
  const weightMap = Object.fromEntries(entries.map((e) => [e.name, '__0_0.distcp']));
  return { files: ['.metadata', '__0_0.distcp'], totalSize: total, weightMap };
}

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
  dcp: {
    fileName: () => '__0_0.distcp',
    indexName: () => undefined,
    split: (tensors) => [tensors],
    write: writeDcpFiles,
  },
};

export function writerFor(format: string): CheckpointWriter {
  if (!Object.hasOwn(WRITERS, format))
    throw new MoekitError('unsupported', `no writer for '${format}' checkpoints (writers: ${Object.keys(WRITERS).join(', ')})`);
  return WRITERS[format]!;
}
