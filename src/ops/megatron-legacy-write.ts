/**
 * `--to megatron --format torch [--ep N]`: an HF MoE checkpoint written in Megatron's legacy
 * `torch` format, one `iter_0000001/mp_rank_00[_EEE]/model_optim_rng.pt` per expert-parallel rank:
 * a torch.save of `{args, checkpoint_version, iteration, model}` whose `model` is the per-layer
 * state dict Megatron-Core's `state_dict_for_save_checkpoint` gives (local layer numbers, each
 * rank's experts as `local_experts.0..E/N-1`, `_extra_state` entries of the linear layers), so
 * `load_state_dict` of the matching GPTModel on each rank takes it as is. Every tensor is a
 * concatenation of row ranges of HF tensors (megatron-map.ts), streamed into its storage.
 *
 * Sources: Megatron-LM `megatron/training/checkpointing.py` (`get_checkpoint_name`, the saved
 * dict), `megatron/core/transformer/moe/experts.py` (SequentialMLP local experts);
 * fixtures/torch/mcore_legacy_* (the keys Megatron-Core 0.20 writes).
 */
import { mkdir, open } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { MoekitError } from '../errors.js';
import { chunkBytes } from '../store/pool.js';
import { openStore } from '../store/registry.js';
import type { TensorStore } from '../store/types.js';
import { FileSink, tensorRef, writeTorchSave } from '../store/torch/dcp-writer.js';
import { EXPERT_KEYS, hfEntries, KEYS, type KeyName, type MegatronDims, type Part } from '../store/torch/megatron-map.js';
import { type PyOut, py } from '../store/torch/pickler.js';
import { peakRssMB, withOutput } from '../output/transaction.js';
import { argsOf, hfRows, megatronRoot, megatronSource } from './megatron-write.js';
import type { WriteOptions } from './options.js';

export interface LegacyWriteSummary {
  source: string;
  destination: string;
  family: string;
  format: 'torch';
  ep: number;
  ranks: string[];
  tensors: number;
  bytes: number;
  seconds: number;
  peakRssMB: number;
  dryRun?: true;
}

/** the legacy (module) names of the norms; every other key keeps its torch_dist name */
const legacyKey = (k: KeyName): string => (k === 'inputNorm' || k === 'preMlpNorm' ? KEYS[k][1] : KEYS[k][0]);

interface LegacyTensor {
  name: string;
  shape: number[];
  /** HF tensors' byte ranges, in row order */
  pieces: { hf: string; start: number; end: number }[];
}

/** The legacy state dict of every rank: per (stacked key, slot) one tensor, its rows from the HF tensors. */
function legacyTensors(store: TensorStore, d: MegatronDims, ep: number): LegacyTensor[][] {
  const groups = new Map<string, { name: string; rank: number; n: number; rows: { r0: number; hf: string; start: number; end: number }[]; rest: number[] }>();
  const perRank = d.E / ep;
  for (const e of hfEntries(d, legacyKey)) {
    if (e.parts.length === 0) continue;
    const { rowBytes } = hfRows(store, e, d);
    for (const p of e.parts) {
      const { name, rank } = legacyName(p, perRank);
      const id = `${rank}|${name}`;
      let g = groups.get(id);
      if (!g) groups.set(id, (g = { name, rank, n: 0, rows: [], rest: e.rest }));
      g.n += p.rows;
      g.rows.push({ r0: p.r0, hf: e.name, start: p.rowAt * rowBytes, end: (p.rowAt + p.rows) * rowBytes });
    }
  }
  const ranks: LegacyTensor[][] = Array.from({ length: ep }, () => []);
  for (const g of groups.values()) {
    g.rows.sort((a, b) => a.r0 - b.r0);
    const t = { name: g.name, shape: [g.n, ...g.rest], pieces: g.rows.map(({ hf, start, end }) => ({ hf, start, end })) };
    for (let r = 0; r < ep; r++) if (g.rank === -1 || g.rank === r) ranks[r]!.push(t);
  }
  return ranks;
}

