/**
 * Writes a torch.distributed.checkpoint folder as one rank does: `__0_0.distcp` holding each item
 * as a complete torch.save zip (a tensor chunk as `_rebuild_tensor_v2` over storage `data/0`, an
 * object as its pickle), back to back, then `.metadata` (a pickled `Metadata` naming every chunk's
 * byte range), written by moekit's own pickler with the classes torch's own writer names.
 * Chunks stream from their sources; memory holds one chunk at a time.
 *
 * Sources: torch `distributed/checkpoint/filesystem.py` (`_write_item`: `torch.save` per item,
 * `_StorageInfo(relative_path, offset, length)`, `.metadata`), `metadata.py` (Metadata,
 * TensorStorageMetadata, TensorProperties' tuple state, ChunkStorageMetadata, MetadataIndex,
 * BytesStorageMetadata, StorageMeta); the `.metadata` pickles in fixtures/torch (field order).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { type FileHandle, mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import { MoekitError } from '../../errors.js';
import { runEvents } from '../../output/events.js';
import { type Dtype, numel } from '../dtypes.js';
import { contiguousStrides } from '../../engine/ir.js';
import { type PyOut, pickle, py } from './pickler.js';
import { type Sink, ZipWriter } from './zip-writer.js';

export interface DcpTensorOut {
  fqn: string;
  dtype: Dtype;
  shape: number[];
  /** `rank`: the rank whose data file (`__<rank>_0.distcp`) holds the chunk (default 0), as each rank of a distributed save writes its own */
  chunks: { offsets: number[]; sizes: number[]; data: () => AsyncIterable<Uint8Array>; rank?: number }[];
}
export interface DcpObjectOut {
  fqn: string;
  value: PyOut;
  rank?: number;
}

const TORCH_DTYPE: Partial<Record<Dtype, [dtype: string, storage: string]>> = {
  F32: ['float32', 'FloatStorage'],
  F64: ['float64', 'DoubleStorage'],
  F16: ['float16', 'HalfStorage'],
  BF16: ['bfloat16', 'BFloat16Storage'],
  I64: ['int64', 'LongStorage'],
  I32: ['int32', 'IntStorage'],
  I16: ['int16', 'ShortStorage'],
  I8: ['int8', 'CharStorage'],
  U8: ['uint8', 'ByteStorage'],
  BOOL: ['bool', 'BoolStorage'],
  F8_E4M3: ['float8_e4m3fn', 'Float8_e4m3fnStorage'],
  F8_E5M2: ['float8_e5m2', 'Float8_e5m2Storage'],
};
export const torchDtype = (d: Dtype): PyOut => py.global('torch', TORCH_DTYPE[d]?.[0] ?? 'float32');
const size = (dims: number[]): PyOut => py.reduce(py.global('torch', 'Size'), py.tuple(...dims));
const M = 'torch.distributed.checkpoint.metadata';

/** A file written front to back, counting its bytes. */
export class FileSink implements Sink {
  pos = 0;
  constructor(private readonly fh: FileHandle) {}
  async write(b: Uint8Array): Promise<void> {
    let done = 0;
    while (done < b.length) done += (await this.fh.write(b, done, b.length - done, this.pos + done)).bytesWritten;
    this.pos += b.length;
  }
}

/** One torch.save archive into `sink`: the pickle, its storages, and the records torch writes around them. */
export async function writeTorchSave(sink: Sink, value: PyOut, storages: AsyncIterable<Uint8Array>[] = [], prefix = 'archive'): Promise<void> {
  const z = new ZipWriter(sink);
  await z.add(`${prefix}/data.pkl`, pickle(value));
  await z.add(`${prefix}/.format_version`, Buffer.from('1'));
  await z.add(`${prefix}/.storage_alignment`, Buffer.from('64'));
  await z.add(`${prefix}/byteorder`, Buffer.from('little'));
  for (let i = 0; i < storages.length; i++) await z.add(`${prefix}/data/${i}`, storages[i]!);
  await z.add(`${prefix}/version`, Buffer.from('3\n'));
  const id = BigInt(`0x${randomBytes(16).toString('hex')}`)
    .toString()
    .padStart(40, '0')
    .slice(-40);
  await z.add(`${prefix}/.data/serialization_id`, Buffer.from(id));
  await z.finish();
}

