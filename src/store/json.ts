import { readFile } from 'node:fs/promises';
import { MoekitError } from '../errors.js';

/** A JSON object file, or undefined when the file does not exist; anything else is a one-line error. */
export async function readJsonIfExists(path: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new MoekitError('bad-input', `${path}: invalid JSON (${(e as Error).message.split('\n')[0]})`);
  }
}
