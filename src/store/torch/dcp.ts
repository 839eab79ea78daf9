/**
 * torch.distributed.checkpoint (DCP) folders as a TensorStore: `.metadata` (a pickled
 * `Metadata(state_dict_metadata, planner_data, storage_data, storage_meta, version)`) and
 * `__<rank>_<thread>.distcp` files whose items are complete torch.save zips at the byte ranges
 * `storage_data` gives. A tensor is assembled from its chunks (any offsets, any strides inside a
 * chunk); bytes items (pickled objects) are not tensors and are read only when asked for.
 *
 * Sources: torch `distributed/checkpoint/metadata.py` (TensorStorageMetadata, ChunkStorageMetadata,
 * MetadataIndex, BytesStorageMetadata), `filesystem.py` (`_StorageInfo(relative_path, offset,
 * length, transform_descriptors)`, `FileSystemReader`), `format_utils.py` (`dcp_to_torch_save`);
 * `../shared/fixtures/torch/README.md`.
 */
import { open } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { MoekitError } from '../../errors.js';
import { type Dtype, dtypeSize, isDtype, numel } from '../dtypes.js';
import { readJsonIfExists } from '../json.js';
import { safeShardPath } from '../safetensors/reader.js';
import { BaseStore } from '../base.js';
import type { TensorInfo, TensorStore } from '../types.js';
import { contiguousStrides } from '../../engine/ir.js';
import { gather, type Piece, restrict, tilingProblem } from './gather.js';
import { type Py, PyDict, PyGlobal, PyObj, PyTuple, TORCH_DTYPES, TorchTensor, unpickle } from './pickle.js';
import { type ReadOptions, TorchSaveArchive } from './torch-save.js';
import { readAt } from './zip.js';

/** largest `.metadata` read (DeepSeek-V3 with optimizer state is tens of MB) */
const MAX_METADATA = 1024 * 2 ** 20;

interface Item {
  file: string;
  offset: number;
  length: number;
}
export interface DcpChunk extends Item {
  at: number[];
  shape: number[];
}
interface DcpTensorInfo extends TensorInfo {
  chunks: DcpChunk[];
  /** chunks one element deep in dim 0, by their index there (stacked layers); the rest in `wide` */
  byLead?: Map<number, DcpChunk[]>;
  wide?: DcpChunk[];
}

const meets = (c: DcpChunk, at: readonly number[], shape: readonly number[]): boolean =>
  c.at.every((a, k) => a < at[k]! + shape[k]! && at[k]! < a + c.shape[k]!) && numel(c.shape) > 0;

const ints = (v: Py | undefined): number[] | undefined =>
  v instanceof PyTuple || Array.isArray(v)
    ? (v instanceof PyTuple ? v.items : v).every((x) => typeof x === 'number' && Number.isInteger(x) && x >= 0)
      ? ((v instanceof PyTuple ? v.items : v) as number[])
      : undefined
    : undefined;

const field = (o: Py | undefined, name: string): Py | undefined => (o instanceof PyObj ? o.field(name) : undefined);
const cls = (o: Py | undefined): string => (o instanceof PyObj ? o.className.split('.').pop()! : typeof o);

export class DcpStore extends BaseStore implements TensorStore {
  readonly format: string = 'dcp';
  /** what transformers' save_pretrained records in a safetensors header, so converted folders match its own output */
  readonly metadata: Record<string, string> = { format: 'pt' };
  readonly files: string[];
  /** bytes items (pickled objects), by key */
  readonly objects = new Map<string, Item>();
  private located = new Map<DcpChunk, Promise<Piece>>();

  protected constructor(
    /** the folder holding `.metadata` */
    readonly dcpDir: string,
    readonly dir: string,
    files: string[],
    private readonly opts: ReadOptions,
  ) {
    super();
    this.files = files;
  }

  /** Open the DCP folder `dcpDir`; `dir` is the checkpoint folder config.json and side files are taken from. */
  static async open(dcpDir: string, dir = dcpDir, opts: ReadOptions = {}): Promise<DcpStore> {
    const st = new DcpStore(resolve(dcpDir), resolve(dir), [], opts);
    await st.load();
    return st;
  }

