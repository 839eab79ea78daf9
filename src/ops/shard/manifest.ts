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
import { DTYPE_SIZES, type Dtype } from '../../store/dtypes.js';
import { Checker, LIMITS } from '../../store/schema.js';
import { LAYOUTS } from '../../../converters/index.js';
import { knownLayout } from '../../engine/block-prefix.js';
import { digestOf } from '../../engine/read.js';
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
  /** digestOf the plan (checksums excluded), so an edited manifest is refused */
  digest?: string;
}

export interface RankManifest extends RankPlan {
  format: 'moekit-shard-rank';
  version: 1;
}

const SHA256 = /^[0-9a-f]{64}$/;

function checkTensors(k: Checker, v: unknown, field: string): Record<string, TensorRecord> {
  const o = k.obj(v, field);
  const out: Record<string, TensorRecord> = Object.create(null);
  for (const [name, t0] of Object.entries(o)) {
    const f = `${field}['${name.slice(0, 80)}']`;
    const t = k.obj(t0, f);
    const sha = t.sha256 === undefined ? undefined : k.str(t.sha256, `${f}.sha256`);
    if (sha !== undefined && !SHA256.test(sha)) k.fail(`${f}.sha256`, 'must be 64 hex digits');
    out[name] = {
      dtype: k.str(t.dtype, `${f}.dtype`, Object.keys(DTYPE_SIZES)) as Dtype,
      shape: k.ints(t.shape, `${f}.shape`, 0, Number.MAX_SAFE_INTEGER, LIMITS.dims),
      ...(sha ? { sha256: sha } : {}),
    };
  }
  return out;
}

function checkRank(k: Checker, v: unknown, i: number, E: number, I: number): RankPlan {
  const f = (n: string) => `ranks[${i}].${n}`;
  const r = k.obj(v, `ranks[${i}]`);
  const dir = k.str(r.dir, f('dir'));
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(dir)) k.fail(f('dir'), `'${dir.slice(0, 80)}' must be a plain folder name`);
  const inter = k.ints(r.intermediate, f('intermediate'), 0, I, 2);
  if (inter.length !== 2) k.fail(f('intermediate'), 'must be [start, end]');
  return {
    index: k.int(r.index, f('index'), 0, LIMITS.ranks),
    ep: k.int(r.ep, f('ep'), 0, LIMITS.ranks),
    etp: k.int(r.etp, f('etp'), 0, LIMITS.ranks),
    dir,
    experts: k.ints(r.experts, f('experts'), 0, Math.max(0, E - 1), E),
    intermediate: inter as [number, number],
    downBias: k.bool(r.downBias, f('downBias')),
    dense: k.bool(r.dense, f('dense')),
    tensors: checkTensors(k, r.tensors, f('tensors')),
  };
}

/** The top manifest, every field checked; undefined when the folder has none. */
export async function readManifest(root: string): Promise<ShardManifest | undefined> {
  const path = join(root, MANIFEST);
  const m = await readJsonIfExists(path);
  if (m === undefined) return undefined;
  const k = new Checker(path);
  if (m.format !== 'moekit-shard' || m.version !== 1) k.fail('format', "must be 'moekit-shard' version 1 (not a moekit shard manifest)");
  const src = k.obj(m.source, 'source');
  const layout = (v: unknown, f: string): string => {
    const id = k.str(v, f);
    if (!knownLayout(id)) k.fail(f, `must be one of ${LAYOUTS.map((l) => l.id).join(', ')} (or <non-HF layout>@<block prefix>), not '${id}'`);
    return id;
  };
  const E = k.int(src.numExperts, 'source.numExperts', 1, LIMITS.experts);
  const I = k.int(src.moeIntermediateSize, 'source.moeIntermediateSize', 1, LIMITS.intermediate);
  const source: ShardManifest['source'] = {
    family: k.str(src.family, 'source.family'),
    modelType: k.str(src.modelType, 'source.modelType'),
    layout: layout(src.layout, 'source.layout'),
    gateUp: k.str(src.gateUp, 'source.gateUp', ['concat', 'interleaved', 'separate']),
    numExperts: E,
    hiddenSize: k.int(src.hiddenSize, 'source.hiddenSize', 1, LIMITS.hidden),
    moeIntermediateSize: I,
    ...(src.config === undefined ? {} : { config: k.obj(src.config, 'source.config') }),
    ...(src.metadata === undefined ? {} : { metadata: k.strings(src.metadata, 'source.metadata') }),
  };
  const ranks = k.arr(m.ranks, 'ranks', LIMITS.ranks).map((r, i) => checkRank(k, r, i, E, I));
  const idx = ranks.map((r) => r.index).sort((a, b) => a - b);
  if (idx.some((x, i) => x !== i))
    k.fail('ranks', `must be numbered 0..${ranks.length - 1} once each (found ${idx.slice(0, 8).join(', ')}${idx.length > 8 ? ', …' : ''})`);
  const checked: ShardManifest = {
    format: 'moekit-shard',
    version: 1,
    source,
    layout: layout(m.layout, 'layout'),
    gateUp: k.str(m.gateUp, 'gateUp', ['concat', 'interleaved', 'separate']),
    ep: k.int(m.ep, 'ep', 1, LIMITS.ranks),
    etp: k.int(m.etp, 'etp', 1, LIMITS.ranks),
    placement: k.str(m.placement, 'placement', ['contiguous', 'round-robin']) as Placement,
    dense: k.str(m.dense, 'dense', ['replicate', 'rank0']) as ShardManifest['dense'],
    ranks,
  };
  if (m.digest === undefined) return checked;
  if (m.digest !== digestOf(planOf(checked))) {
    k.fail('digest', 'does not match the file: the manifest was edited after moekit wrote it (restore it, or delete its digest field to vouch for the edit)');
  }
  return { ...checked, digest: m.digest as string };
}

/** A rank's own manifest (its checksums), checked against the top manifest's numbers. */
export async function readRankManifest(rankDir: string, top: ShardManifest): Promise<RankManifest | undefined> {
  const path = join(rankDir, RANK_MANIFEST);
  const m = await readJsonIfExists(path);
  if (m === undefined) return undefined;
  const k = new Checker(path);
  if (m.format !== 'moekit-shard-rank' || m.version !== 1) k.fail('format', "must be 'moekit-shard-rank' version 1 (not a moekit rank manifest)");
  return { format: 'moekit-shard-rank', version: 1, ...checkRank(k, m, 0, top.source.numExperts, top.source.moeIntermediateSize) };
}

/** The manifest without checksums: what every job of a job array computes identically. */
export function planOf(m: ShardManifest): ShardManifest {
  return {
    ...m,
    digest: undefined,
    ranks: m.ranks.map((r) => ({
      ...r,
      tensors: Object.fromEntries(Object.entries(r.tensors).map(([n, t]) => [n, { dtype: t.dtype, shape: t.shape }])),
    })),
  };
}
