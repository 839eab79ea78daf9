/**
 * Block prefixes: where a non-HF layout's MoE block tensors sit. Each spec has its own (flashfusemoe
 * `{root}layers.{n}.mlp.`, Megatron `decoder.layers.{n}.mlp.`), but a framework like flashfusemoe has
 * no save code of its own: a saved model is whatever `torch.save(model.state_dict())` gives, so its
 * MoELayer's `gate.weight` / `w_up` / `w_down` sit under the user's own module path
 * (`blocks.3.moe.w_up`), or at the top level of a single MoELayer's state dict (`w_up`).
 *
 * `<layout>@<prefix>` names a layout under another prefix, `{n}` standing for the layer index; a
 * prefix without `{n}` holds one MoE block (layer 0). `--to flashfusemoe@blocks.{n}.moe.` writes
 * it, and the name is what moekit.json and the shard manifest record, so a converted folder reads
 * back with no flag; `--block-prefix` (any command) says where the blocks of a user's own files are.
 * Source: flashfusemoe's MoELayer docs (../shared/reference/sources/flashfusemoe-moelayer.md).
 */
import { MoekitError } from '../errors.js';
import { LAYOUTS, layoutById } from '../../converters/index.js';
import type { LayoutSpec } from './layout.js';

/** dot-separated words, at most one `{n}`, ending in '.' (or empty: the top level) */
const PREFIX = /^(?:(?:[A-Za-z0-9_-]+|\{n\})\.)*$/;

let userPrefix: string | undefined;

/** `--block-prefix`: where a source's non-HF blocks are, for files without a moekit.json. */
export function setBlockPrefix(p: string | undefined): void {
  if (p !== undefined) checkPrefix(p, '--block-prefix');
  userPrefix = p;
}

const validPrefix = (p: string): boolean => PREFIX.test(p) && (p.match(/\{n\}/g)?.length ?? 0) <= 1;

function checkPrefix(p: string, what: string): void {
  if (!validPrefix(p))
    throw new MoekitError(
      'usage',
      `${what} '${p}': a block prefix is dot-terminated module names with at most one {n} for the layer index (e.g. 'blocks.{n}.moe.'), or '' for one block at the top level`,
    );
}

const variants = new Map<string, LayoutSpec>();

/** `spec` with its blocks under `prefix` (its id becomes `<id>@<prefix>`). */
function withPrefix(spec: LayoutSpec, prefix: string): LayoutSpec {
  if (spec.families) throw new MoekitError('usage', `--block-prefix applies to moekit's non-HF layouts; '${spec.id}' keeps the model's own HF names`);
  const id = `${spec.id}@${prefix}`;
  let v = variants.get(id);
  if (!v) variants.set(id, (v = { ...spec, id, prefix, root: '' }));
  return v;
}

/** A layout by id: a spec's own id, or `<id>@<prefix>`. */
export function layoutOf(id: string): LayoutSpec | undefined {
  const at = id.indexOf('@');
  if (at < 0) return layoutById(id);
  const base = layoutById(id.slice(0, at));
  const prefix = id.slice(at + 1);
  if (!base || base.families || !validPrefix(prefix)) return undefined;
  return withPrefix(base, prefix);
}

/** The layouts a checkpoint may be in: every spec; with --block-prefix the non-HF ones under it instead of their own. */
export function candidateLayouts(): readonly LayoutSpec[] {
  const p = userPrefix;
  return p === undefined ? LAYOUTS : LAYOUTS.map((l) => (l.families ? l : withPrefix(l, p)));
}

/** Is `id` a layout moekit.json or a manifest may name? */
export const knownLayout = (id: string): boolean => layoutOf(id) !== undefined;
