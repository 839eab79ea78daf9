/**
 * Megatron's legacy `torch` checkpoint format (`iter_N/mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt`,
 * one torch.save per rank) presented in the stacked torch_dist form `megatron.ts` maps to HF:
 * per-layer tensors of every pipeline stage stacked on the layer axis (local layer numbers made
 * global), each expert-parallel rank's local experts placed at their global ids.
 *
 * Which number of the folder name is which rank follows from the sizes in the `args` inside
 * (a single suffix is the pipeline rank when PP > 1, else the expert rank), never from the name
 * alone. Sources: Megatron-LM `megatron/training/checkpointing.py` (`get_checkpoint_name`:
 * `mp_rank_{tp:02d}`, `_{pp:03d}` when PP > 1, `_{ep:03d}` when EP > 1), `moe/experts.py`
 * (SequentialMLP `local_experts.<j>` = global expert ep_rank · E/EP + j); the fixtures
 * `fixtures/torch/mcore_legacy_*` (EP 1 and 2, written by Megatron-Core 0.20). Not confirmed on a
 * checkpoint: the local layer numbering of PP > 1 (taken as stage · L/PP + local); TP > 1 is
 * refused (its slices would need joining along Megatron's parallel dims).
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MoekitError } from '../../errors.js';
import { type Dtype, dtypeSize, numel } from '../dtypes.js';
import type { TensorInfo } from '../types.js';
import { type Piece, restrict } from './gather.js';
import type { StackedSource } from './megatron.js';
import { type Py, PyDict, PyObj } from './pickle.js';
import { type ReadOptions, TorchSaveStore } from './torch-save.js';

interface Member {
  store: TorchSaveStore;
  name: string;
}
interface Stacked extends TensorInfo {
  /** leading slot dims: [L] or [L, E] */
  slots: number[];
  members: Map<string, Member>;
}

const argOf = (args: Py | undefined, name: string): Py | undefined =>
  args instanceof PyObj ? args.field(name) : args instanceof PyDict ? args.get(name) : undefined;
const sizeOf = (args: Py | undefined, name: string): number => {
  const v = argOf(args, name);
  return typeof v === 'number' && v >= 1 ? v : 1;
};

class LegacySource implements StackedSource {
  readonly tensors = new Map<string, Stacked>();
  constructor(readonly stores: TorchSaveStore[]) {}
  get files(): string[] {
    return this.stores.flatMap((s) => s.files);
  }
  has(key: string): boolean {
    return this.tensors.has(key);
  }
  info(key: string): TensorInfo {
    const t = this.tensors.get(key);
    if (!t) throw new MoekitError('bad-input', `no tensor '${key}' in the legacy Megatron checkpoint`);
    return t;
  }
  place(key: string, slots: number[], slot: number[], m: Member, where: string): void {
    const inner = m.store.info(m.name);
    let t = this.tensors.get(key);
    if (!t) {
      const shape = [...slots, ...inner.shape];
      t = { name: key, dtype: inner.dtype, shape, nbytes: numel(shape) * dtypeSize(inner.dtype as Dtype), slots, members: new Map() };
      this.tensors.set(key, t);
    }
    if (t.dtype !== inner.dtype || t.shape.slice(slots.length).join() !== inner.shape.join())
      throw new MoekitError(
        'bad-input',
        `${where}: '${m.name}' is ${inner.dtype} [${inner.shape}], other ranks hold ${t.dtype} [${t.shape.slice(slots.length)}]`,
      );
    const k = slot.join();
    if (t.members.has(k)) throw new MoekitError('bad-input', `${where}: '${key}' at [${k}] is held by two rank files`);
    t.members.set(k, m);
  }
  async boxPieces(key: string, at: readonly number[], shape: readonly number[]): Promise<Piece[]> {
    const t = this.tensors.get(key)!;
    const n = t.slots.length;
    const out: Piece[] = [];
    const visit = (d: number, slot: number[]): void => {
      if (d === n) {
        const m = t.members.get(slot.join())!;
        const p = m.store.piece(m.name);
        const placed = {
          at: [...slot, ...p.at],
          shape: [...slot.map(() => 1), ...p.shape],
          strides: [...slot.map(() => 0), ...p.strides],
          base: p.base,
          read: p.read,
        };
        const r = restrict(placed, at, shape);
        if (r) out.push(r);
        return;
      }
      for (let i = at[d]!; i < at[d]! + shape[d]!; i++) visit(d + 1, [...slot, i]);
    };
    visit(0, []);
    return out;
  }
  async close(): Promise<void> {
    await Promise.all(this.stores.map((s) => s.close()));
  }
}

