/**
 * Container registry: opens any path as a TensorStore (safetensors, torch.save zips, DCP folders),
 * recognising the format by content (magic bytes and file structure), never by extension alone. Adding a container: implement TensorStore and
 * add one entry to CONTAINERS (its `sniff` sees the first bytes of a file, or a folder's names).
 */
import type { Stats } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MoekitError } from '../errors.js';
import type { TensorStore } from './types.js';
import { SafetensorsStore } from './safetensors/reader.js';
import { DcpShardedStore } from './safetensors/dcp-sharded.js';
import { DcpStore } from './torch/dcp.js';
import { hubId, resolveHubId } from './hub.js';
import { hubOffline, RemoteSafetensorsStore } from './remote.js';
import { type MegatronHints, MegatronStore } from './torch/megatron.js';
import { isLegacyTorch, isTorchZip, TorchSaveStore } from './torch/torch-save.js';

let strictPickles = false;
let megatronHints: MegatronHints = {};
/** `--family` / `--hf-config`: the HF family and config a Megatron checkpoint is read as, when its args cannot tell. */
export function setMegatronHints(h: MegatronHints): void {
  megatronHints = h;
}
/** `--hf-config`, for a checkpoint of any container without a config.json beside it. */
export const hintedConfig = (): string | undefined => megatronHints.hfConfig;
/** `--strict`: pickles naming a global outside the allow list are refused instead of kept inert. */
export function setStrictPickles(on: boolean): void {
  strictPickles = on;
}

export interface Container {
  id: string;
  /** what the format is, in words */
  what: string;
  /** does a file starting with `head` hold this format? */
  sniffFile(head: Buffer): boolean;
  /** the file of a folder to open, if the folder holds this format */
  sniffDir?(names: string[], dir: string): Promise<string | undefined>;
  /** open it (or refuse it in one line, as the legacy torch.save reader does) */
  open(path: string): Promise<TensorStore>;
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
    sniffFile: isTorchZip,
    open: (path) => TorchSaveStore.open(path, { strict: strictPickles }),
  },
  {
    id: 'torch-legacy',
    what: 'a legacy (pre-1.6, non-zip) torch.save pickle',
    sniffFile: isLegacyTorch,
    // the torch.save reader recognises it and refuses it, saying how to re-save it
    open: (path) => TorchSaveStore.open(path, { strict: strictPickles }),
  },
];

/** The format of a single file, by its first bytes. */
async function sniff(path: string): Promise<Container | undefined> {
  const h = await head(path);
  return CONTAINERS.find((c) => c.sniffFile(h));
}

const TORCH_FILE = /\.(bin|pt|pth)$/;
/** Fast-LLM's weight files: model_<n>.safetensors, with pipeline parallelism model_<pp>_<n>.safetensors */
export const FAST_LLM_FILE = /^model_\d+(?:_\d+)?\.safetensors$/;
const TORCH_INDEX = /\.(bin|pt|pth)\.index\.json$/;

