/**
 * The output transaction every writing command goes through: check the destination (never the
 * source or a folder holding it), take a lock, write into a hidden temp sibling, and rename it into
 * place only when complete. SIGINT / SIGTERM remove the temp folder before exiting; a temp folder
 * left by a killed run (kill -9) is removed by the next run writing the same destination. Side
 * files (tokenizer, generation config, chat template, model card) come along so every output is a
 * complete model folder.
 */
import type { Stats } from 'node:fs';
import { renameSync, rmSync, unlinkSync } from 'node:fs';
import { link, lstat, mkdir, open, readdir, readFile, realpath, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join, relative, resolve, sep, isAbsolute } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MoekitError, signalExitCode, STOP_SIGNALS } from '../errors.js';
import type { SideFile } from '../engine/plan.js';
import { hubListing } from '../store/remote.js';
import { FAST_LLM_FILE } from '../store/registry.js';

export interface OutputOptions {
  /** replace a non-empty destination */
  force?: boolean;
  /** paths the run reads: the destination may be none of them, nor hold nor sit inside any */
  sources: readonly string[];
}

/**
 * Remove a folder from a signal handler: writes still in flight in the thread pool may add files
 * while it goes (retried); whatever is left the next run writing this destination removes.
 */
function removeQuietly(p: string): void {
  try {
    rmSync(p, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
  } catch {
    /* best effort */
  }
}

/** Outputs in flight, removed by the signal handler. */
const active = new Set<Output>();
let handlersInstalled = false;

let interruptedBy: NodeJS.Signals | undefined;

/** The signal that is stopping this process, if any (the CLI then reports nothing else). */
export const interrupted = (): NodeJS.Signals | undefined => interruptedBy;

/**
 * Remove every output in flight, then once more after file operations already handed to the
 * thread pool have landed (an mkdir or open in flight could otherwise recreate what was removed),
 * and exit 128 + signal.
 */
function onSignal(sig: NodeJS.Signals): void {
  if (interruptedBy) return;
  interruptedBy = sig;
  const outs = [...active];
  for (const o of outs) o.removeNow();
  setTimeout(() => {
    for (const o of outs) o.sweep();
    process.stderr.write(`moekit: interrupted (${sig}); partial output removed\n`);
    process.exit(signalExitCode(sig));
  }, 150);
}

function track(o: Output): void {
  active.add(o);
  if (!handlersInstalled) {
    for (const sig of Object.keys(STOP_SIGNALS)) process.on(sig, onSignal);
    handlersInstalled = true;
  }
}

function untrack(o: Output): void {
  active.delete(o);
  if (active.size === 0 && handlersInstalled) {
    for (const sig of Object.keys(STOP_SIGNALS)) process.off(sig, onSignal);
    handlersInstalled = false;
  }
}

const alive = (pid: number): boolean => {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
};

const inside = (child: string, parent: string): boolean => {
  const r = relative(parent, child);
  return r !== '' && !r.startsWith(`..${sep}`) && r !== '..' && !isAbsolute(r);
};

/** The real path of `p`, or of its deepest existing ancestor joined with the rest. */
async function realish(p: string): Promise<string> {
  const abs = resolve(p);
  try {
    return await realpath(abs);
  } catch {
    const parent = dirname(abs);
    return parent === abs ? abs : join(await realish(parent), basename(abs));
  }
}

/** Refuse a destination that is, holds, or sits inside a source. */
async function checkNotSource(dst: string, sources: readonly string[]): Promise<void> {
  const d = await realish(dst);
  for (const s of sources) {
    const r = await realish(s);
    if (d === r || inside(r, d)) {
      throw new MoekitError('destination', `-o ${dst} would replace the source ${s} (it is the source or a folder that holds it); choose another destination`);
    }
    if (inside(d, r) && (await stat(r).catch(() => undefined))?.isDirectory()) {
      throw new MoekitError('destination', `-o ${dst} is inside the source folder ${s}; moekit never writes into its source, choose a destination outside it`);
    }
  }
}

/** The file every output folder gets, so `--force` can tell a moekit output from anything else. */
const MARK = '.moekit-output';
/** Files that mark folders written by moekit (older outputs have no MARK). */
const OUTPUT_MARKS = [MARK, 'moekit.json', 'moekit-manifest.json', 'rank-manifest.json'];

/**
 * The destination must not exist, or be an empty folder; with `force` it may also be an earlier
 * moekit output (never any other folder). Returns whether it exists.
 */
async function checkDestination(dst: string, force: boolean): Promise<boolean> {
  let st: Stats;
  try {
    st = await lstat(dst);
  } catch {
    return false;
  }
  if (!st.isDirectory()) throw new MoekitError('destination', `${dst} exists and is not a folder`);
  const names = await readdir(dst);
  if (names.length === 0) return true;
  if (!force) throw new MoekitError('destination', `${dst} exists and is not empty; pass --force to replace it`);
  if (!names.some((n) => OUTPUT_MARKS.includes(n))) {
    throw new MoekitError(
      'destination',
      `${dst} exists and was not written by moekit; --force replaces only moekit outputs: choose another destination or remove it yourself`,
    );
  }
  return true;
}

const TMP_MARK = '.moekit-tmp-';

/** Remove temp folders earlier runs left next to `dst`, and lock temp files of runs gone; called with the lock held, so no temp folder is in use. */
async function removeStaleTemps(dst: string, lock: string): Promise<void> {
  const dir = dirname(dst);
  const stem = `.${basename(dst)}${TMP_MARK}`;
  const lockStem = `${basename(lock)}.`;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const n of names) {
    if (n.startsWith(stem)) await rm(join(dir, n), { recursive: true, force: true });
    else if (n.startsWith(lockStem) && (await staleLockTemp(join(dir, n), n.slice(lockStem.length)))) await rm(join(dir, n), { force: true });
  }
}

