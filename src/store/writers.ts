/**
 * Writer registry: how a planned checkpoint is put on disk, per container format. The executor
 * (src/engine/execute.ts) looks the plan's format up here: safetensors, a DCP folder (the
 * torch.distributed.checkpoint of the state dict, which NeMo Automodel and torch's dcp.load read),
 * or torch.save archives of the state dict (`pt`: what `torch.save(model.state_dict())` writes,
 * under transformers' `pytorch_model.bin` names; torch.load(weights_only=True) reads it).
 */
import { MoekitError } from '../errors.js';
import {
  planShards,
  shardFileName,
  tempName,
  writeFiles,
  writeIndexTemp,
  type FileEntries,
  type WriteOptions,
  type WriteResult,
} from './safetensors/writer.js';
import { chunkBytes } from './pool.js';
import { FileSink, tensorRef, writeDcp, writeTorchSave } from './torch/dcp-writer.js';
import { type PyOut, py } from './torch/pickler.js';
import { byteSize } from './dtypes.js';
import { runEvents } from '../output/events.js';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';

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

/** `pytorch_model.bin`, or shard i of n as transformers names them (`pytorch_model-00001-of-00003.bin`). */
const binName = (_stem: string, i: number, n: number): string =>
  n === 1 ? 'pytorch_model.bin' : `pytorch_model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.bin`;

/** Each file a torch.save archive of an OrderedDict name → tensor, one storage per tensor, streamed in order. */
async function writeTorchSaveFiles(dir: string, files: FileEntries[], index: string | undefined, opts: WriteOptions): Promise<WriteResult> {
  await mkdir(dir, { recursive: true });
  const temps: { tmp: string; final: string }[] = [];
  const weightMap: Record<string, string> = Object.create(null);
  let bytes = 0;
  let count = 0;
  let totalSize = 0;
  try {
    for (const f of files) {
      const tmp = join(dir, tempName(f.name));
      temps.push({ tmp, final: join(dir, f.name) });
      const fh = await open(tmp, 'w');
      const sink = new FileSink(fh);
      try {
        const dict = py.odict(f.entries.map((e, i): [PyOut, PyOut] => [e.name, tensorRef(String(i), e.dtype, e.shape)]));
        const storages = f.entries.map((e) =>
          (async function* () {
            for await (const c of chunkBytes(e.source())) {
              yield c;
              opts.onProgress?.((bytes += c.byteLength), count);
            }
            opts.onProgress?.(bytes, ++count);
          })(),
        );
        await writeTorchSave(sink, dict, storages, f.name.replace(/\.bin$/, ''));
        if (opts.fsync !== false) await fh.sync();
      } finally {
        await fh.close();
      }
      for (const e of f.entries) {
        weightMap[e.name] = f.name;
        totalSize += byteSize(e.dtype, e.shape);
      }
      runEvents.emit('file', { name: f.name, bytes: sink.pos, tensors: f.entries.length });
    }
    if (index) temps.push(await writeIndexTemp(dir, index, weightMap, totalSize));
    for (const t of temps) await rename(t.tmp, t.final);
  } catch (e) {
    await Promise.all(temps.map((t) => unlink(t.tmp).catch(() => undefined)));
    throw e;
  }
  return { files: temps.map((t) => t.final.slice(dir.length + 1)), totalSize, weightMap };
}

export interface CheckpointWriter {
  /** weight-file names: file i of n */
  fileName(stem: string, i: number, n: number): string;
  /** the index file naming which file holds each tensor, when there are several */
  indexName(stem: string, n: number): string | undefined;
  /** split tensors (in order) into files of at most `max` bytes */
  split<T extends { dtype: FileEntries['entries'][number]['dtype']; shape: number[] }>(tensors: T[], max?: number): T[][];
  write(dir: string, files: FileEntries[], index: string | undefined, opts: WriteOptions): Promise<WriteResult>;
  /** whether write() lets an entry with writeTo write its own bytes (else it reads every entry's source) */
  selfWrites?: boolean;
}

const WRITERS: Record<string, CheckpointWriter> = {
  safetensors: {
    fileName: shardFileName,
    indexName: (stem, n) => (n > 1 ? `${stem}.safetensors.index.json` : undefined),
    split: planShards,
    write: writeFiles,
    selfWrites: true,
  },
  pt: {
    fileName: binName,
    indexName: (_stem, n) => (n > 1 ? 'pytorch_model.bin.index.json' : undefined),
    split: planShards,
    write: writeTorchSaveFiles,
  },
  // Fast-LLM's `fast_llm` container: model_<i>.safetensors, no index (metadata.yaml's state_index names the file of each tensor)
  fast_llm: {
    fileName: (_stem, i) => `model_${i}.safetensors`,
    indexName: () => undefined,
    split: planShards,
    write: writeFiles,
    selfWrites: true,
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