/** a stacked key at its slot → the legacy name, and the EP rank holding it (-1: every rank) */
function legacyName(p: Part, perRank: number): { name: string; rank: number } {
  if (p.expert !== undefined && p.key.startsWith(EXPERT_KEYS)) {
    const [l, e] = [p.layer!, p.expert];
    return { name: `decoder.layers.${l}.mlp.experts.local_experts.${e % perRank}.${p.key.slice(EXPERT_KEYS.length)}`, rank: Math.floor(e / perRank) };
  }
  if (p.prefix.length === 1) return { name: p.key.replace(/^decoder\.layers\./, `decoder.layers.${p.prefix[0]}.`), rank: -1 };
  return { name: p.key, rank: -1 };
}

/** The `model` dict of one rank: tensors (storages in order) and None `_extra_state` for each linear weight. */
function modelDict(tensors: LegacyTensor[], store: TensorStore): PyOut {
  const entries: [PyOut, PyOut][] = [];
  tensors.forEach((t, i) => {
    entries.push([t.name, tensorRef(String(i), store.info(t.pieces[0]!.hf).dtype, t.shape)]);
    if (/linear_(qkv|proj|fc1|fc2)\.weight$|^output_layer\.weight$/.test(t.name)) entries.push([t.name.replace(/\.weight$/, '._extra_state'), null]);
  });
  return py.odict(entries);
}

export async function writeMegatronLegacy(src: string, dst: string, opts: WriteOptions & { ep?: number }): Promise<LegacyWriteSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const ep = opts.ep ?? 1;
  const store = await openStore(src);
  try {
    const { config, family, d } = await megatronSource(store, src, 'torch');
    if (d.perLayer)
      throw new MoekitError('unsupported', `${src}: --format torch (legacy) writes models whose layers are all alike; write ${family} as --format torch_dist`);
    if (d.E % ep !== 0) throw new MoekitError('usage', `--ep ${ep} does not divide the ${d.E} experts`);
    const ranks = legacyTensors(store, d, ep);
    const dtype = store.info('model.embed_tokens.weight').dtype;
    const args = argsOf(d, config, dtype, 1, { expert_model_parallel_size: ep, ckpt_format: 'torch', world_size: ep, data_parallel_size: ep });
    const names = ranks.map((_, r) => (ep === 1 ? 'mp_rank_00' : `mp_rank_00_${String(r).padStart(3, '0')}`));
    const bytes = ranks.flat().reduce((a, t) => a + t.pieces.reduce((b, p) => b + p.end - p.start, 0), 0);
    const base = { source: src, destination: dst, family, format: 'torch' as const, ep, ranks: names, tensors: ranks.flat().length };
    if (opts.dryRun) return { ...base, bytes, seconds: 0, peakRssMB: peakRssMB(), dryRun: true };
    let done = 0;
    await withOutput(dst, { force: opts.force, sources: [store.dir, ...store.files] }, async (tmp) => {
      for (let r = 0; r < ep; r++) {
        const dir = join(tmp, 'iter_0000001', names[r]!);
        await mkdir(dir, { recursive: true });
        const fh = await open(join(dir, 'model_optim_rng.pt'), 'w');
        try {
          const value = py.obj({
            args,
            checkpoint_version: py.float(3),
            iteration: 1,
            model: modelDict(ranks[r]!, store),
            num_floating_point_operations_so_far: 0,
          });
          const storages = ranks[r]!.map((t) =>
            (async function* () {
              for (const p of t.pieces)
                for await (const b of chunkBytes(store.chunks(p.hf, undefined, 2, p.start, p.end))) {
                  yield b;
                  opts.onProgress?.((done += b.length), bytes);
                }
            })(),
          );
          await writeTorchSave(new FileSink(fh), value, storages, 'model_optim_rng');
          if (opts.fsync) await fh.sync();
        } finally {
          await fh.close();
        }
      }
      await megatronRoot(tmp, 1, config);
    });
    return { ...base, bytes, seconds: (Date.now() - t0) / 1000, peakRssMB: peakRssMB() };
  } finally {
    await store.close();
  }
}