/**
 * Whether a lock's temp file (`<lock>.<pid>-<hex>`, see createLock) was left by a run killed while
 * taking the lock: its pid no longer runs on this host. One from another host (a shared file
 * system) counts only once it is older than FRESH_LOCK_MS; a live run's is kept (it unlinks it itself).
 */
async function staleLockTemp(path: string, suffix: string): Promise<boolean> {
  const pid = Number(suffix.split('-')[0]);
  if (!Number.isInteger(pid) || pid <= 0) return false;
  const { host } = await lockOwner(path);
  if (!host || host === hostname()) return !alive(pid);
  return ((await ageMs(path)) ?? 0) > FRESH_LOCK_MS;
}

/** The "<pid> <host>" a lock file (or its temp) holds; empty fields where it is empty or gone. */
async function lockOwner(path: string): Promise<{ pidText?: string; host?: string }> {
  const [pidText, host] = (await readFile(path, 'utf8').catch(() => '')).trim().split(/\s+/);
  return { pidText: pidText || undefined, host };
}

/** Milliseconds since a file was last written, or undefined when it is gone. */
async function ageMs(path: string): Promise<number | undefined> {
  const st = await stat(path).catch(() => undefined);
  return st && Date.now() - st.mtimeMs;
}

/** One destination being written. */
class Output {
  private done = false;
  /** whether this run holds the lock file */
  locked = false;
  /** the lock's content written under a temp name, while it is being linked into place */
  lockTmp?: string;
  /** during a --force commit: where the old destination was moved (restored if interrupted) */
  private old?: string;
  /** the old destination being deleted after a --force commit (finished off if interrupted) */
  private trash?: string;

  private constructor(
    readonly dst: string,
    /** the temp folder to write into */
    readonly tmp: string,
    private readonly lock: string,
  ) {}

  /** whether an earlier output is replaced (--force) */
  private replace = false;

  /**
   * Check `dst`, lock it, clear stale temps, and create the temp folder. The signal handlers are
   * installed before the lock is taken, so an interruption at any point leaves nothing behind.
   */
  static async begin(dst: string, opts: OutputOptions): Promise<Output> {
    dst = resolve(dst);
    await checkNotSource(dst, opts.sources);
    await checkDestination(dst, !!opts.force); // fail fast, before locking
    await writableParent(dst);
    const lock = join(dirname(dst), `.${basename(dst)}.moekit-lock`);
    const tmp = join(dirname(dst), `.${basename(dst)}${TMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`);
    const o = new Output(dst, tmp, lock);
    track(o);
    try {
      await takeLock(o, !!opts.force);
      // again under the lock: another run may have finished this destination meanwhile
      o.replace = await checkDestination(dst, !!opts.force);
      await removeStaleTemps(dst, lock);
      await mkdir(tmp);
      await writeFile(join(tmp, MARK), '{"format":"moekit-output","version":1}\n');
      return o;
    } catch (e) {
      await o.abort();
      throw e;
    }
  }