/** The store of a folder, by what it holds: safetensors first (as transformers prefers), then torch.save, then DCP. */
async function openFolder(path: string, names: string[]): Promise<TensorStore | undefined> {
  // a Megatron checkpoint folder (its tracker file) or one iteration of it
  if (
    names.includes('latest_checkpointed_iteration.txt') ||
    (names.includes('metadata.json') && names.includes('.metadata')) ||
    names.some((n) => /^mp_rank_\d+/.test(n))
  )
    return MegatronStore.open(path, { strict: strictPickles, ...megatronHints });
  // torch's HuggingFaceStorageWriter (NeMo Automodel sharded safetensors): per-rank pieces, here or in model/
  if (DcpShardedStore.holds(names) && !names.some((n) => n.endsWith('.safetensors.index.json'))) return DcpShardedStore.open(path);
  if (names.includes('model') && !names.includes('model.safetensors') && DcpShardedStore.holds(await readdir(join(path, 'model')).catch(() => [])))
    return DcpShardedStore.open(join(path, 'model'), path);
  // Fast-LLM's fast_llm format: metadata.yaml + model_<n>.safetensors with "<parameter>/<shard>" keys
  // (imported here when met: its store derives from DerivedStore, which imports this module)
  if (names.includes('metadata.yaml') && names.some((n) => FAST_LLM_FILE.test(n))) return (await import('./fast-llm.js')).FastLlmStore.open(path);
  const weights = names.filter((n) => /\.safetensors(\.index\.json)?$/.test(n) && n !== 'reference.safetensors');
  if (weights.length > 0) return SafetensorsStore.open(path);
  const opts = { strict: strictPickles };
  const idx = names.find((n) => n === 'pytorch_model.bin.index.json') ?? names.find((n) => TORCH_INDEX.test(n));
  if (idx) return TorchSaveStore.openIndex(join(path, idx), opts);
  const bins = names.filter((n) => TORCH_FILE.test(n));
  if (bins.length === 1) return TorchSaveStore.open(join(path, bins[0]!), opts);
  if (bins.length > 1)
    throw new MoekitError(
      'bad-input',
      `${path}: ${bins.length} torch.save files (${bins.slice(0, 3).join(', ')}${bins.length > 3 ? ', …' : ''}) but no pytorch_model.bin.index.json; pass one file`,
    );
  if (names.includes('.metadata')) return DcpStore.open(path, path, opts);
  // a model folder whose DCP checkpoint sits in one subfolder (config.json beside it)
  const subs: string[] = [];
  for (const n of names) {
    const sub = join(path, n);
    if ((await stat(sub).catch(() => undefined))?.isDirectory() && (await stat(join(sub, '.metadata')).catch(() => undefined))?.isFile()) subs.push(n);
  }
  if (subs.length === 1) return DcpStore.open(join(path, subs[0]!), path, opts);
  if (subs.length > 1) throw new MoekitError('bad-input', `${path}: several DCP checkpoints (${subs.join(', ')}); pass one of them`);
  return undefined;
}

/** A Hub id not in the cache: stream it from the Hub, or say both why not and how to download it. */
async function fromHub(id: string, revision: string | undefined, notCached: Error): Promise<TensorStore> {
  if (hubOffline() || !(notCached instanceof MoekitError) || notCached.code !== 'not-found') throw notCached;
  try {
    return await RemoteSafetensorsStore.open(id, revision);
  } catch (e) {
    if (e instanceof MoekitError && e.code === 'io' && /cannot reach/.test(e.message))
      throw new MoekitError('not-found', `${notCached.message.replace(/; download it first/, ', and the Hub cannot be reached; download it first')}`);
    throw e;
  }
}

/** Open a checkpoint: a folder, a weight file, or an index.json, in any container moekit reads. */
export async function openStore(path: string): Promise<TensorStore> {
  let st: Stats;
  try {
    st = await stat(path);
  } catch {
    // not a path: a Hub id (org/name[@revision]), from the local Hugging Face cache or else streamed from the Hub
    const id = hubId(path);
    if (!id) throw new MoekitError('not-found', `${path}: no such file or folder`);
    const cached = await resolveHubId(path).catch((e: unknown) => e as Error);
    if (typeof cached !== 'string') return fromHub(`${id.org}/${id.name}`, id.revision, cached);
    path = cached;
    st = await stat(path);
  }
  if (st.isDirectory()) {
    const names = await readdir(path);
    const store = await openFolder(path, names);
    if (store) return store;
    return SafetensorsStore.open(path);
  }
  if (TORCH_INDEX.test(path)) return TorchSaveStore.openIndex(path, { strict: strictPickles });
  const c = await sniff(path);
  if (c) return c.open(path);
  // no other container's signature: the safetensors parser says precisely what is wrong
  return SafetensorsStore.open(path);
}
