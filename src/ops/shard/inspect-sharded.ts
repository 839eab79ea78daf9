/**
 * `moekit inspect` of a sharded folder (moekit shard's output): its manifest summarised — source
 * model, rank layout, EP × ETP, placement, and which rank folders are present or missing
 * (a job array still running, or a rank lost). Reads only the manifests and folder listings.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MoekitError } from '../../errors.js';
import { readManifest } from './manifest.js';

export interface ShardedReport {
  kind: 'sharded';
  path: string;
  family: string;
  sourceLayout: string;
  layout: string;
  ep: number;
  etp: number;
  placement: string;
  dense: string;
  experts: number;
  ranks: { index: number; dir: string; experts: number[]; intermediate: [number, number]; tensors: number; present: boolean }[];
  missing: string[];
}

async function hasWeights(dir: string): Promise<boolean> {
  if (!(await stat(dir).catch(() => undefined))?.isDirectory()) return false;
  return (await readdir(dir)).some((f) => f.endsWith('.safetensors'));
}

export async function inspectSharded(path: string): Promise<ShardedReport> {
  const m = await readManifest(path);
  if (!m) throw new MoekitError('bad-input', `${path}: no moekit-manifest.json`);
  const ranks = await Promise.all(
    m.ranks.map(async (r) => ({
      index: r.index,
      dir: r.dir,
      experts: r.experts,
      intermediate: r.intermediate,
      tensors: Object.keys(r.tensors).length,
      present: await hasWeights(join(path, r.dir)),
    })),
  );
  return {
    kind: 'sharded',
    path,
    family: m.source.family,
    sourceLayout: m.source.layout,
    layout: m.layout,
    ep: m.ep,
    etp: m.etp,
    placement: m.placement,
    dense: m.dense,
    experts: m.source.numExperts,
    ranks,
    missing: ranks.filter((r) => !r.present).map((r) => r.dir),
  };
}

const span = (e: number[]) => (e.length > 1 && e.every((x, i) => i === 0 || x === e[i - 1]! + 1) ? `${e[0]}–${e.at(-1)}` : e.join(','));

export function formatSharded(r: ShardedReport): string {
  const rows = r.ranks.map(
    (x) =>
      `  ${x.dir.padEnd(14)} experts ${span(x.experts).padEnd(12)} I [${x.intermediate.join(', ')})  ${x.tensors} tensors  ${x.present ? 'present' : 'MISSING'}`,
  );
  return [
    `path        ${r.path} (sharded by moekit)`,
    `model       ${r.family}, ${r.experts} experts, source layout ${r.sourceLayout}`,
    `ranks       EP ${r.ep} × ETP ${r.etp} = ${r.ranks.length}, layout ${r.layout}, placement ${r.placement}, dense tensors ${r.dense}`,
    ...rows,
    r.missing.length ? `missing     ${r.missing.length} rank folder(s): ${r.missing.join(', ')} (re-run their shard jobs with --rank)` : 'missing     none',
  ].join('\n');
}