  protected async load(): Promise<void> {
    const where = join(this.dcpDir, '.metadata');
    let buf: Buffer;
    const fh = await open(where, 'r').catch((e: NodeJS.ErrnoException) => {
      throw new MoekitError('io', `${where}: cannot open (${e.code ?? e.message})`);
    });
    try {
      const size = (await fh.stat()).size;
      if (size > MAX_METADATA) throw new MoekitError('bad-input', `${where}: ${size} bytes, more than moekit reads for DCP metadata`);
      buf = await readAt(fh, 0, size, where);
    } finally {
      await fh.close();
    }
    const md = unpickle(buf, { where, strict: this.opts.strict }).value;
    const fail = (m: string): never => {
      throw new MoekitError('bad-input', `${where}: ${m}`);
    };
    if (!(md instanceof PyObj) || !md.className.endsWith('checkpoint.metadata.Metadata')) fail(`holds ${cls(md)}, not torch.distributed.checkpoint Metadata`);
    const sdm = field(md, 'state_dict_metadata');
    const sd = field(md, 'storage_data');
    if (!(sdm instanceof PyDict) || !(sd instanceof PyDict)) fail('Metadata without state_dict_metadata / storage_data');
    // where every chunk / object is stored
    const items = new Map<string, Item>();
    const files = new Set<string>();
    for (const [k, v] of (sd as PyDict).entries) {
      const fqn = field(k, 'fqn');
      const rel = field(v, 'relative_path');
      const off = field(v, 'offset');
      const len = field(v, 'length');
      if (typeof fqn !== 'string' || typeof rel !== 'string' || typeof off !== 'number' || typeof len !== 'number' || off < 0 || len < 0)
        fail(`a storage entry that is not MetadataIndex -> _StorageInfo (${cls(k)} -> ${cls(v)})`);
      const td = field(v, 'transform_descriptors');
      if (Array.isArray(td) && td.length > 0)
        throw new MoekitError(
          'unsupported',
          `${where}: '${fqn}' is stored with the ${td.map(String).join('+')} transform; moekit reads DCP items stored plainly (save without a compressing storage writer)`,
        );
      const file = safeShardPath(this.dcpDir, rel as string, where);
      files.add(file);
      const o = ints(field(k, 'offset'));
      items.set(`${fqn}@${o ? o.join(',') : ''}`, { file, offset: off as number, length: len as number });
    }
    this.files.push(...[...files].sort());
    for (const [k, v] of (sdm as PyDict).entries) {
      if (typeof k !== 'string') fail('a state_dict_metadata key that is not a string');
      const name = k as string;
      if (cls(v) === 'BytesStorageMetadata') {
        const it = items.get(`${name}@`);
        if (it) this.objects.set(name, it);
        continue;
      }
      if (cls(v) !== 'TensorStorageMetadata') fail(`'${name}' has metadata of class ${cls(v)}`);
      this.tensors.set(name, this.tensorInfo(name, v as PyObj, items, fail));
    }
  }

  private tensorInfo(name: string, v: PyObj, items: Map<string, Item>, fail: (m: string) => never): DcpTensorInfo {
    // TensorProperties pickles its state as the tuple (dtype, layout, requires_grad, memory_format, pin_memory)
    const props = field(v, 'properties');
    const dt = props instanceof PyObj && props.state instanceof PyTuple ? props.state.items[0] : field(props, 'dtype');
    const dtype = dt instanceof PyGlobal && dt.module === 'torch' ? TORCH_DTYPES[dt.name] : undefined;
    if (!dtype || !isDtype(dtype))
      throw new MoekitError('unsupported', `${this.dcpDir}: '${name}' has dtype ${dt instanceof PyGlobal ? dt.full : '?'}, which moekit does not read`);
    const shape = ints(field(v, 'size')) ?? fail(`'${name}' has no size`);
    const list = field(v, 'chunks');
    if (!Array.isArray(list)) fail(`'${name}' has no chunk list`);
    const chunks: DcpChunk[] = [];
    for (const c of list as Py[]) {
      const at = ints(field(c, 'offsets'));
      const sz = ints(field(c, 'sizes'));
      if (!at || !sz) fail(`'${name}' has a chunk without offsets/sizes`);
      const it = items.get(`${name}@${at!.join(',')}`) ?? fail(`'${name}' has a chunk at [${at}] that storage_data does not place in any file`);
      if (numel(sz!) * dtypeSize(dtype as Dtype) > it.length) fail(`'${name}' has a chunk at [${at}] of ${numel(sz!)} elements stored in ${it.length} bytes`);
      chunks.push({ ...it, at: at!, shape: sz! });
    }
    const why = tilingProblem(shape as number[], chunks);
    if (why) fail(`the chunks of '${name}' do not tile its shape [${shape}]: ${why}`);
    return { name, dtype: dtype as Dtype, shape: shape as number[], nbytes: numel(shape as number[]) * dtypeSize(dtype as Dtype), chunks };
  }