  get lockPath(): string {
    return this.lock;
  }

  /** Move the finished temp folder into place (replacing the old destination only now). */
  async commit(): Promise<void> {
    try {
      await this.moveIntoPlace();
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err instanceof MoekitError || !err.code) throw e;
      throw new MoekitError('destination', `cannot move the finished output into ${this.dst} (${err.code}); the destination was left as it was`);
    }
    this.finish();
  }

  private async moveIntoPlace(): Promise<void> {
    // interrupted meanwhile: what is in the temp folder may be partial, and must never be committed
    if (this.done || interruptedBy) throw new MoekitError('interrupted', `interrupted before ${this.dst} was complete`);
    if (!this.replace) {
      await rename(this.tmp, this.dst);
      return;
    }
    const old = join(dirname(this.dst), `.${basename(this.dst)}${TMP_MARK}${process.pid}-old-${randomBytes(4).toString('hex')}`);
    await rename(this.dst, old);
    this.old = old;
    try {
      await rename(this.tmp, this.dst);
    } catch (e) {
      await rename(old, this.dst).catch(() => undefined);
      this.old = undefined;
      throw e;
    }
    this.old = undefined;
    this.trash = old;
    await rm(old, { recursive: true, force: true });
    this.trash = undefined;
  }

  /** Give up: remove the temp folder. */
  async abort(): Promise<void> {
    if (this.done) return;
    await rm(this.tmp, { recursive: true, force: true });
    this.finish();
  }

  /** Synchronous cleanup for signal handlers: the old destination comes back if it was moved aside. */
  removeNow(): void {
    if (this.done) return;
    if (this.old) {
      try {
        renameSync(this.old, this.dst);
      } catch {
        removeQuietly(this.old);
      }
    }
    this.sweep();
    this.finish();
  }

  /** Remove the temp folder (and a half-deleted old destination) and the lock, whatever state they are in. */
  sweep(): void {
    for (const p of [this.tmp, this.trash, this.lockTmp]) if (p) removeQuietly(p);
    this.unlock();
  }

  private unlock(): void {
    if (!this.locked) return;
    try {
      unlinkSync(this.lock);
    } catch {
      /* already gone */
    }
  }

  private finish(): void {
    this.done = true;
    this.unlock();
    untrack(this);
  }
}

/** Create the destination's parent, or fail at once with one line (the lock's creation catches /proc, read-only, no permission). */
async function writableParent(dst: string): Promise<void> {
  try {
    await mkdir(dirname(dst), { recursive: true });
  } catch (e) {
    throw unwritable(dst, e);
  }
}

const unwritable = (dst: string, e: unknown) =>
  new MoekitError('destination', `cannot write into ${dirname(dst)} (${(e as NodeJS.ErrnoException).code ?? 'error'}); choose an -o in a writable folder`);

/** Error codes of file systems without hard links, where the lock is created empty and then written. */
const LINKLESS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'ENOSYS', 'EMLINK']);

/**
 * Create the lock file with its content in one step: written under a temp name, then hard-linked
 * into place (EEXIST when another run holds it), so no run ever reads a lock half-written and
 * takes it for a stale one. Where hard links are not supported it is created empty and written.
 */