/** `torch._utils._rebuild_tensor_v2` of a contiguous tensor over storage key `key`. */
export function tensorRef(key: string, dtype: Dtype, shape: number[]): PyOut {
  const t = TORCH_DTYPE[dtype];
  if (!t) throw new MoekitError('unsupported', `torch has no storage type moekit writes for ${dtype}`);
  const pid = py.pid(py.tuple('storage', py.global('torch', t[1]), key, 'cpu', numel(shape)));
  return py.reduce(
    py.global('torch._utils', '_rebuild_tensor_v2'),
    pid,
    0,
    py.tuple(...shape),
    py.tuple(...contiguousStrides(shape)),
    false,
    py.reduce(py.global('collections', 'OrderedDict')),
  );
}

const props = (d: Dtype): PyOut =>
  py.newobj(
    py.global(M, 'TensorProperties'),
    py.tuple(
      torchDtype(d),
      py.reduce(py.global('torch.serialization', '_get_layout'), 'torch.strided'),
      false,
      py.reduce(py.global(M, '_MEM_FORMAT_ENCODING'), 0),
      false,
    ),
  );

/** Write a DCP folder into `dir` (data in `__<rank>_0.distcp`, rank 0 unless an item says); `onBytes` hears of each chunk written. */
export async function writeDcp(
  dir: string,
  tensors: DcpTensorOut[],
  objects: DcpObjectOut[],
  opts: { checkpointId: string; fsync?: boolean; onBytes?: (n: number) => void },
): Promise<number> {
  await mkdir(dir, { recursive: true });
  const sdm: [PyOut, PyOut][] = [];
  const storage: [PyOut, PyOut][] = [];
  const files = new Map<number, { name: string; fh: FileHandle; sink: FileSink; tensors: number }>();
  const fileOf = async (rank = 0) => {
    let f = files.get(rank);
    if (!f) {
      const name = `__${rank}_0.distcp`;
      const fh = await open(join(dir, name), 'w');
      files.set(rank, (f = { name, fh, sink: new FileSink(fh), tensors: 0 }));
    }
    return f;
  };
  const info = (file: string, start: number, end: number): PyOut =>
    py.newobj(py.global('torch.distributed.checkpoint.filesystem', '_StorageInfo'), py.obj({ relative_path: file, offset: start, length: end - start }));
  const index = (fqn: string, offsets?: number[]): PyOut =>
    py.newobj(py.global(M, 'MetadataIndex'), py.obj(offsets ? { fqn, index: null, offset: size(offsets) } : { fqn, index: null }));
  try {
    await fileOf(0); // rank 0's file always exists
    for (const o of objects) {
      const f = await fileOf(o.rank);
      const start = f.sink.pos;
      await writeTorchSave(f.sink, o.value);
      sdm.push([o.fqn, py.newobj(py.global(M, 'BytesStorageMetadata'), null)]);
      storage.push([index(o.fqn), info(f.name, start, f.sink.pos)]);
    }
    for (const t of tensors) {
      const chunks: PyOut[] = [];
      for (const c of t.chunks) {
        const f = await fileOf(c.rank);
        const start = f.sink.pos;
        const counted = async function* () {
          for await (const b of c.data()) {
            opts.onBytes?.(b.length);
            yield b;
          }
        };
        await writeTorchSave(f.sink, tensorRef('0', t.dtype, c.sizes), [counted()]);
        f.tensors++;
        chunks.push(py.newobj(py.global(M, 'ChunkStorageMetadata'), py.obj({ offsets: size(c.offsets), sizes: size(c.sizes) })));
        storage.push([index(t.fqn, c.offsets), info(f.name, start, f.sink.pos)]);
      }
      sdm.push([t.fqn, py.newobj(py.global(M, 'TensorStorageMetadata'), py.obj({ properties: props(t.dtype), size: size(t.shape), chunks }))]);
    }
    if (opts.fsync) for (const f of files.values()) await f.fh.sync();
  } finally {
    for (const f of files.values()) await f.fh.close();
  }
  for (const f of [...files.values()].sort((a, b) => a.name.localeCompare(b.name)))
    runEvents.emit('file', { name: f.name, bytes: f.sink.pos, tensors: f.tensors });
  const meta = py.newobj(
    py.global(M, 'Metadata'),
    py.obj({
      state_dict_metadata: py.dict(sdm),
      planner_data: null,
      storage_data: py.dict(storage),
      storage_meta: py.newobj(py.global(M, 'StorageMeta'), py.obj({ checkpoint_id: opts.checkpointId, save_id: randomUUID(), load_id: null, modules: [] })),
      version: '1.0.0',
    }),
  );
  const mh = await open(join(dir, '.metadata'), 'w');
  try {
    await mh.writeFile(pickle(meta));
    if (opts.fsync) await mh.sync();
  } finally {
    await mh.close();
  }
  return [...files.values()].reduce((a, f) => a + f.sink.pos, 0);
}
