/**
 * Hugging Face Hub ids as sources: `org/name` or `org/name@revision` is looked up in the local HF
 * cache the way huggingface_hub lays it out, so a model `hf download` fetched is used where it is,
 * without copying it:
 *
 *   $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)/models--org--name/
 *     refs/<branch>            the commit a branch (default main) points at
 *     snapshots/<commit>/...   the files, as symlinks into ../../blobs/<hash>
 *
 * Sources: huggingface_hub `constants.py` (HF_HOME, HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE) and
 * `file_download.py` / the cache-system guide (repo folder naming, refs, snapshots, blobs).
 */
import { readFile, realpath, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { MoekitError } from '../errors.js';

const ID = /^([A-Za-z0-9][\w.-]*)\/([A-Za-z0-9][\w.-]*)(?:@([\w.\-/]+))?$/;

/** Does `s` read as a Hub id (and not as a path that happens to exist)? Checked by the caller after stat fails. */
export function hubId(s: string): { org: string; name: string; revision?: string } | undefined {
  const m = ID.exec(s);
  if (!m || m[1]!.endsWith('.') || m[2] === '..' || (m[3] ?? '').split('/').includes('..')) return undefined;
  return { org: m[1]!, name: m[2]!, revision: m[3] };
}

function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  if (env.HF_HOME) return join(env.HF_HOME, 'hub');
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'huggingface', 'hub');
}

/** The snapshot folder of a Hub id in the local cache, or a one-line error saying how to get it. */
export async function resolveHubId(id: string): Promise<string> {
  const h = hubId(id);
  if (!h) throw new MoekitError('not-found', `${id}: no such file or folder`);
  const cache = hubCacheDir();
  const repo = join(cache, `models--${h.org}--${h.name}`);
  const rev = h.revision ?? 'main';
  const missing = (what: string) =>
    new MoekitError(
      'not-found',
      `${id}: ${what} in the Hugging Face cache (${cache}); download it first: hf download ${h.org}/${h.name}${h.revision ? ` --revision ${h.revision}` : ''} (or pass a local folder)`,
    );
  if (!(await stat(repo).catch(() => undefined))?.isDirectory()) throw missing('not found');
  let commit = rev;
  if (!/^[0-9a-f]{40}$/.test(rev)) {
    const ref = await readFile(join(repo, 'refs', rev), 'utf8').catch(() => undefined);
    if (ref === undefined) throw missing(`no revision '${rev}'`);
    commit = ref.trim();
    if (!/^[0-9a-f]{40}$/.test(commit)) throw new MoekitError('bad-input', `${join(repo, 'refs', rev)}: not a commit hash`);
  }
  const snap = join(repo, 'snapshots', commit);
  if (!(await stat(snap).catch(() => undefined))?.isDirectory()) throw missing(`revision ${commit.slice(0, 12)} not downloaded`);
  return snap;
}

/** an HF cache snapshot folder: `…/models--<org>--<name>/snapshots/<rev>` */
const SNAPSHOT = /(?:^|[\\/])models--([^\\/]+)--([^\\/]+)[\\/]snapshots[\\/][^\\/]+$/;

/**
 * The folder a checkpoint's files may link into: for an HF cache snapshot, its repo folder (the
 * snapshot's files are links into ../../blobs); for any other folder, the folder itself.
 */
export async function linkRoot(realDir: string): Promise<string> {
  return SNAPSHOT.test(realDir) ? realpath(dirname(dirname(realDir))) : realDir;
}

/** The Hub repo (`org/name`) a store's folder holds: an HF cache snapshot, or `hf://org/name@rev` streamed from the Hub. */
export function hubRepoOf(dir: string): string | undefined {
  const m = SNAPSHOT.exec(dir);
  if (m) return `${m[1]}/${m[2]}`;
  return /^hf:\/\/([^@]+)@/.exec(dir)?.[1];
}
