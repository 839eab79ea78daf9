/**
 * The manifests of a sharded checkpoint.
 *
 *  <dst>/moekit-manifest.json   the plan: source facts, EP/ETP sizes, placement, and per rank its
 *                               folder, global↔local expert map, I slice and every tensor's shape
 *                               and dtype. A one-shot `moekit shard` also records every tensor's
 *                               sha256 here. It is computable from headers alone, so every
 *                               `--rank r` job of a job array writes the same file (atomically).
 *  <dst>/<rank>/rank-manifest.json
 *                               written by the job that wrote the rank: the same rank entry, with the
 *                               sha256 of every tensor hashed while it was streamed to disk.
 * `merge`, `reshard` and `verify` combine the two: a tensor's checksum is the top manifest's when it
 * has one, else the rank manifest's; when both have one they must agree.
 */
import { readJsonIfExists } from '../../store/json.js';
import { join } from 'node:path';
import { MoekitError } from '../../errors.js';
import type { Dtype } from '../../store/dtypes.js';
import type { Placement } from './placement.js';

export const MANIFEST = 'moekit-manifest.json';
export const RANK_MANIFEST = 'rank-manifest.json';

export interface TensorRecord {
  dtype: Dtype;
  shape: number[];
  /** hex sha256 of the tensor's bytes as stored */
  sha256?: string;
}

export interface RankPlan {
  /** flat rank index (the value of `--rank`): ep · etpSize + etp */
  index: number;
  ep: number;
  etp: number;
  /** folder under the sharded root */
  dir: string;
  /** global expert ids held, in local-id order: local id i ↔ global experts[i] */
  experts: number[];
  /** slice [start, end) of the expert intermediate dim I held by this rank */
  intermediate: [number, number];
  /** whether this rank holds the experts' down-projection biases (expert-TP rank 0 only) */
  downBias: boolean;
  /** whether this rank holds the non-expert tensors (all ranks, or rank 0 with --dense rank0) */
  dense: boolean;
  tensors: Record<string, TensorRecord>;
}

export interface ShardManifest {
  format: 'moekit-shard';
  version: 1;
  source: {
    family: string;
    modelType: string;
    layout: string;
    gateUp: string;
    numExperts: number;
    hiddenSize: number;
    moeIntermediateSize: number;
    config?: Record<string, unknown>;
    metadata?: Record<string, string>;
  };
  /** layout of the rank checkpoints */
  layout: string;
  gateUp: string;
  ep: number;
  etp: number;
  placement: Placement;
  dense: 'replicate' | 'rank0';
  ranks: RankPlan[];
}

export interface RankManifest extends RankPlan {
  format: 'moekit-shard-rank';
  version: 1;
}

export async function readManifest(root: string): Promise<ShardManifest | undefined> {
  const path = join(root, MANIFEST);
  const m = (await readJsonIfExists(path)) as ShardManifest | undefined;
  if (m === undefined) return undefined;
  if (m?.format !== 'moekit-shard' || m.version !== 1 || !Array.isArray(m.ranks) || !m.source || typeof m.layout !== 'string') {
    throw new MoekitError('bad-input', `${path}: not a moekit shard manifest (format 'moekit-shard', version 1, ranks expected)`);
  }
  const ints = (v: unknown) => Number.isInteger(v) && (v as number) >= 1;
  if (!ints(m.ep) || !ints(m.etp)) throw new MoekitError('bad-input', `${path}: ep/etp must be positive integers`);
  for (const r of m.ranks) {
    if (!r || typeof r.dir !== 'string' || !Array.isArray(r.experts) || !r.tensors || typeof r.tensors !== 'object' || !Array.isArray(r.intermediate)) {
      throw new MoekitError('bad-input', `${path}: rank entry ${JSON.stringify(r?.dir ?? r)} is incomplete (dir, experts, intermediate, tensors expected)`);
    }
    if (r.dir.includes('/') || r.dir.includes('\\') || r.dir.startsWith('.'))
      throw new MoekitError('bad-input', `${path}: rank folder '${r.dir}' must be a plain folder name`);
  }
  return m;
}

export async function readRankManifest(rankDir: string): Promise<RankManifest | undefined> {
  const path = join(rankDir, RANK_MANIFEST);
  const m = (await readJsonIfExists(path)) as RankManifest | undefined;
  if (m === undefined) return undefined;
  if (m?.format !== 'moekit-shard-rank' || !m.tensors || !Array.isArray(m.experts)) throw new MoekitError('bad-input', `${path}: not a moekit rank manifest`);
  return m;
}

/** The manifest without checksums: what every job of a job array computes identically. */
export function planOf(m: ShardManifest): ShardManifest {
  return {
    ...m,
    ranks: m.ranks.map((r) => ({
      ...r,
      tensors: Object.fromEntries(Object.entries(r.tensors).map(([n, t]) => [n, { dtype: t.dtype, shape: t.shape }])),
    })),
  };
}
