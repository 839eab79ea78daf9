/**
 * A Hub model read over HTTP, tensor by tensor: the safetensors headers with two ranged requests
 * per file, each tensor's bytes with one ranged request per chunk, so `inspect` fetches a few KB
 * and `convert` / `shard` stream from the Hub with the memory of a local read. Redirects (the
 * Hub sends weight files to its CDN) are followed with the Range header kept; `HF_TOKEN` is sent
 * to the endpoint (not to a redirected host). `HF_ENDPOINT` names another server (a mirror, or the
 * tests' local one); `HF_HUB_OFFLINE=1` never asks.
 *
 * Sources: huggingface_hub `constants.py` (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE), `hf_api.py`
 * (`GET /api/models/{repo}/revision/{rev}` → sha, siblings), `file_download.py`
 * (`/{repo}/resolve/{rev}/{file}`, ranged GETs, 302 to the CDN); the safetensors format.
 */
import { MoekitError } from '../errors.js';
import { checkHeaderLength, type ParsedHeader, parseHeaderJson } from './safetensors/header.js';
import { BaseStore } from './base.js';
import type { TensorInfo, TensorStore } from './types.js';

const endpoint = (): string => (process.env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, '');
export const hubOffline = (): boolean => /^(1|true|yes|on)$/i.test(process.env.HF_HUB_OFFLINE ?? '');

interface RemoteFile {
  url: string;
  size: number;
  header: ParsedHeader;
}

export class RemoteSafetensorsStore extends BaseStore implements TensorStore {
  readonly format = 'safetensors';
  metadata: Record<string, string> | undefined;
  private cfg: Record<string, unknown> | undefined;
  readonly files: string[] = [];
  private constructor(
    readonly dir: string,
    private readonly id: string,
    private readonly base: string,
  ) {
    super();
  }

  /** `org/name` at `revision` (default main) from the Hub, or a one-line error saying why not. */
  static async open(id: string, revision = 'main'): Promise<RemoteSafetensorsStore> {
    const api = `${endpoint()}/api/models/${id}/revision/${encodeURIComponent(revision)}`;
    const info = (await getJson(api, id)) as { sha?: unknown; siblings?: { rfilename?: unknown }[] };
    const sha = typeof info.sha === 'string' && /^[0-9a-f]{40}$/.test(info.sha) ? info.sha : revision;
    const names = (info.siblings ?? []).map((s) => s.rfilename).filter((n): n is string => typeof n === 'string');
    const st = new RemoteSafetensorsStore(`hf://${id}@${sha}`, id, `${endpoint()}/${id}/resolve/${sha}/`);
    let weights: string[];
    if (names.includes('model.safetensors.index.json')) {
      const idx = (await getJson(st.url('model.safetensors.index.json'), id)) as { weight_map?: Record<string, unknown> };
      weights = [...new Set(Object.values(idx.weight_map ?? {}).filter((f): f is string => typeof f === 'string'))];
    } else weights = names.filter((n) => n.endsWith('.safetensors') && !n.includes('/') && n !== 'reference.safetensors');
    if (weights.length === 0)
      throw new MoekitError(
        'unsupported',
        `${id}@${revision}: no safetensors weights on the Hub (moekit streams safetensors from the Hub; download other formats first)`,
      );
    if (weights.length > 1 && !names.includes('model.safetensors.index.json'))
      throw new MoekitError('bad-input', `${id}: ${weights.length} .safetensors files but no model.safetensors.index.json`);
    for (const f of weights) {
      if (f.split('/').includes('..') || f.startsWith('/')) throw new MoekitError('bad-input', `${id}: the index names '${f}', outside the repository`);
      await st.addFile(f);
    }
    if (names.includes('config.json')) st.cfg = (await getJson(st.url('config.json'), id)) as Record<string, unknown>;
    hubListings.set(st.dir, { names, load: (name) => getFile(st.url(name), `${id}/${name}`) });
    return st;
  }

  private url(file: string): string {
    return this.base + file.split('/').map(encodeURIComponent).join('/');
  }

