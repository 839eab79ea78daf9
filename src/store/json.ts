import { readFile, stat } from 'node:fs/promises';
import { MoekitError } from '../errors.js';

/** Largest JSON file moekit reads (configs, indexes, manifests of a 65536-rank sharding fit easily). */
const MAX_JSON = 256 * 2 ** 20;

/**
 * The text of a small regular file, or undefined when it does not exist. FIFOs, devices and
 * folders are refused before they are opened (opening a FIFO would block, /dev/urandom never ends).
 */
export async function readSmallFile(path: string, max = MAX_JSON): Promise<string | undefined> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(path);
  } catch {
    return undefined;
  }
  if (!st.isFile()) throw new MoekitError('bad-input', `${path}: not a regular file`);
  if (st.size > max) throw new MoekitError('bad-input', `${path}: ${st.size} bytes, larger than the ${max} bytes a JSON file of a checkpoint can sensibly be`);
  return readFile(path, 'utf8');
}

/** A JSON object file, or undefined when the file does not exist; anything else is a one-line error. */
export async function readJsonIfExists(path: string): Promise<Record<string, unknown> | undefined> {
  const text = await readSmallFile(path);
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new MoekitError('bad-input', `${path}: invalid JSON (${(e as Error).message.split('\n')[0]})`);
  }
}

/** The config.json named by `--hf-config`, which must exist. */
export async function readHfConfig(path: string): Promise<Record<string, unknown>> {
  const c = await readJsonIfExists(path);
  if (!c) throw new MoekitError('not-found', `--hf-config ${path}: no such file`);
  return c;
}
