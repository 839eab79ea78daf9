/**
 * Container registry: opens any path as a TensorStore, recognising the format by content (magic
 * bytes and file structure), never by extension. Adding a container: implement TensorStore and
 * add one entry to CONTAINERS (its `sniff` sees the first bytes of a file, or a folder's names).
 */
import type { Stats } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MoekitError } from '../errors.js';
import type { TensorStore } from './types.js';
import { SafetensorsStore } from './safetensors/reader.js';

export interface Container {
  id: string;
  /** what the format is, in words */
  what: string;
  /** does a file starting with `head` hold this format? */
  sniffFile(head: Buffer): boolean;
  /** the file of a folder to open, if the folder holds this format */
  sniffDir?(names: string[], dir: string): Promise<string | undefined>;
  /** open it; undefined for formats recognised only to refuse them clearly */
  open?(path: string): Promise<TensorStore>;
}

const isSafetensorsHead = (h: Buffer): boolean => {
  if (h.length < 9) return false;
  const n = h.readBigUInt64LE(0);
  return n > 1n && n < 1n << 40n && h[8] === 0x7b; // '{'
};

async function head(path: string, n = 16): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(n);
    const { bytesRead } = await fh.read(b, 0, n, 0);
    return b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

export const CONTAINERS: readonly Container[] = [
  {
    id: 'safetensors',
    what: 'safetensors',
    sniffFile: (h) => isSafetensorsHead(h) || (h[0] === 0x7b && h.subarray(0, 16).toString('latin1').includes('"')),
    open: (path) => SafetensorsStore.open(path),
  },
  {
    id: 'torch-zip',
    what: 'a torch.save zip archive (PyTorch .bin/.pt/.pth)',
    sniffFile: (h) => h.length >= 4 && h.readUInt32LE(0) === 0x04034b50,
  },
  {
    id: 'torch-legacy',
    what: 'a legacy (pre-1.6, non-zip) torch.save pickle',
    // pickle protocol 2 header, then the LONG1 magic number torch.save wrote first
    sniffFile: (h) => h.length >= 3 && h[0] === 0x80 && h[1] === 0x02 && h[2] === 0x8a,
  },
];

/** Folder contents that name a container moekit recognises but cannot read yet. */
const FOLDER_HINTS: [RegExp, string][] = [
  [/^\.metadata$|\.distcp$/, 'a torch.distributed.checkpoint (DCP / Megatron torch_dist) folder'],
  [/^pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?$|\.pt$|\.pth$/, 'a torch.save checkpoint'],
  [/^mp_rank_\d+/, 'a legacy Megatron per-rank checkpoint'],
];

/** A folder (or a subfolder of it) in a container moekit recognises but cannot read yet: say which. */
async function refuseKnownFolder(path: string, names: string[]): Promise<void> {
  for (const [re, what] of FOLDER_HINTS) if (names.some((n) => re.test(n))) refuse(path, what);
  for (const n of names) {
    const sub = join(path, n);
    if (!(await stat(sub).catch(() => undefined))?.isDirectory()) continue;
    const inner = await readdir(sub).catch(() => [] as string[]);
    for (const [re, what] of FOLDER_HINTS) if (inner.some((x) => re.test(x))) refuse(path, `a folder holding ${what} (${n}/)`);
  }
}

/** The format of a single file, by its first bytes. */
async function sniff(path: string): Promise<Container | undefined> {
  const h = await head(path);
  return CONTAINERS.find((c) => c.sniffFile(h));
}

const refuse = (path: string, what: string): never => {
  throw new MoekitError(
    'unsupported',
    `${path} is ${what}; moekit reads safetensors checkpoints only so far (convert it with the framework's own tools, or save it with safetensors)`,
  );
};

/** Open a checkpoint: a folder, a weight file, or an index.json, in any container moekit reads. */
export async function openStore(path: string): Promise<TensorStore> {
  let st: Stats;
  try {
    st = await stat(path);
  } catch {
    throw new MoekitError('not-found', `${path}: no such file or folder`);
  }
  if (st.isDirectory()) {
    const names = await readdir(path);
    const weights = names.filter((n) => /\.safetensors(\.index\.json)?$/.test(n) && n !== 'reference.safetensors');
    if (weights.length === 0) await refuseKnownFolder(path, names);
    return SafetensorsStore.open(path);
  }
  const c = await sniff(path);
  if (c?.open) return c.open(path);
  if (c) refuse(path, c.what);
  // no other container's signature: the safetensors parser says precisely what is wrong
  return SafetensorsStore.open(path);
}
