/**
 * `moekit merge <rank0> <rank1> …`: expert-parallel rank files that no moekit manifest describes,
 * as frameworks without save code of their own leave them (flashfusemoe's `shard_experts` slices
 * `w_up` / `w_down` to the rank's experts, and each rank's `torch.save(state_dict())` keeps the same
 * keys with its experts renumbered from 0; ../shared/reference/sources/flashfusemoe-moelayer.md).
 * Given in rank order, rank r holds experts [r·E/N, (r+1)·E/N) (contiguous, as Megatron and
 * flashfusemoe place them) or e ≡ r mod N (`--placement round-robin`).
 *
 * What a wrong set of files would silently get wrong is refused instead (the mistake behind
 * KempnerForge #202, EP files loaded at another EP size): N files × E/N experts must be the E the
 * router scores, every file must hold the same tensor names, and every tensor outside the experts
 * (router, attention, norms, embeddings) must be byte-identical on every rank.
 */
import { resolve } from 'node:path';
import { MoekitError } from '../../errors.js';
import { HashPool } from '../../engine/hash-pool.js';
import { type ExpertIR, type LayerIR, layerDims, type ModelIR, type View } from '../../engine/ir.js';
import { planTensors } from '../../engine/plan.js';
import { detectStoreLayout, loadMeta, readIR, resolveTarget } from '../../engine/read.js';
import { openStore } from '../../store/registry.js';
import type { TensorStore } from '../../store/types.js';
import { type MergeOptions, type MergeSummary, writeMerged } from './merge.js';
import { placeExperts, type Placement } from './placement.js';
import { gateUpFor } from './shard.js';

export interface RankFilesOptions extends MergeOptions {
  placement?: Placement;
}

/** The source tensors the experts of an IR are views of. */
function expertTensors(ir: ModelIR): Set<string> {
  const names = new Set<string>();
  const add = (v: View | undefined) => {
    if (v?.storage.kind === 'tensor') names.add(v.storage.info.name);
  };
  for (const l of ir.layers) for (const e of l.experts) for (const v of Object.values(e) as View[]) add(v);
  return names;
}

/** Every rank holds the same names, and the same bytes outside the experts (sha256 in worker threads). */
async function checkReplicas(stores: TensorStore[], experts: Set<string>, paths: string[]): Promise<void> {
  const names = stores[0]!.names().sort();
  for (const [r, s] of stores.entries()) {
    const odd = s.names().find((n) => !stores[0]!.has(n)) ?? names.find((n) => !s.has(n));
    if (odd !== undefined)
      throw new MoekitError('bad-input', `${paths[r]} and ${paths[0]} differ in tensor '${odd}': the files are not expert-parallel ranks of one model`);
  }
  const pool = new HashPool();
  try {
    for (const n of names.filter((x) => !experts.has(x))) {
      const i0 = stores[0]!.info(n);
      const want = await pool.tensor(stores[0]!, i0);
      for (const [r, s] of stores.entries()) {
        if (r === 0) continue;
        const i = s.info(n);
        if (i.dtype !== i0.dtype || `${i.shape}` !== `${i0.shape}` || (await pool.tensor(s, i)) !== want)
          throw new MoekitError(
            'bad-input',
            `'${n}' differs between ${paths[0]} and ${paths[r]}: tensors outside the experts are the same on every EP rank of one model (a rank of another run or step?)`,
          );
      }
    }
  } finally {
    await pool.close();
  }
}

/** The whole model: each rank's experts at their global ids, everything else from rank 0. */
function mergedFromRanks(irs: ModelIR[], placement: Placement, paths: string[]): ModelIR {
  const N = irs.length;
  const layers: LayerIR[] = irs[0]!.layers.map((l0) => {
    const d = layerDims(l0);
    if (N * d.E !== d.Er)
      throw new MoekitError(
        'bad-input',
        `layer ${l0.layer}: ${N} rank files × ${d.E} experts = ${N * d.E}, but the router scores ${d.Er}: give every EP rank's file in rank order (these hold experts of an EP ${d.Er % d.E === 0 ? d.Er / d.E : '?'} sharding)`,
      );
    const experts: ExpertIR[] = new Array(d.Er);
    for (const { rank, global } of placeExperts(d.Er, N, placement)) {
      const l = irs[rank]!.layers.find((x) => x.layer === l0.layer);
      if (!l || l.experts.length !== d.E)
        throw new MoekitError('bad-input', `${paths[rank]} has no MoE layer ${l0.layer} of ${d.E} experts, as ${paths[0]} has`);
      global.forEach((g, j) => {
        experts[g] = l.experts[j]!;
      });
    }
    return { ...l0, experts, globalIds: experts.map((_, i) => i) };
  });
  return { ...irs[0]!, layers };
}

export async function mergeRankFiles(paths: string[], dst: string, opts: RankFilesOptions = {}): Promise<MergeSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const stores: TensorStore[] = [];
  try {
    for (const p of paths) stores.push(await openStore(p));
    const meta = await loadMeta(stores[0]!);
    const spec = detectStoreLayout(stores[0]!, meta);
    if (!spec)
      throw new MoekitError('unsupported', `${paths[0]}: no expert tensors of any layout moekit knows (MoE blocks under your own module path: --block-prefix)`);
    const irs = stores.map((s) => readIR(s, spec, meta, { localExperts: true }));
    const ir = mergedFromRanks(irs, opts.placement ?? 'contiguous', paths);
    await checkReplicas(stores, new Set(irs.flatMap((x) => [...expertTensors(x)])), paths);
    const target = opts.to ? resolveTarget(opts.to, meta, spec) : spec;
    const tp = planTensors(ir, target, { gateUp: gateUpFor(target, spec.id, meta.moekit?.gateUp ?? spec.gateUp?.default ?? 'separate') });
    return await writeMerged(
      {
        ir,
        tp,
        sourceLayout: spec.id,
        family: meta.family,
        config: meta.config,
        metadata: stores[0]!.metadata,
        sideDir: stores[0]!.dir,
        source: paths.join(' '),
        sources: paths.map((p) => resolve(p)),
        ranks: paths.length,
        t0,
      },
      dst,
      opts,
    );
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
}