async function createLock(o: Output): Promise<void> {
  const text = `${process.pid} ${hostname()}\n`;
  o.lockTmp = `${o.lockPath}.${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(o.lockTmp, text, { flag: 'wx' });
    await link(o.lockTmp, o.lockPath);
    o.locked = true; // before any other await: a signal from here on removes the lock
  } catch (e) {
    if (!LINKLESS.has((e as NodeJS.ErrnoException).code ?? '')) throw e;
    const fh = await open(o.lockPath, 'wx');
    o.locked = true;
    await fh.writeFile(text);
    await fh.close();
  } finally {
    await unlink(o.lockTmp).catch(() => undefined);
    o.lockTmp = undefined;
  }
}

/** A lock younger than this with no pid in it is another run's, still being written (a file system without hard links). */
const FRESH_LOCK_MS = 10_000;

/**
 * Take the destination's lock file ("<pid> <host>"). A lock is stale when its run is gone: on this
 * host, a pid that no longer runs; from another host (a shared file system) moekit cannot tell, so
 * only `force` takes it over.
 */
async function takeLock(o: Output, force: boolean): Promise<void> {
  const { lockPath: lock, dst } = o;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await createLock(o);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw unwritable(dst, e);
      const { pidText, host } = await lockOwner(lock);
      const pid = Number(pidText);
      const fresh = !pidText && ((await ageMs(lock)) ?? Infinity) < FRESH_LOCK_MS;
      const here = !host || host === hostname();
      if (fresh || (here && alive(pid) && pid !== process.pid)) {
        throw new MoekitError(
          'destination',
          `${dst} is being written by another moekit run (${fresh ? 'its lock was just taken' : `pid ${pid}`}); wait for it, or remove ${lock} if that run is gone`,
        );
      }
      if (!here && !force)
        throw new MoekitError(
          'destination',
          `${dst} is locked by moekit pid ${pid} on host ${host}; if that run is gone, rerun with --force or remove ${lock}`,
        );
      await unlink(lock).catch(() => undefined); // stale: its run is gone
    }
  }
  throw new MoekitError('destination', `cannot lock ${dst} (${lock})`);
}

/** Run `write(tmp)` in a transaction on `dst`: committed when it returns, removed when it throws. */
export async function withOutput<T>(dst: string, opts: OutputOptions, write: (tmp: string) => Promise<T>): Promise<T> {
  const o = await Output.begin(dst, opts);
  try {
    const r = await write(o.tmp);
    await o.commit();
    return r;
  } catch (e) {
    await o.abort();
    throw e;
  }
}

/** Files of a checkpoint folder that are not weights or moekit's own: they travel to every output. */
const NOT_SIDE =
  /\.safetensors$|\.index\.json$|^config\.json$|^moekit\.json$|^moekit-manifest\.json$|^rank-manifest\.json$|^latest_checkpointed_iteration\.txt$|\.moekit-|^\./;
/** Weights in another container than the output's: not copied, each named on a `skipped:` line. */
const OTHER_WEIGHTS = /\.(bin|pt|pth|gguf|distcp|msgpack|h5|onnx|ckpt)$/;
const OTHER_WEIGHT_DIRS = new Set(['original']);

/**
 * The side files of `dir` (regular files only, top level) as {name, path}; weights of other formats
 * (and `original/`) are left out, their names added to `skipped`, and so is every name in `except`.
 */
export async function sideFilesOf(dir: string, skipped: string[] = [], except: readonly string[] = []): Promise<SideFile[]> {
  const hub = hubListing(dir);
  if (hub) return hubSideFiles(hub, skipped, except);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const out: { name: string; copyFrom: string }[] = [];
  // a Fast-LLM container's metadata.yaml describes its own weight files, not the output's
  const fastLlm = names.includes('metadata.yaml') && names.some((n) => FAST_LLM_FILE.test(n));
  for (const name of names.sort()) {
    if (NOT_SIDE.test(name) || except.includes(name) || (fastLlm && name === 'metadata.yaml')) continue;
    const p = join(dir, name);
    const st = await stat(p).catch(() => undefined);
    if (OTHER_WEIGHTS.test(name) || (st?.isDirectory() && OTHER_WEIGHT_DIRS.has(name))) skipped.push(st?.isDirectory() ? `${name}/` : name);
    else if (st?.isFile()) out.push({ name, copyFrom: p });
  }
  return out;
}

/** The same choice over a Hub repo's listing: top-level files fetched when written, folders of weights skipped. */
function hubSideFiles(hub: NonNullable<ReturnType<typeof hubListing>>, skipped: string[], except: readonly string[]): SideFile[] {
  const out: SideFile[] = [];
  const dirs = new Set<string>();
  for (const name of [...hub.names].sort()) {
    const top = name.split('/')[0]!;
    if (name.includes('/')) {
      if (OTHER_WEIGHT_DIRS.has(top) && !dirs.has(top)) skipped.push(`${top}/`);
      dirs.add(top);
    } else if (NOT_SIDE.test(name) || except.includes(name)) continue;
    else if (OTHER_WEIGHTS.test(name)) skipped.push(name);
    else out.push({ name, load: () => hub.load(name) });
  }
  return out;
}

/** Peak resident memory of this process so far, in MiB (reported in --json summaries). */
export const peakRssMB = (): number => Math.round((process.resourceUsage().maxRSS / 1024) * 10) / 10;
