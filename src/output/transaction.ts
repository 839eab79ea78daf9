/**
 * Output folders: every command writes into a temp sibling of the destination and renames it into
 * place only when complete, so a failure never leaves a partial checkpoint behind.
 */
import { readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MoekitError } from '../errors.js';

/** The destination must not exist, or be an empty folder, unless `force`. Returns whether it exists. */
export async function checkDestination(dst: string, force: boolean): Promise<boolean> {
  let st;
  try {
    st = await stat(dst);
  } catch {
    return false;
  }
  if (!st.isDirectory()) throw new MoekitError('destination', `${dst} exists and is not a folder`);
  if ((await readdir(dst)).length > 0 && !force) throw new MoekitError('destination', `${dst} exists and is not empty; pass --force to replace it`);
  return true;
}

/** A hidden temp folder name next to `dst` (same file system, so the final rename is atomic). */
export const tempSibling = (dst: string): string => join(dirname(dst), `.${basename(dst)}.moekit-tmp-${randomBytes(4).toString('hex')}`);

/** Peak resident memory of this process so far, in MiB (reported in --json summaries). */
export const peakRssMB = (): number => Math.round((process.resourceUsage().maxRSS / 1024) * 10) / 10;