/** rank folders → (tp, pp, ep), read with the sizes the args give */
function rankOf(name: string, tp: number, pp: number, ep: number, where: string): [number, number, number] {
  const m = /^mp_rank_(\d+)(?:_(\d+))?(?:_(\d+))?$/.exec(name);
  if (!m) throw new MoekitError('bad-input', `${where}: '${name}' is not a Megatron rank folder name`);
  const extra = [m[2], m[3]].filter((x) => x !== undefined).map(Number);
  const want = (pp > 1 ? 1 : 0) + (ep > 1 ? 1 : 0);
  if (extra.length !== want)
    throw new MoekitError(
      'bad-input',
      `${where}: folder ${name} does not fit the args (TP ${tp}, PP ${pp}, EP ${ep} name folders mp_rank_TT${pp > 1 ? '_PPP' : ''}${ep > 1 ? '_EEE' : ''})`,
    );
  const r: [number, number, number] = [Number(m[1]), pp > 1 ? extra[0]! : 0, ep > 1 ? extra[want - 1]! : 0];
  if (r[0] >= tp || r[1] >= pp || r[2] >= ep)
    throw new MoekitError('bad-input', `${where}: folder ${name} names a rank outside TP ${tp} × PP ${pp} × EP ${ep}`);
  return r;
}

const LAYER = /^decoder\.layers\.(\d+)\.(.+)$/;
const EXPERT = /^mlp\.experts\.local_experts\.(\d+)\.(.+)$/;

/** Open the rank files of one iteration folder as a stacked source, with the run's args. */
export async function openLegacy(iterDir: string, opts: ReadOptions): Promise<{ source: StackedSource; args: PyObj | PyDict }> {
  const dirs = (await readdir(iterDir)).filter((n) => /^mp_rank_/.test(n)).sort();
  const stores: TorchSaveStore[] = [];
  const src = new LegacySource(stores);
  try {
    for (const d of dirs) {
      const f = join(iterDir, d, 'model_optim_rng.pt');
      if (!(await stat(f).catch(() => undefined))?.isFile()) throw new MoekitError('bad-input', `${iterDir}: ${d}/ has no model_optim_rng.pt`);
      stores.push(await TorchSaveStore.open(f, opts));
    }
    const args = argOf(stores[0]!.roots.get(stores[0]!.files[0]!), 'args');
    if (!(args instanceof PyObj || args instanceof PyDict))
      throw new MoekitError('bad-input', `${stores[0]!.files[0]}: no args in the checkpoint to tell the ranks apart`);
    const [tp, pp, ep] = ['tensor_model_parallel_size', 'pipeline_model_parallel_size', 'expert_model_parallel_size'].map((k) => sizeOf(args, k)) as [
      number,
      number,
      number,
    ];
    if (tp > 1)
      throw new MoekitError(
        'unsupported',
        `${iterDir}: tensor parallel size ${tp}; moekit reads legacy Megatron checkpoints with TP 1 (save with --ckpt-format torch_dist, which it reads at any TP)`,
      );
    if (dirs.length !== tp * pp * ep)
      throw new MoekitError('bad-input', `${iterDir}: ${dirs.length} rank folders, the args say TP ${tp} × PP ${pp} × EP ${ep} = ${tp * pp * ep}`);
    const L = sizeOf(args, 'num_layers');
    const E = sizeOf(args, 'num_experts');
    for (let i = 0; i < dirs.length; i++) place(src, stores[i]!, rankOf(dirs[i]!, tp, pp, ep, iterDir), { L, E, pp, ep }, join(iterDir, dirs[i]!));
    for (const t of src.tensors.values()) {
      const want = t.slots.reduce((a, b) => a * b, 1);
      if (t.members.size !== want)
        throw new MoekitError(
          'bad-input',
          `${iterDir}: '${t.name}' is held for ${t.members.size} of its ${want} ${t.slots.length === 2 ? '(layer, expert)' : 'layer'} slots: a rank file is missing`,
        );
    }
    return { source: src, args };
  } catch (e) {
    await src.close();
    throw e;
  }
}

function place(
  src: LegacySource,
  store: TorchSaveStore,
  [, pr, er]: [number, number, number],
  g: { L: number; E: number; pp: number; ep: number },
  where: string,
): void {
  const perStage = g.L / g.pp;
  const perRank = g.E / g.ep;
  for (const name of store.names()) {
    if (/\.experts\.weight[12]$/.test(name))
      throw new MoekitError(
        'unsupported',
        `${where}: legacy GroupedMLP experts (${name}); moekit reads SequentialMLP experts (local_experts.<j>) from legacy files`,
      );
    const m = LAYER.exec(name);
    if (!m) {
      // embeddings on the first stage, final norm and output layer on the last; replicated across EP ranks
      if (er === 0) src.place(name, [], [], { store, name }, where);
      continue;
    }
    const layer = pr * perStage + Number(m[1]);
    const x = EXPERT.exec(m[2]!);
    if (x) src.place(`decoder.layers.mlp.experts.experts.${x[2]}`, [g.L, g.E], [layer, er * perRank + Number(x[1])], { store, name }, where);
    else if (er === 0) src.place(`decoder.layers.${m[2]}`, [g.L], [layer], { store, name }, where);
  }
}
