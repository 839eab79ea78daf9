/**
 * Lazy safetensors reader for a single file or a sharded checkpoint (model.safetensors.index.json).
 * Opening reads only headers; tensor bytes are read on demand with positioned reads, so memory
 * does not grow with checkpoint size.
 */
import type { Stats } from 'node:fs';
import { open, realpath, stat, readdir, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep, basename } from 'node:path';
import { MoekitError } from '../../errors.js';
import { readJsonIfExists, readSmallFile } from '../json.js';
import { linkRoot } from '../hub.js';
import type { TensorInfo, TensorStore } from '../types.js';
import { TensorMap } from '../tensor-map.js';
import { checkHeaderLength, parseHeaderJson, type ParsedHeader } from './header.js';
import { type Chunk, pooledChunks, sharedPool, type BufferPool } from '../pool.js';

export class SafetensorsFile {
  private constructor(
    readonly path: string,
    readonly size: number,
    readonly header: ParsedHeader,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    const where = path;
    let fh: FileHandle;
    try {
      // refuse FIFOs and devices before opening them (opening a FIFO blocks)
      if (!(await stat(path)).isFile()) throw new MoekitError('bad-input', `${where}: not a regular file`);
      fh = await open(path, 'r');
    } catch (e) {
      if (e instanceof MoekitError) throw e;
      throw new MoekitError('io', `${where}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new MoekitError('bad-input', `${where}: not a regular file`);
      const size = st.size;
      const lenBuf = Buffer.alloc(8);
      const { bytesRead } = await fh.read(lenBuf, 0, 8, 0);
      const len = checkHeaderLength(bytesRead < 8 ? 0n : lenBuf.readBigUInt64LE(0), bytesRead < 8 ? bytesRead : size, where);
      const hbuf = Buffer.alloc(len);
      const r = await fh.read(hbuf, 0, len, 8);
      if (r.bytesRead !== len) throw new MoekitError('bad-input', `${where}: header truncated`);
      const header = parseHeaderJson(hbuf.toString('utf8'), len, size, where);
      return new SafetensorsFile(path, size, header);
    } finally {
      await fh.close();
    }
  }

  tensorInfos(): TensorInfo[] {
    return this.header.tensors.map((t) => ({
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      file: this.path,
      offset: this.header.dataStart + t.begin,
      nbytes: t.end - t.begin,
    }));
  }
}

export interface IndexJson {
  metadata?: Record<string, unknown>;
  weight_map: Record<string, string>;
}

/** Resolve a weight_map file name safely inside `dir`; refuses absolute paths and `..` escapes. */
export function safeShardPath(dir: string, file: string, indexPath: string): string {
  if (typeof file !== 'string' || file.length === 0) throw new MoekitError('bad-input', `${indexPath}: weight_map has an empty or non-string file name`);
  if (isAbsolute(file) || /^[a-zA-Z]:[\\/]/.test(file) || file.includes('\0')) {
    throw new MoekitError('bad-input', `${indexPath}: weight_map points to absolute path '${file}'; shard files must be inside the checkpoint folder`);
  }
  const full = resolve(dir, file);
  const rel = relative(resolve(dir), full);
  if (rel === '' || rel.startsWith('..' + sep) || rel === '..' || isAbsolute(rel) || file.split(/[\\/]/).includes('..')) {
    throw new MoekitError('bad-input', `${indexPath}: weight_map points outside the checkpoint folder ('${file}')`);
  }
  return full;
}

export class SafetensorsStore extends TensorMap implements TensorStore {
  readonly format = 'safetensors';
  private handles = new Map<string, Promise<FileHandle>>();

  private constructor(
    /** Folder of the checkpoint (config.json lives here). */
    readonly dir: string,
    readonly stFiles: SafetensorsFile[],
    public metadata: Record<string, string> | undefined,
    readonly indexPath: string | undefined,
  ) {
    super();
  }

  /** Open a .safetensors file, a .index.json, or a folder containing either. */
  static async open(path: string): Promise<SafetensorsStore> {
    let st: Stats;
    try {
      st = await stat(path);
    } catch {
      throw new MoekitError('not-found', `${path}: no such file or folder`);
    }
    if (st.isDirectory()) {
      const names = await readdir(path);
      const idx = names.find((n) => n === 'model.safetensors.index.json') ?? names.find((n) => n.endsWith('.safetensors.index.json'));
      if (idx) return SafetensorsStore.openIndex(join(path, idx));
      const st1 = names.includes('model.safetensors')
        ? ['model.safetensors']
        : names.filter((n) => n.endsWith('.safetensors') && n !== 'reference.safetensors');
      if (st1.length === 1) return SafetensorsStore.openFile(join(path, st1[0]!));
      if (st1.length === 0) throw new MoekitError('bad-input', `${path}: no .safetensors file or model.safetensors.index.json in this folder`);
      throw new MoekitError('bad-input', `${path}: ${st1.length} .safetensors files but no index.json; pass one file or add model.safetensors.index.json`);
    }
    if (path.endsWith('.json')) return SafetensorsStore.openIndex(path);
    return SafetensorsStore.openFile(path);
  }

  /** Several .safetensors files of one folder read as one store (Fast-LLM's model_<n>.safetensors); a name in two files is refused. */
  static async openFiles(dir: string, paths: string[]): Promise<SafetensorsStore> {
    const files: SafetensorsFile[] = [];
    const ck = new SafetensorsStore(resolve(dir), files, undefined, undefined);
    for (const p of paths) {
      const f = await SafetensorsFile.open(resolve(p));
      files.push(f);
      ck.metadata ??= f.header.metadata;
      for (const t of f.tensorInfos()) {
        if (ck.tensors.has(t.name)) throw new MoekitError('bad-input', `${dir}: tensor '${t.name}' is stored twice (again in ${basename(p)})`);
        ck.tensors.set(t.name, t);
      }
    }
    return ck;
  }

  static async openFile(file: string): Promise<SafetensorsStore> {
    const f = await SafetensorsFile.open(resolve(file));
    const ck = new SafetensorsStore(resolve(file, '..'), [f], f.header.metadata, undefined);
    for (const t of f.tensorInfos()) ck.tensors.set(t.name, t);
    return ck;
  }

  static async openIndex(indexPath: string): Promise<SafetensorsStore> {
    const dir = resolve(indexPath, '..');
    let idx: IndexJson;
    const text = await readSmallFile(indexPath);
    if (text === undefined) throw new MoekitError('not-found', `${indexPath}: no such file`);
    try {
      idx = JSON.parse(text) as IndexJson;
    } catch (e) {
      throw new MoekitError('bad-input', `${indexPath}: cannot read index (${(e as Error).message.split('\n')[0]})`);
    }
    if (!idx || typeof idx !== 'object' || !idx.weight_map || typeof idx.weight_map !== 'object' || Array.isArray(idx.weight_map)) {
      throw new MoekitError('bad-input', `${indexPath}: no weight_map object in index`);
    }
    // an HF cache snapshot's shards are links into its repo's blobs/: allowed there, nowhere else
    const realDir = await linkRoot(await realpath(dir));
    const byFile = new Map<string, string[]>();
    for (const [name, file] of Object.entries(idx.weight_map)) {
      const full = safeShardPath(dir, file, indexPath);
      let list = byFile.get(full);
      if (!list) byFile.set(full, (list = []));
      list.push(name);
    }
    const files: SafetensorsFile[] = [];
    const owner = new Map<string, string>();
    const ck = new SafetensorsStore(dir, files, undefined, indexPath);
    for (const [full, names] of byFile) {
      let real: string;
      try {
        real = await realpath(full);
      } catch {
        throw new MoekitError('bad-input', `${indexPath}: weight_map names '${relative(dir, full)}' (for '${names[0]}'), which does not exist`);
      }
      if (relative(realDir, real).startsWith('..')) {
        throw new MoekitError('bad-input', `${indexPath}: shard '${relative(dir, full)}' is a link that leads outside the checkpoint folder`);
      }
      const f = await SafetensorsFile.open(full);
      files.push(f);
      for (const t of f.tensorInfos()) {
        const prev = owner.get(t.name);
        if (prev) {
          throw new MoekitError('bad-input', `${indexPath}: tensor '${t.name}' is stored twice, in ${basename(prev)} and ${basename(f.path)}`);
        }
        owner.set(t.name, f.path);
        ck.tensors.set(t.name, t);
      }
    }
    for (const [name, file] of Object.entries(idx.weight_map)) {
      const t = ck.tensors.get(name);
      if (!t) throw new MoekitError('bad-input', `${indexPath}: weight_map lists '${name}' in ${file}, but that file has no such tensor`);
      if (t.file !== resolve(dir, file)) {
        throw new MoekitError('bad-input', `${indexPath}: weight_map puts '${name}' in ${file}, but it is stored in ${basename(t.file ?? '')}`);
      }
    }
    ck.metadata = files[0]?.header.metadata;
    return ck;
  }

  get files(): string[] {
    return this.stFiles.map((f) => f.path);
  }

  private handle(file: string): Promise<FileHandle> {
    let h = this.handles.get(file);
    if (!h) {
      h = open(file, 'r');
      this.handles.set(file, h);
    }
    return h;
  }

  /** Read bytes [start, end) of one tensor (default: all of it) into `into` or a new Buffer. */
  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const info = typeof t === 'string' ? this.info(t) : t;
    const e = end ?? info.nbytes;
    if (start < 0 || e > info.nbytes || e < start)
      throw new MoekitError('bad-input', `${info.name}: byte range [${start}, ${e}) outside the tensor (${info.nbytes} bytes)`);
    const n = e - start;
    const buf = into ? into.subarray(0, n) : Buffer.allocUnsafe(n);
    if (info.file === undefined || info.offset === undefined) throw new MoekitError('internal', `${info.name}: no file behind the tensor`);
    const fh = await this.handle(info.file);
    let done = 0;
    while (done < n) {
      const { bytesRead } = await fh.read(buf, done, n - done, info.offset + start + done);
      if (bytesRead === 0) throw new MoekitError('bad-input', `${info.file}: file ended while reading '${info.name}' (truncated after opening?)`);
      done += bytesRead;
    }
    return buf;
  }

  /**
   * Stream one tensor's bytes in pooled chunks; each chunk must be released once consumed.
   * Keeps `readahead` positioned reads in flight so disk/page-cache reads overlap the consumer.
   */
  chunks(t: TensorInfo | string, pool: BufferPool = sharedPool, readahead = 2, start = 0, end?: number): AsyncGenerator<Chunk> {
    return pooledChunks(this, typeof t === 'string' ? this.info(t) : t, pool, readahead, start, end);
  }

  /** config.json next to the checkpoint, or undefined. */
  async config(): Promise<Record<string, unknown> | undefined> {
    return readJsonIfExists(join(this.dir, 'config.json'));
  }

  async close(): Promise<void> {
    const hs = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(hs.map(async (h) => (await h).close().catch(() => undefined)));
  }
}