  /** The unpickled object of a bytes item (Megatron's `common_state`, `_extra_state`). */
  async object(key: string): Promise<Py> {
    const it = this.objects.get(key);
    if (!it) throw new MoekitError('bad-input', `${this.dcpDir}: no object item '${key}'`);
    const ar = await TorchSaveArchive.open(await this.handle(it.file), `${it.file} (item '${key}')`, it.offset, it.length, this.opts);
    return ar.value;
  }

  /** A chunk as a piece of its tensor: its blob's inner tensor (dtype, shape and strides checked). */
  private piece(info: DcpTensorInfo, c: DcpChunk): Promise<Piece> {
    let p = this.located.get(c);
    if (!p) {
      p = (async () => {
        const fh = await this.handle(c.file);
        const where = `${c.file} (chunk of '${info.name}' at [${c.at}])`;
        const ar = await TorchSaveArchive.open(fh, where, c.offset, c.length, this.opts);
        if (!(ar.value instanceof TorchTensor)) throw new MoekitError('bad-input', `${where}: the item holds no tensor`);
        const loc = await ar.locate(ar.value, info.name);
        if (loc.dtype !== info.dtype || loc.shape.join() !== c.shape.join())
          throw new MoekitError('bad-input', `${where}: holds ${loc.dtype} [${loc.shape}], the metadata says ${info.dtype} [${c.shape}]`);
        const es = dtypeSize(info.dtype);
        return {
          at: c.at,
          shape: c.shape,
          strides: loc.strides,
          base: loc.offset,
          read: (a: number, b: number, into?: Buffer) => readAt(fh, loc.fileOffset + a * es, (b - a) * es, c.file, into),
        };
      })();
      p.catch(() => this.located.delete(c));
      this.located.set(c, p);
    }
    return p;
  }

  /** The pieces of a tensor whose rows may fall in elements [s, e) (by the flat extent of each chunk). */
  async pieces(info: DcpTensorInfo, s: number, e: number): Promise<Piece[]> {
    const L = contiguousStrides(info.shape);
    const want = info.chunks.filter((c) => {
      if (numel(c.shape) === 0) return false;
      let lo = 0;
      let hi = 0;
      for (let k = 0; k < L.length; k++) {
        lo += c.at[k]! * L[k]!;
        hi += (c.at[k]! + c.shape[k]! - 1) * L[k]!;
      }
      return hi >= s && lo < e;
    });
    return Promise.all(want.map((c) => this.piece(info, c)));
  }

  /** The pieces of tensor `name` inside the box [at, at + shape), in the tensor's coordinates (a layer or expert of a stacked tensor). */
  async boxPieces(name: string, at: readonly number[], shape: readonly number[]): Promise<Piece[]> {
    const info = this.info(name) as DcpTensorInfo;
    if (!info.byLead) {
      info.byLead = new Map();
      info.wide = [];
      for (const c of info.chunks) {
        if (c.shape.length > 0 && c.shape[0] === 1) {
          const l = info.byLead.get(c.at[0]!) ?? [];
          l.push(c);
          info.byLead.set(c.at[0]!, l);
        } else info.wide.push(c);
      }
    }
    let cand = info.wide!;
    if (at.length > 0 && shape[0] === 1) cand = [...(info.byLead.get(at[0]!) ?? []), ...cand];
    else if (at.length > 0) cand = info.chunks;
    const hit = cand.filter((c) => meets(c, at, shape));
    const ps = await Promise.all(hit.map((c) => this.piece(info, c)));
    return ps.map((p) => restrict(p, at, shape)).filter((p): p is Piece => p !== undefined);
  }

  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const { info, end: e, out } = this.range<DcpTensorInfo>(t, start, end, into);
    const es = dtypeSize(info.dtype);
    const pieces = await this.pieces(info, Math.floor(start / es), Math.ceil(e / es));
    return gather(info.shape, es, pieces, start, e, out);
  }

  async config(): Promise<Record<string, unknown> | undefined> {
    return (await readJsonIfExists(join(this.dir, 'config.json'))) ?? (await readJsonIfExists(join(this.dcpDir, 'config.json')));
  }
}