  private async addFile(file: string): Promise<void> {
    const url = this.url(file);
    const where = `${this.id}/${file}`;
    const { body: head, size } = await getRange(url, 0, 8, where);
    const len = checkHeaderLength(head.readBigUInt64LE(0), size, where);
    const { body } = await getRange(url, 8, 8 + len, where);
    const header = parseHeaderJson(body.toString('utf8'), len, size, where);
    const rf: RemoteFile = { url, size, header };
    this.files.push(url);
    this.metadata ??= header.metadata;
    for (const t of header.tensors) {
      if (this.tensors.has(t.name)) throw new MoekitError('bad-input', `${this.id}: tensor '${t.name}' is stored twice`);
      this.tensors.set(t.name, {
        name: t.name,
        dtype: t.dtype,
        shape: t.shape,
        nbytes: t.end - t.begin,
        remote: rf,
        at: header.dataStart + t.begin,
      } as RemoteTensor);
    }
  }

  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const { info, end: e, out } = this.range<RemoteTensor>(t, start, end, into);
    if (e === start) return out;
    const { body } = await getRange(info.remote.url, info.at + start, info.at + e, `${this.id}: '${info.name}'`);
    body.copy(out);
    return out;
  }

  async config(): Promise<Record<string, unknown> | undefined> {
    return this.cfg;
  }
}

/** The files of a Hub repo opened as a store (keyed by the store's `hf://` dir), for its outputs' side files and card. */
interface HubListing {
  /** every file of the repo at that revision (paths with '/' for files in folders) */
  names: string[];
  /** one file's bytes (at most SIDE_FILE_MAX) */
  load(name: string): Promise<Buffer>;
}
const hubListings = new Map<string, HubListing>();

/** The listing of a Hub repo streamed from the Hub, when `dir` is such a store's `hf://…` dir. */
export const hubListing = (dir: string): HubListing | undefined => hubListings.get(dir);

/** A side file larger than this (tokenizers are tens of MB) is refused rather than held in memory. */
const SIDE_FILE_MAX = 512 * 2 ** 20;

async function getFile(url: string, where: string): Promise<Buffer> {
  const r = await get(url, {}, where);
  const tooBig = (n: number) => {
    if (n > SIDE_FILE_MAX) throw new MoekitError('unsupported', `${where}: a side file of ${n} bytes (more than ${SIDE_FILE_MAX / 2 ** 20} MiB)`);
  };
  tooBig(Number(r.headers.get('content-length') ?? 0)); // before the body, when the server says
  const body = Buffer.from(await r.arrayBuffer());
  tooBig(body.length);
  return body;
}

interface RemoteTensor extends TensorInfo {
  remote: RemoteFile;
  at: number;
}

const auth = (url: string): Record<string, string> => {
  const token = process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN;
  return token && url.startsWith(endpoint()) ? { authorization: `Bearer ${token}` } : {};
};

async function get(url: string, headers: Record<string, string>, id: string): Promise<Response> {
  let r: Response;
  try {
    r = await fetch(url, { headers: { ...auth(url), ...headers }, redirect: 'follow' });
  } catch (e) {
    const why = (e as { cause?: { code?: string } }).cause?.code ?? (e as Error).message;
    throw new MoekitError(
      'io',
      `${id}: cannot reach ${endpoint()} (${why}); download it where there is network (hf download ${id.split(':')[0]}) and pass the folder`,
    );
  }
  if (r.status === 401 || r.status === 403)
    throw new MoekitError('io', `${id}: the Hub refused access (${r.status}); set HF_TOKEN to a token that may read it`);
  if (r.status === 404) throw new MoekitError('not-found', `${id}: not on the Hub (404 for ${url.replace(endpoint(), '')})`);
  if (!r.ok) throw new MoekitError('io', `${id}: the Hub answered ${r.status} for ${url.replace(endpoint(), '')}`);
  return r;
}

async function getJson(url: string, id: string): Promise<unknown> {
  const r = await get(url, {}, id);
  const text = await r.text();
  if (text.length > 256 * 2 ** 20) throw new MoekitError('bad-input', `${id}: a JSON answer of ${text.length} bytes`);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new MoekitError('bad-input', `${id}: the Hub's answer for ${url.replace(endpoint(), '')} is not JSON`);
  }
}

/** bytes [a, b) of a file, with its total size (from Content-Range); the server must honour the range */
async function getRange(url: string, a: number, b: number, where: string): Promise<{ body: Buffer; size: number }> {
  const r = await get(url, { range: `bytes=${a}-${b - 1}` }, where);
  const cr = /\/(\d+)$/.exec(r.headers.get('content-range') ?? '');
  if (r.status !== 206 || !cr)
    throw new MoekitError('io', `${where}: the server ignored a range request (status ${r.status}); moekit streams only from servers that serve ranges`);
  const body = Buffer.from(await r.arrayBuffer());
  if (body.length !== b - a) throw new MoekitError('io', `${where}: asked for ${b - a} bytes at ${a}, got ${body.length}`);
  return { body, size: Number(cr[1]) };
}
