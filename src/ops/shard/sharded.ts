/**
 * Reading a sharded checkpoint back: check the plan (every expert slice held exactly once, every
 * rank folder present, its tensors as planned), verify sha256 checksums, and build the MERGED
 * model IR as lazy views over the rank files, so `merge`, `reshard` and `verify` stream from the
 * ranks without ever writing the merged checkpoint.
 */
import { stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { HashPool } from '../../engine/hash-pool.js';
import { MoekitError } from '../../errors.js';
import type { TensorStore } from '../../store/types.js';
import { openStore } from '../../store/registry.js';
import { concatView, EXPERT_FIELDS, type ExpertField, type ExpertIR, type LayerIR, type ModelIR } from '../../engine/ir.js';
import { loadMeta, quantizedTensors, readIR, type ModelMeta } from '../../engine/read.js';
import { openScaled, type ScaledIR } from '../../engine/scales.js';
import { dequantized } from '../dequant.js';
import { layoutOf } from '../../engine/block-prefix.js';
import type { LayoutSpec } from '../../engine/layout.js';
import { MANIFEST, RANK_MANIFEST, readManifest, readRankManifest, type RankManifest, type RankPlan, type ShardManifest } from './manifest.js';

export interface OpenRank {
  plan: RankPlan;
  /** the rank's files as stored (checksums are of these bytes) */
  ck: TensorStore;
  /** what the IR reads: `ck`, or `ck` dequantized to f32 when opened for verify */
  view: TensorStore;
  ir: ModelIR;
  /** a block-FP8 rank: `ir` is its weights, these its scale grids */
  scaled?: ScaledIR;
  /** sha256 per tensor (top manifest, else the rank's own manifest) */
  sha: Map<string, string>;
}

export interface Sharded {
  root: string;
  manifest: ShardManifest;
  ranks: OpenRank[];
  /** the merged model: all experts, full I, non-expert tensors from rank 0 */
  ir: ModelIR;
  /** block-FP8 ranks: the merged weights (= ir) and their merged scale grids */
  scaled?: ScaledIR;
  /** the checkpoint whose handles read every rank file (reads go by each tensor's own file) */
  reader: TensorStore;
  sourceSpec: LayoutSpec;
  meta: ModelMeta;
  close(): Promise<void>;
}

/** A folder is a sharded checkpoint when it holds moekit-manifest.json. */
export async function isSharded(path: string): Promise<boolean> {
  try {
    return (await stat(join(path, MANIFEST))).isFile();
  } catch {
    return false;
  }
}

/** The one-line refusal for a plan where some expert slice is held twice or not at all. */
function checkCoverage(m: ShardManifest, where: string): void {
  const E = m.source.numExperts;
  const I = m.source.moeIntermediateSize;
  if (m.ranks.length !== m.ep * m.etp)
    throw new MoekitError('bad-input', `${where}: lists ${m.ranks.length} ranks, expected ep ${m.ep} × etp ${m.etp} = ${m.ep * m.etp}`);
  const dirs = new Set<string>();
  const owner = new Map<string, string>();
  for (const r of m.ranks) {
    if (dirs.has(r.dir)) throw new MoekitError('bad-input', `${where}: rank folder '${r.dir}' is listed twice`);
    dirs.add(r.dir);
    const [a, b] = r.intermediate;
    if (!(Number.isInteger(a) && Number.isInteger(b) && a >= 0 && b <= I && a < b))
      throw new MoekitError('bad-input', `${where}: rank ${r.dir} has an invalid intermediate slice [${a}, ${b}) of I = ${I}`);
    for (const g of r.experts) {
      if (!Number.isInteger(g) || g < 0 || g >= E)
        throw new MoekitError('bad-input', `${where}: rank ${r.dir} claims expert ${g}, but the model has experts 0..${E - 1}`);
      const key = `${g}@${a}`;
      const prev = owner.get(key);
      if (prev)
        throw new MoekitError(
          'bad-input',
          `${where}: duplicate expert ${g}: claimed by both ${prev} and ${r.dir}; the manifest is inconsistent, re-run moekit shard`,
        );
      owner.set(key, r.dir);
    }
  }
  const slices = [...new Set(m.ranks.map((r) => r.intermediate[0]))];
  for (const a of slices) {
    for (let g = 0; g < E; g++)
      if (!owner.has(`${g}@${a}`))
        throw new MoekitError('bad-input', `${where}: no rank holds expert ${g}${m.etp > 1 ? ` (I slice from ${a})` : ''}; the manifest is incomplete`);
  }
}

/** The checksum of every tensor of a rank, from the top manifest or the rank's own; the tensors must be the planned ones. */
function rankChecksums(ck: TensorStore, plan: RankPlan, rm: RankManifest | undefined): Map<string, string> {
  const sha = new Map<string, string>();
  const want = Object.keys(plan.tensors);
  for (const n of want) {
    const t = plan.tensors[n]!;
    const info = ck.tensors.get(n);
    if (!info) throw new MoekitError('bad-input', `rank ${plan.dir}: tensor '${n}' listed in ${MANIFEST} is missing from the rank's files`);
    if (info.dtype !== t.dtype || JSON.stringify(info.shape) !== JSON.stringify(t.shape)) {
      throw new MoekitError('bad-input', `rank ${plan.dir}: tensor '${n}' is ${info.dtype}[${info.shape}], ${MANIFEST} says ${t.dtype}[${t.shape}]`);
    }
    const top = t.sha256;
    const own = rm?.tensors[n]?.sha256;
    if (top && own && top !== own) {
      throw new MoekitError(
        'checksum',
        `rank ${plan.dir}: tensor '${n}' has sha256 ${own.slice(0, 12)}… in ${RANK_MANIFEST} but ${top.slice(0, 12)}… in ${MANIFEST}`,
      );
    }
    const h = top ?? own;
    if (!h) throw new MoekitError('bad-input', `rank ${plan.dir}: no checksum for '${n}' (no ${RANK_MANIFEST}: did its shard job finish?)`);
    sha.set(n, h);
  }
  if (ck.tensors.size !== want.length) {
    const extra = ck.names().find((n) => !(n in plan.tensors));
    throw new MoekitError('bad-input', `rank ${plan.dir}: tensor '${extra}' is not in ${MANIFEST}`);
  }
  return sha;
}

/** A rank's moekit.json must agree with the manifest; its IR must hold the planned experts. */
async function rankIR(ck: TensorStore, plan: RankPlan, manifest: ShardManifest, spec: LayoutSpec): Promise<{ ir: ModelIR; scaled?: ScaledIR }> {
  const meta = await loadMeta(ck);
  const mk = meta.moekit;
  if (mk?.layout !== manifest.layout)
    throw new MoekitError('bad-input', `rank ${plan.dir}: moekit.json says layout '${mk?.layout}', ${MANIFEST} says '${manifest.layout}'`);
  for (const [what, mine, top] of [
    ['gate/up order', mk.gateUp, manifest.gateUp],
    ['family', mk.family, manifest.source.family],
    ['source layout', mk.source.layout, manifest.source.layout],
  ] as const) {
    if (mine !== top)
      throw new MoekitError('bad-input', `rank ${plan.dir}: moekit.json says ${what} '${mine}', ${MANIFEST} says '${top}'; one of them was edited`);
  }
  const q = quantizedTensors(ck);
  const scaled = q ? await openScaled(ck, q, spec, meta, mk.gateUp, 'hf') : undefined;
  const ir = scaled?.weights ?? readIR(ck, spec, meta);
  for (const l of ir.layers) {
    if (JSON.stringify(l.globalIds) !== JSON.stringify(plan.experts)) {
      throw new MoekitError(
        'bad-input',
        `rank ${plan.dir}: layer ${l.layer} holds global experts [${l.globalIds.join(',')}] but ${MANIFEST} says [${plan.experts.join(',')}]`,
      );
    }
  }
  return { ir, scaled };
}

/** Open one rank folder and check it against the manifest. */
async function openRank(
  root: string,
  manifest: ShardManifest,
  plan: RankPlan,
  spec: LayoutSpec,
  opened: TensorStore[],
  dequantize: boolean,
): Promise<OpenRank> {
  const dir = join(root, plan.dir);
  if (!(await stat(dir).catch(() => undefined))?.isDirectory()) {
    throw new MoekitError(
      'bad-input',
      `missing rank ${plan.dir}: ${dir} does not exist; re-run its job (moekit shard <src> --ep ${manifest.ep}${manifest.etp > 1 ? ` --etp ${manifest.etp}` : ''} --rank ${plan.index} -o ${root})`,
    );
  }
  const ck = await openStore(dir);
  opened.push(ck);
  const rm = await readRankManifest(dir, manifest);
  if (rm && (JSON.stringify(rm.experts) !== JSON.stringify(plan.experts) || rm.dir !== plan.dir)) {
    throw new MoekitError(
      'bad-input',
      `${join(dir, RANK_MANIFEST)}: rank ${plan.dir} holds experts [${rm.experts.join(',')}] but ${MANIFEST} says [${plan.experts.join(',')}]; the rank belongs to another sharding`,
    );
  }
  const sha = rankChecksums(ck, plan, rm);
  const view = dequantize ? await dequantized(ck, 'F32') : ck;
  return { plan, ck, view, sha, ...(await rankIR(view, plan, manifest, spec)) };
}

/** Open every rank of a sharded checkpoint and build the merged IR (`dequantize`: quantized ranks read as f32, for verify). */
export async function openSharded(root: string, opts: { dequantize?: boolean } = {}): Promise<Sharded> {
  const manifest = await readManifest(root);
  if (!manifest) throw new MoekitError('bad-input', `${root}: no ${MANIFEST} (not a sharded checkpoint written by moekit shard)`);
  const where = join(root, MANIFEST);
  checkCoverage(manifest, where);
  const spec = layoutOf(manifest.layout)!;
  const sourceSpec = layoutOf(manifest.source.layout)!;
  const opened: TensorStore[] = [];
  try {
    const ranks: OpenRank[] = [];
    for (const plan of [...manifest.ranks].sort((a, b) => a.index - b.index))
      ranks.push(await openRank(root, manifest, plan, spec, opened, opts.dequantize === true));
    const meta: ModelMeta = {
      family: manifest.source.family,
      modelType: manifest.source.modelType,
      routing: ranks[0]!.ir.routing,
      activation: ranks[0]!.ir.activation,
      config: manifest.source.config,
    };
    const ir = mergedIR(manifest, ranks, (r) => r.ir);
    // dequant reads whole checkpoints: a refusal's hint names the merged copy
    const src = `<the moekit merge of ${root}>`;
    return {
      root,
      manifest,
      ranks,
      ir,
      ...(ranks[0]!.scaled ? { scaled: { weights: ir, scales: mergedScales(manifest, ranks), block: ranks[0]!.scaled.block, src } } : {}),
      reader: ranks[0]!.ck,
      sourceSpec,
      meta,
      close: async () => {
        await Promise.all(ranks.map((r) => r.ck.close()));
      },
    };
  } catch (e) {
    await Promise.all(opened.map((c) => c.close()));
    throw e;
  }
}

/**
 * The merged IR. With ETP 1 every expert field is a plain view of the rank file that holds it (so
 * merge streams raw byte ranges). With ETP > 1 a field is a lazy view that concatenates its I
 * slices from the ETP ranks: gate/up (and their biases) along rows, down along columns; the down
 * bias comes from ETP rank 0.
 */
function mergedIR(m: ShardManifest, ranks: OpenRank[], irOf: (r: OpenRank) => ModelIR, unit = 1): ModelIR {
  const E = m.source.numExperts;
  const base = ranks.find((r) => r.plan.dense && r.plan.index === 0) ?? ranks[0]!;
  const layers: LayerIR[] = irOf(base).layers.map((bl) => {
    const experts: ExpertIR[] = [];
    for (let g = 0; g < E; g++) {
      // the slices of expert g, in I order
      const parts = ranks
        .map((r) => {
          const j = r.plan.experts.indexOf(g);
          if (j < 0) return undefined;
          const l = irOf(r).layers.find((x) => x.layer === bl.layer);
          if (!l) throw new MoekitError('bad-input', `rank ${r.plan.dir} has no MoE layer ${bl.layer} (rank ${base.plan.dir} has)`);
          return { r, ex: l.experts[j]!, a: r.plan.intermediate[0] / unit, b: r.plan.intermediate[1] / unit };
        })
        .filter((x) => x !== undefined)
        .sort((x, y) => x.a - y.a);
      if (parts.length === 1) {
        experts.push(parts[0]!.ex);
        continue;
      }
      const I = parts[parts.length - 1]!.b;
      const out: Partial<ExpertIR> = {};
      for (const f of EXPERT_FIELDS) {
        const v0 = parts[0]!.ex[f];
        if (!v0) continue;
        if (f === 'down_bias') {
          out.down_bias = v0;
          continue;
        }
        const fieldParts = parts.map((p, i) => {
          const v = p.ex[f as ExpertField];
          if (!v) throw new MoekitError('bad-input', `expert ${g} of layer ${bl.layer}: rank ${p.r.plan.dir} has no ${f} slice`);
          if (p.a !== (i === 0 ? 0 : parts[i - 1]!.b))
            throw new MoekitError(
              'bad-input',
              `expert ${g} of layer ${bl.layer}: the expert-TP slices of the ranks do not tile 0..${I} (rank ${p.r.plan.dir} starts at ${p.a})`,
            );
          return v;
        });
        out[f] = concatView(fieldParts, f === 'down' ? 1 : 0);
      }
      experts.push(out as ExpertIR);
    }
    return { ...bl, experts, globalIds: experts.map((_, i) => i) };
  });
  return { ...irOf(base), layers };
}

/** The merged scale grids of block-FP8 ranks (I slices counted in blocks); every rank must be quantized alike. */
function mergedScales(m: ShardManifest, ranks: OpenRank[]): ModelIR {
  const block = ranks[0]!.scaled!.block;
  const odd = ranks.find((r) => r.scaled?.block !== block);
  if (odd)
    throw new MoekitError(
      'bad-input',
      `rank ${odd.plan.dir} is ${odd.scaled ? `in ${odd.scaled.block}-blocks` : 'not block-FP8'}, rank ${ranks[0]!.plan.dir} in ${block}-blocks`,
    );
  return mergedIR(m, ranks, (r) => r.scaled!.scales, block);
}

/** Hash every tensor of every rank (worker threads read the files) and compare with the manifest; throws the first mismatch. */
export async function verifyChecksums(sh: Sharded): Promise<void> {
  const pool = new HashPool();
  try {
    const tasks: Promise<void>[] = [];
    for (const r of sh.ranks) {
      for (const info of r.ck.tensors.values()) {
        tasks.push(
          pool.tensor(r.ck, info).then((got) => {
            const want = r.sha.get(info.name)!;
            if (got !== want) {
              throw new MoekitError(
                'checksum',
                `checksum mismatch in rank ${r.plan.dir}: tensor '${info.name}' (${relative(sh.root, info.file ?? r.ck.dir)}) has sha256 ${got.slice(0, 12)}…, the manifest says ${want.slice(0, 12)}…; the rank is corrupt, re-run its shard job`,
              );
            }
          }),
        );
      }
    }
    const res = await Promise.allSettled(tasks);
    const bad = res.find((x) => x.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
  } finally {
    await pool.close();
  }
}
