/**
 * `torch.save` checkpoints (`pytorch_model.bin`, `*.pt`, `*.pth`, sharded with
 * `pytorch_model.bin.index.json`) as a TensorStore. Opening reads the zip's central directory and
 * `data.pkl` only (through the restricted unpickler: nothing is executed); a tensor is a strided
 * view into its storage entry `data/<key>`, read on demand. Contiguous views point straight at
 * their bytes in the file; views that share a storage share its bytes.
 *
 * Sources: torch `serialization.py` (`_save`, `_load`: archive prefix, `data.pkl`, `data/<key>`,
 * `byteorder`); huggingface_hub `save_torch_state_dict` (sharded `.bin` + index);
 * `../shared/fixtures/torch/README.md`.
 */
import type { FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { MoekitError } from '../../errors.js';
import { type Dtype, dtypeSize, isDtype, numel } from '../dtypes.js';
import { readJsonIfExists } from '../json.js';
import { safeShardPath } from '../safetensors/reader.js';
import { BaseStore } from '../base.js';
import type { TensorInfo, TensorStore } from '../types.js';
import { gather, type Piece } from './gather.js';
import { type Py, PyDict, PyTuple, TorchOpaqueTensor, TorchTensor, torchPersistentLoad, unpickle } from './pickle.js';
import { readAt, ZipArchive } from './zip.js';

/** largest data.pkl read (a DeepSeek-V3-sized state dict pickles to a few MB) */
const MAX_PICKLE = 256 * 2 ** 20;
/** deepest nesting of dicts walked for tensors */
const MAX_DEPTH = 32;

export interface ReadOptions {
  /** refuse globals outside the unpickler's allow list */
  strict?: boolean;
}

/** A zip's first local header: what torch.save has written since torch 1.6. */
export const isTorchZip = (h: Uint8Array): boolean => h.length >= 4 && h[0] === 0x50 && h[1] === 0x4b && h[2] === 0x03 && h[3] === 0x04;
/** Pickle protocol 2, then the LONG1 magic number: what torch.save wrote first before 1.6. */
export const isLegacyTorch = (h: Uint8Array): boolean => h.length >= 3 && h[0] === 0x80 && h[1] === 0x02 && h[2] === 0x8a;

/** One torch.save zip (a whole file, or an item inside a DCP file) with its unpickled object. */
export class TorchSaveArchive {
  private constructor(
    readonly zip: ZipArchive,
    readonly prefix: string,
    readonly value: Py,
    readonly foreign: Set<string>,
  ) {}

  static async open(fh: FileHandle, where: string, base: number, length: number, opts: ReadOptions = {}): Promise<TorchSaveArchive> {
    const zip = await ZipArchive.open(fh, where, base, length);
    const pkls = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
    if (pkls.length !== 1)
      throw new MoekitError(
        'bad-input',
        `${where}: a zip archive but not a torch.save one (${pkls.length === 0 ? 'no <name>/data.pkl entry' : 'several data.pkl entries'})`,
      );
    const prefix = pkls[0]!.slice(0, -'data.pkl'.length);
    const bo = zip.entries.get(`${prefix}byteorder`);
    if (bo && (await zip.read(bo, 16)).toString('latin1') !== 'little')
      throw new MoekitError('unsupported', `${where}: saved on a big-endian machine; moekit reads little-endian checkpoints`);
    const pkl = await zip.read(zip.entries.get(pkls[0]!)!, MAX_PICKLE);
    const u = unpickle(pkl, { where: `${where}: ${pkls[0]}`, persistentLoad: torchPersistentLoad(`${where}: ${pkls[0]}`), strict: opts.strict });
    return new TorchSaveArchive(zip, prefix, u.value, u.foreign);
  }

  /** file offset and byte length of storage `key` */
  async storage(key: string): Promise<{ offset: number; size: number }> {
    const e = this.zip.entries.get(`${this.prefix}data/${key}`);
    if (!e) throw new MoekitError('bad-input', `${this.zip.where}: the pickle names storage ${key}, but the archive has no entry ${this.prefix}data/${key}`);
    return { offset: await this.zip.dataOffset(e), size: e.size };
  }

  /** A tensor of this archive as bytes in the file: contiguous (offset), or a strided piece to gather. */
  async locate(t: TorchTensor, name: string): Promise<Located> {
    const dtype = t.dtype;
    if (!isDtype(dtype)) throw new MoekitError('unsupported', `${this.zip.where}: '${name}' has dtype ${dtype}`);
    const es = dtypeSize(dtype);
    const { offset, size } = await this.storage(t.storage.key);
    const n = numel(t.shape);
    let last = t.offset;
    for (let k = 0; k < t.shape.length; k++) last += (t.shape[k]! - 1) * t.stride[k]!;
    if (n > 0 && (last + 1) * es > size)
      throw new MoekitError(
        'bad-input',
        `${this.zip.where}: '${name}' reaches element ${last} of a storage of ${size / es} elements (a lying or truncated file)`,
      );
    let contiguous = true;
    let acc = 1;
    for (let k = t.shape.length - 1; k >= 0; k--) {
      if (t.shape[k] !== 1 && t.stride[k] !== acc) contiguous = false;
      acc *= t.shape[k]!;
    }
    return { dtype, shape: t.shape, nbytes: n * es, fileOffset: offset, storageBytes: size, contiguous, offset: t.offset, strides: t.stride };
  }
}

export interface Located {
  dtype: Dtype;
  shape: number[];
  nbytes: number;
  /** file offset of the storage's first byte */
  fileOffset: number;
  storageBytes: number;
  contiguous: boolean;
  /** element offset and strides of the view */
  offset: number;
  strides: number[];
}

/** The named tensors of an unpickled checkpoint object: a state dict, or one under `state_dict` / `model` / `module`. */
function namedTensors(value: Py, where: string): { tensors: [string, TorchTensor][]; opaque: string[] } {
  const tensors: [string, TorchTensor][] = [];
  const opaque: string[] = [];
  const seen = new Set<object>();
  const walk = (v: Py, prefix: string, depth: number): void => {
    if (v instanceof TorchTensor) tensors.push([prefix, v]);
    else if (v instanceof TorchOpaqueTensor) opaque.push(prefix);
    else if (v instanceof PyDict) {
      if (seen.has(v)) return;
      if (depth > MAX_DEPTH) throw new MoekitError('bad-input', `${where}: state dict nested deeper than ${MAX_DEPTH} levels`);
      seen.add(v);
      for (const [k, x] of v.entries) if (typeof k === 'string' || typeof k === 'number') walk(x, prefix ? `${prefix}.${k}` : String(k), depth + 1);
    }
  };
  let root = value;
  if (root instanceof PyDict && !root.entries.some(([, v]) => v instanceof TorchTensor)) {
    for (const k of ['state_dict', 'model', 'module']) {
      const sub = root.get(k);
      if (sub instanceof PyDict) {
        root = sub;
        break;
      }
    }
  }
  if (!(root instanceof PyDict))
    throw new MoekitError(
      'unsupported',
      `${where}: holds ${root instanceof PyTuple || Array.isArray(root) ? 'a sequence' : 'an object'}, not a state dict of named tensors`,
    );
  walk(root, '', 0);
  return { tensors, opaque };
}

interface TorchTensorInfo extends TensorInfo {
  located: Located;
  archiveFile: string;
}

export class TorchSaveStore extends BaseStore implements TensorStore {
  readonly format = 'torch';
  /** what transformers' save_pretrained records in a safetensors header, so converted folders match its own output */
  readonly metadata: Record<string, string> = { format: 'pt' };
  /** tensors the file stores in a form moekit does not read */
  readonly opaque: string[] = [];
  readonly foreign = new Set<string>();
  /** each file's whole unpickled object (a training checkpoint's args, iteration, …) */
  readonly roots = new Map<string, Py>();

  private constructor(
    readonly dir: string,
    readonly files: string[],
  ) {
    super();
  }

  /** A single torch.save file, or a folder / `pytorch_model.bin.index.json` of shards. */
  static async open(path: string, opts: ReadOptions = {}): Promise<TorchSaveStore> {
    if (path.endsWith('.json')) return TorchSaveStore.openIndex(path, opts);
    const file = resolve(path);
    const st = new TorchSaveStore(resolve(file, '..'), [file]);
    try {
      await st.add(file, opts);
    } catch (e) {
      await st.close();
      throw e;
    }
    return st;
  }

  static async openIndex(indexPath: string, opts: ReadOptions = {}): Promise<TorchSaveStore> {
    const idx = await readJsonIfExists(indexPath);
    const map = idx?.weight_map;
    if (!map || typeof map !== 'object' || Array.isArray(map)) throw new MoekitError('bad-input', `${indexPath}: no weight_map object in index`);
    const dir = resolve(indexPath, '..');
    const files = [...new Set(Object.values(map as Record<string, string>).map((f) => safeShardPath(dir, f, indexPath)))];
    const st = new TorchSaveStore(dir, files);
    try {
      for (const f of files) await st.add(f, opts);
      for (const [name, f] of Object.entries(map as Record<string, string>)) {
        const t = st.tensors.get(name) as TorchTensorInfo | undefined;
        if (!t) throw new MoekitError('bad-input', `${indexPath}: weight_map lists '${name}' in ${f}, but that file has no such tensor`);
        if (t.archiveFile !== resolve(dir, f))
          throw new MoekitError('bad-input', `${indexPath}: weight_map puts '${name}' in ${f}, but it is stored elsewhere`);
      }
    } catch (e) {
      await st.close();
      throw e;
    }
    return st;
  }

  private async add(file: string, opts: ReadOptions): Promise<void> {
    const fh = await this.handle(file);
    const st = await fh.stat();
    if (!st.isFile()) throw new MoekitError('bad-input', `${file}: not a regular file`);
    const head = await readAt(fh, 0, Math.min(4, st.size), file);
    if (!isTorchZip(head)) {
      if (isLegacyTorch(head))
        throw new MoekitError(
          'unsupported',
          `${file} is a legacy (pre-1.6, non-zip) torch.save pickle; re-save it with a current torch (torch.save(torch.load(f), f)) first`,
        );
      throw new MoekitError('bad-input', `${file}: not a torch.save zip archive`);
    }
    const ar = await TorchSaveArchive.open(fh, file, 0, st.size, opts);
    for (const f of ar.foreign) this.foreign.add(f);
    this.roots.set(file, ar.value);
    const { tensors, opaque } = namedTensors(ar.value, file);
    this.opaque.push(...opaque);
    for (const [name, t] of tensors) {
      if (this.tensors.has(name)) throw new MoekitError('bad-input', `${file}: tensor '${name}' is stored twice`);
      const loc = await ar.locate(t, name);
      const info: TorchTensorInfo = { name, dtype: loc.dtype, shape: loc.shape, nbytes: loc.nbytes, located: loc, archiveFile: file };
      if (loc.contiguous) {
        info.file = file;
        info.offset = loc.fileOffset + loc.offset * dtypeSize(loc.dtype);
      }
      this.tensors.set(name, info);
    }
  }

  /** a tensor as one strided piece of its storage, placed at the origin */
  piece(name: string): Piece {
    const info = this.info(name) as TorchTensorInfo;
    const L = info.located;
    const es = dtypeSize(L.dtype);
    return {
      at: L.shape.map(() => 0),
      shape: L.shape,
      strides: L.strides,
      base: L.offset,
      read: async (a, b, into) => readAt(await this.handle(info.archiveFile), L.fileOffset + a * es, (b - a) * es, info.archiveFile, into),
    };
  }

  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const { info, end: e, out } = this.range<TorchTensorInfo>(t, start, end, into);
    if (info.offset !== undefined) return readAt(await this.handle(info.archiveFile), info.offset + start, e - start, info.archiveFile, out);
    return gather(info.shape, dtypeSize(info.dtype), [this.piece(info.name)], start, e, out);
  }

  config(): Promise<Record<string, unknown> | undefined> {
    return readJsonIfExists(join(this.dir, 'config.json'));
  }
}
