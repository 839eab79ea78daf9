/**
 * Megatron-Core `torch_dist` checkpoints seen as an HF model: a TensorStore whose tensors carry
 * HF names (embeddings, norms, q/k/v, o_proj, router, experts, shared experts) and whose bytes are
 * boxes of Megatron's stacked tensors (layers on axis 0, experts on axis 1), read straight from
 * the DCP chunks. Nothing is materialised beyond the range asked for, so every moekit command
 * (inspect, convert, shard, verify) reads a Megatron checkpoint as it reads an HF folder.
 *
 * Sources: Megatron-LM `megatron/core/transformer/transformer_layer.py` and `moe/experts.py`
 * (sharded_state_dict: layer and expert axes, SwiGLU fc1 halves), `attention.py` (linear_qkv rows
 * per query group: q_per_group·head_dim q rows, then head_dim k rows, then head_dim v rows),
 * `megatron/training/checkpointing.py` (tracker file, `iter_%07d`, args in the common state);
 * transformers `modeling_mixtral.py`, `modeling_qwen2_moe.py`, `modeling_qwen3_moe.py` (HF names);
 * `../shared/fixtures/torch/mcore_torch_dist_plain` (keys.json: the mapping as checked against
 * transformers). Assumption not confirmed on a checkpoint: TEGroupedMLP saves its experts under
 * the same `mlp.experts.experts.linear_fc{1,2}.weight` keys as SequentialMLP.
 */
import { readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { MoekitError } from '../../errors.js';
import { type Dtype, dtypeSize, numel } from '../dtypes.js';
import { readHfConfig, readJsonIfExists, readSmallFile } from '../json.js';
import { BaseStore } from '../base.js';
import type { TensorInfo, TensorStore } from '../types.js';
import { DcpStore } from './dcp.js';
import { openLegacy } from './megatron-legacy.js';
import { gather, type Piece } from './gather.js';
import { FAMILIES, groupScoreMismatch, hfEntries, KEYS, keyNames, type KeyName, type MegatronDims, type Part } from './megatron-map.js';
import { type Py, PyDict, PyObj } from './pickle.js';
import type { ReadOptions } from './torch-save.js';

/**
 * Megatron's tensors in torch_dist form, whatever the container: per-layer tensors stacked on a
 * leading layer axis (`decoder.layers.<name>` [L, …]), experts on the next one
 * (`decoder.layers.mlp.experts.experts.<name>` [L, E, …]). A DCP store is one as it stands; the
 * legacy per-rank files are presented as one (megatron-legacy.ts).
 */
export interface StackedSource {
  readonly files: readonly string[];
  has(key: string): boolean;
  info(key: string): TensorInfo;
  /** the pieces of `key` inside the box [at, at + shape), in the tensor's coordinates */
  boxPieces(key: string, at: readonly number[], shape: readonly number[]): Promise<Piece[]>;
  close(): Promise<void>;
}

interface HfTensor extends TensorInfo {
  /** row ranges of Megatron tensors stacked along dim 0; none: all zeros (megatron-map.ts) */
  parts: Part[];
}

export interface MegatronHints {
  /** the HF family to read the checkpoint as (default: config.json beside it, else what the args imply) */
  family?: string;
  /** an HF config.json to use instead of the one beside the checkpoint */
  hfConfig?: string;
}

/** The argparse Namespace of the run that wrote the checkpoint. */
class Args {
  constructor(
    private readonly ns: PyObj | PyDict,
    private readonly where: string,
  ) {}
  get(name: string): Py | undefined {
    return this.ns instanceof PyObj ? this.ns.field(name) : this.ns.get(name);
  }
  num(name: string, fallback?: number): number {
    const v = this.get(name);
    if (typeof v === 'number') return v;
    if ((v === undefined || v === null) && fallback !== undefined) return fallback;
    throw new MoekitError('bad-input', `${this.where}: the checkpoint's args have no number '${name}'`);
  }
  flag(name: string): boolean {
    return this.get(name) === true;
  }
}

const DTYPE_NAMES: Partial<Record<Dtype, string>> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };

export class MegatronStore extends BaseStore implements TensorStore {
  readonly format: string;
  readonly metadata: Record<string, string> = { format: 'pt' };
  private constructor(
    readonly dir: string,
    readonly dcp: StackedSource,
    readonly family: string,
    private readonly hfConfig: Record<string, unknown>,
    legacy: boolean,
  ) {
    super();
    this.format = legacy ? 'megatron-legacy' : 'megatron-torch_dist';
  }
  get files(): readonly string[] {
    return this.dcp.files;
  }

  /** Open a Megatron checkpoint folder (with latest_checkpointed_iteration.txt) or one `iter_N` folder of it. */
  static async open(path: string, opts: ReadOptions & MegatronHints = {}): Promise<MegatronStore> {
    const { root, iterDir } = await findIteration(resolve(path));
    const names = await readdir(iterDir);
    let src: StackedSource;
    let args: Args;
    if (names.some((n) => /^mp_rank_\d+/.test(n))) {
      const leg = await openLegacy(iterDir, opts);
      src = leg.source;
      args = new Args(leg.args, iterDir);
    } else {
      const mj = await readJsonIfExists(join(iterDir, 'metadata.json'));
      if (mj?.sharded_backend !== 'torch_dist')
        throw new MoekitError(
          'unsupported',
          `${iterDir}: a Megatron checkpoint with sharded_backend '${String(mj?.sharded_backend ?? 'none')}'; moekit reads torch_dist and the legacy torch format (re-save with --ckpt-format torch_dist)`,
        );
      const dcp = await DcpStore.open(iterDir, root, opts);
      src = dcp;
      args = await readArgs(dcp, iterDir).catch(async (e) => {
        await dcp.close();
        throw e;
      });
    }
    try {
      const given = opts.hfConfig ? await readHfConfig(opts.hfConfig) : await readJsonIfExists(join(root, 'config.json'));
      if (opts.family && !FAMILIES[opts.family])
        throw new MoekitError('usage', `--family ${opts.family}: Megatron checkpoints are read as ${Object.keys(FAMILIES).join(', ')}`);
      const family = opts.family ?? pickFamily(args, src, given, iterDir);
      if (FAMILIES[family]!.mla && !(src instanceof DcpStore))
        throw new MoekitError(
          'unsupported',
          `${iterDir}: a legacy (torch format) checkpoint of an MLA model; moekit reads MLA models from torch_dist so far (re-save with --ckpt-format torch_dist)`,
        );
      const st = new MegatronStore(root, src, family, given ?? {}, !(src instanceof DcpStore));
      st.build(args, iterDir);
      if (!given) Object.assign(st.hfConfig, deriveConfig(args, family, st.info('model.embed_tokens.weight').dtype, st.dims_!));
      return st;
    } catch (e) {
      await src.close();
      throw e;
    }
  }

  /** the model's sizes: the args for what they alone say, the stored tensors for the rest */
  private dims(args: Args, where: string): MegatronDims {
    const f = FAMILIES[this.family]!;
    const L = args.num('num_layers');
    // non-homogeneous layers (any moe_layer_freq list, MLA models): keys per layer, no layer axis
    const perLayer = this.dcp.has('decoder.layers.0.self_attention.linear_proj.weight');
    const moeLayers = perLayer ? range(L).filter((l) => this.dcp.has(`decoder.layers.${l}.mlp.router.weight`)) : range(L);
    const denseLayers = range(L).filter((l) => !moeLayers.includes(l));
    if (moeLayers.length === 0) throw new MoekitError('unsupported', `${where}: no layer has a router (mlp.router.weight): not an MoE model`);
    const m0 = moeLayers[0]!;
    const shape = (k: KeyName, l = m0) => {
      const n = (perLayer ? keyNames(k, l) : keyNames(k)).find((x) => this.dcp.has(x));
      return n === undefined ? undefined : this.dcp.info(n).shape;
    };
    const lead = perLayer ? 0 : 1;
    const fc1 = shape('fc1') ?? fail(where, perLayer ? keyNames('fc1', m0)[0]! : KEYS.fc1[0]);
    const heads = args.num('num_attention_heads');
    const shared = shape('sharedFc1');
    const lacks = (what: string) => new MoekitError('unsupported', `${where}: ${what}`);
    const d: MegatronDims = {
      family: this.family,
      L,
      E: fc1[lead]!,
      I: fc1[lead + 1]! / 2,
      H: args.num('hidden_size'),
      V: (shape('embedding') ?? fail(where, KEYS.embedding[0]))[0]!,
      heads,
      groups: args.flag('group_query_attention') ? args.num('num_query_groups') : heads,
      hd: args.num('kv_channels', args.num('hidden_size') / heads),
      Is: shared ? shared[lead]! / 2 : undefined,
      sharedGate: shape('sharedGate') !== undefined,
      output: shape('output') !== undefined,
      qkvBias: shape('qkvBias') !== undefined,
      // MLA's q_layernorm (the q LoRA norm) shares the name of Qwen3's per-head q norm
      qkNorm: !f.mla && shape('qNorm') !== undefined,
      perLayer,
      denseLayers,
      expertBias: shape('expertBias') !== undefined,
    };
    // multi-token-prediction layers (their keys are per layer whatever the decoder's are)
    let mtp = 0;
    while (this.dcp.has(`mtp.layers.${mtp}.eh_proj.weight`)) mtp++;
    if (mtp > 0 && !(f.mla && perLayer)) throw lacks(`${mtp} multi-token-prediction layer(s), which moekit maps for DeepSeek-V3 only`);
    d.mtp = mtp;
    if (denseLayers.length > 0) d.F = (shape('denseFc1', denseLayers[0]) ?? fail(where, keyNames('denseFc1', denseLayers[0])[0]!))[0]! / 2;
    if (f.mla) {
      const rq = shape('qDown');
      d.mla = {
        rq: rq ? rq[0]! : null,
        rkv: (shape('kvLoraNorm') ?? fail(where, keyNames('kvLoraNorm', m0)[0]!))[0]!,
        dn: args.num('qk_head_dim'),
        dr: args.num('qk_pos_emb_head_dim'),
        dv: args.num('v_head_dim'),
      };
    }
    // Megatron-LM #7576: with --moe-mlp-glu-interleave-size, fc1 holds gate and up in alternating row blocks, not as halves
    const glu = args.get('moe_mlp_glu_interleave_size');
    if (glu !== undefined && glu !== null && glu !== 0)
      throw lacks(
        `linear_fc1 is gate/up block-interleaved (moe_mlp_glu_interleave_size ${String(glu)}); moekit reads [gate; up] halves and will not guess the blocks`,
      );
    if (denseLayers.length > 0 && !f.mla)
      throw lacks(`dense layers ${denseLayers.join(', ')} beside MoE ones, which HF ${this.family} as moekit maps it has no place for (deepseek_v3 has)`);
    if (f.mla && denseLayers.some((l, i) => l !== i))
      throw lacks(`dense layers ${denseLayers.join(', ')}: HF DeepSeek-V3 can only have its first k layers dense (first_k_dense_replace)`);
    if (d.Is !== undefined && !f.shared)
      throw lacks(`the checkpoint has shared experts, which HF ${this.family} has no place for (pick a family that has: qwen2_moe, deepseek_v3)`);
    if (d.Is === undefined && f.shared) throw lacks(`HF ${this.family} has a shared expert, the checkpoint none`);
    if (!f.mla && d.qkNorm !== Boolean(f.qkNorm))
      throw lacks(`the checkpoint ${d.qkNorm ? 'has' : 'lacks'} q/k layernorms, HF ${this.family} ${f.qkNorm ? 'needs' : 'has no place for'} them`);
    if (f.mla && (d.Is ?? 0) % d.I !== 0) throw lacks(`a shared expert of ${d.Is} rows, not a whole number of ${d.I}-row experts (HF n_shared_experts)`);
    return d;
  }

  /** the stored name of key `k` (for layer `l` when keys are per layer): the first of its names present */
  private key(k: KeyName, l?: number, L?: number): string {
    const names = keyNames(k, l, L);
    return names.find((n) => this.dcp.has(n)) ?? names[0]!;
  }

  /** the sizes the store was built from */
  dims_?: MegatronDims;
  private build(args: Args, where: string): void {
    const d = this.dims(args, where);
    this.dims_ = d;
    const qkvDtype = this.dcp.has(KEYS.qkv[0]) ? this.dcp.info(KEYS.qkv[0]).dtype : 'F32';
    for (const e of hfEntries(d, (k, l) => this.key(k, l, d.L))) {
      const shape = [e.rows, ...e.rest];
      let dtype: Dtype = e.zeroDtype ?? qkvDtype;
      for (const part of e.parts) {
        if (!this.dcp.has(part.key)) fail(where, part.key);
        const g = this.dcp.info(part.key);
        dtype = g.dtype;
        const k = part.prefix.length;
        // every slab inside its tensor: no byte of the HF tensor left unread
        if (
          g.shape.length !== k + 1 + e.rest.length ||
          part.prefix.some((i, x) => i >= g.shape[x]!) ||
          part.r0 + part.rows > g.shape[k]! ||
          g.shape.slice(k + 1).join() !== e.rest.join()
        )
          throw new MoekitError(
            'bad-input',
            `${where}: ${part.key} [${g.shape}] does not hold ${e.name} as the args describe it (layers, experts or sizes disagree)`,
          );
      }
      const t: HfTensor = { name: e.name, dtype, shape, nbytes: numel(shape) * dtypeSize(dtype), parts: e.parts };
      this.tensors.set(e.name, t);
    }
  }

  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const { info, end: e, out } = this.range<HfTensor>(t, start, end, into);
    if (info.parts.length === 0) return out.fill(0);
    const pieces: Piece[] = [];
    for (const slab of info.parts) {
      const { rowAt } = slab;
      const g = this.dcp.info(slab.key).shape;
      const k = slab.prefix.length;
      const at = [...slab.prefix, slab.r0, ...g.slice(k + 1).map(() => 0)];
      const shape = [...slab.prefix.map(() => 1), slab.rows, ...g.slice(k + 1)];
      for (const p of await this.dcp.boxPieces(slab.key, at, shape))
        pieces.push({
          at: [rowAt + p.at[k]! - slab.r0, ...p.at.slice(k + 1)],
          shape: p.shape.slice(k),
          strides: p.strides.slice(k),
          base: p.base,
          read: p.read,
        });
    }
    return gather(info.shape, dtypeSize(info.dtype), pieces, start, e, out);
  }

  async config(): Promise<Record<string, unknown>> {
    return this.hfConfig;
  }
  override close(): Promise<void> {
    return this.dcp.close();
  }
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

function fail(where: string, key: string): never {
  throw new MoekitError('bad-input', `${where}: no '${key}' in the checkpoint (not a GPT model moekit maps, or written by an unknown Megatron version)`);
}

/** The checkpoint root and the iteration folder to read (the tracker file's, or the one given). */
async function findIteration(path: string): Promise<{ root: string; iterDir: string }> {
  const tracker = await readSmallFile(join(path, 'latest_checkpointed_iteration.txt'), 64);
  if (tracker === undefined) return { root: resolve(path, '..'), iterDir: path };
  const t = tracker.trim();
  let sub: string;
  if (t === 'release') sub = 'release';
  else if (/^\d{1,10}$/.test(t)) sub = `iter_${t.padStart(7, '0')}`;
  else throw new MoekitError('bad-input', `${path}/latest_checkpointed_iteration.txt: '${t.slice(0, 20)}' is neither an iteration number nor 'release'`);
  const names = await readdir(path);
  if (!names.includes(sub))
    throw new MoekitError(
      'bad-input',
      `${path}: latest_checkpointed_iteration.txt names ${sub}, which is not there (folders: ${names.filter((n) => n.startsWith('iter_')).join(', ') || 'none'})`,
    );
  return { root: path, iterDir: join(path, sub) };
}

/** args from the common state (Megatron-Core ≥ 0.13 keeps it as the bytes item common_state/…), or common.pt. */
async function readArgs(dcp: DcpStore, where: string): Promise<Args> {
  const key = [...dcp.objects.keys()].find((k) => k.startsWith('common_state/'));
  let common: Py | undefined;
  if (key) {
    common = await dcp.object(key);
    if (Array.isArray(common)) common = common[0];
  } else {
    throw new MoekitError('unsupported', `${where}: no common_state item (an older Megatron writes common.pt, which moekit does not read yet)`);
  }
  const ns = common instanceof PyDict ? common.get('args') : undefined;
  if (!(ns instanceof PyObj)) throw new MoekitError('bad-input', `${where}: the common state holds no argparse args to read the model's shape from`);
  return new Args(ns, where);
}

/** The HF family: the one config.json beside the checkpoint names, else what the args imply. */
function pickFamily(args: Args, dcp: StackedSource, given: Record<string, unknown> | undefined, where: string): string {
  const shared = dcp.has('decoder.layers.mlp.shared_experts.linear_fc1.weight') || dcp.has('decoder.layers.0.mlp.shared_experts.linear_fc1.weight');
  if (given) {
    const mt = String(given.model_type ?? '');
    if (!FAMILIES[mt])
      throw new MoekitError(
        'unsupported',
        `${where}: config.json beside it names model_type '${mt}'; moekit maps Megatron checkpoints to ${Object.keys(FAMILIES).join(', ')}`,
      );
    for (const [hf, mg] of [
      ['hidden_size', 'hidden_size'],
      ['num_hidden_layers', 'num_layers'],
    ] as const)
      if (given[hf] !== undefined && given[hf] !== args.num(mg))
        throw new MoekitError('bad-input', `${where}: config.json says ${hf} ${String(given[hf])}, the checkpoint's args ${args.num(mg)}`);
    if (Boolean(FAMILIES[mt]!.mla) !== args.flag('multi_latent_attention'))
      throw new MoekitError(
        'bad-input',
        `${where}: config.json names ${mt}, whose attention is ${FAMILIES[mt]!.mla ? '' : 'not '}multi-latent, and the checkpoint's args say multi_latent_attention ${args.flag('multi_latent_attention')}`,
      );
    return mt;
  }
  if (args.flag('multi_latent_attention')) {
    const score = args.get('moe_router_score_function');
    if (score !== 'sigmoid')
      throw new MoekitError(
        'unsupported',
        `${where}: multi-latent attention with a ${String(score ?? 'softmax')} router; moekit maps MLA checkpoints to HF deepseek_v3, whose router is sigmoid (give a config.json to name another family)`,
      );
    return 'deepseek_v3';
  }
  if (args.get('moe_router_score_function') !== undefined && args.get('moe_router_score_function') !== 'softmax')
    throw new MoekitError(
      'unsupported',
      `${where}: a ${String(args.get('moe_router_score_function'))} router; moekit maps Megatron's softmax routers to HF families so far (give a config.json to name one)`,
    );
  const freq = args.get('moe_layer_freq');
  if (freq !== undefined && freq !== null && freq !== 1 && !(Array.isArray(freq) && freq.every((x) => x === 1)))
    throw new MoekitError(
      'unsupported',
      `${where}: MoE only in some layers (moe_layer_freq ${String(freq)}); moekit maps Megatron checkpoints whose every layer is MoE so far`,
    );
  if (shared) return 'qwen2_moe';
  if (args.flag('qk_layernorm')) return 'qwen3_moe';
  if (args.flag('moe_router_pre_softmax'))
    throw new MoekitError(
      'unsupported',
      `${where}: softmax-before-top-k routing without shared experts or q/k norms matches no HF family moekit maps; put the HF config.json beside the checkpoint to name one`,
    );
  return 'mixtral';
}

/** config.json of the HF model the args describe (transformers' field names for the family). */
function deriveConfig(args: Args, family: string, dtype: Dtype, d: MegatronDims): Record<string, unknown> {
  const heads = args.num('num_attention_heads');
  const I = args.num('moe_ffn_hidden_size', args.num('ffn_hidden_size'));
  const c: Record<string, unknown> = {
    architectures: [FAMILIES[family]!.architecture],
    model_type: family,
    hidden_size: args.num('hidden_size'),
    num_hidden_layers: args.num('num_layers'),
    num_attention_heads: heads,
    num_key_value_heads: args.flag('group_query_attention') ? args.num('num_query_groups') : heads,
    head_dim: args.num('kv_channels', args.num('hidden_size') / heads),
    vocab_size: args.num('padded_vocab_size', args.num('vocab_size', 0)),
    max_position_embeddings: args.num('max_position_embeddings', args.num('seq_length', 4096)),
    rms_norm_eps: args.num('layernorm_epsilon', args.num('norm_epsilon', 1e-5)),
    rope_parameters: { rope_theta: args.num('rotary_base', 10000), rope_type: 'default' },
    tie_word_embeddings: !args.flag('untie_embeddings_and_output_weights'),
    hidden_act: 'silu',
    num_experts_per_tok: args.num('moe_router_topk'),
    dtype: DTYPE_NAMES[dtype] ?? 'float32',
  };
  if (family === 'deepseek_v3') Object.assign(c, deepseekConfig(args, d));
  else if (family === 'mixtral')
    Object.assign(c, { intermediate_size: I, num_local_experts: args.num('num_experts'), router_jitter_noise: 0, sliding_window: null });
  else
    Object.assign(c, {
      moe_intermediate_size: I,
      intermediate_size: args.num('ffn_hidden_size'),
      num_experts: args.num('num_experts'),
      decoder_sparse_step: 1,
      mlp_only_layers: [],
      norm_topk_prob: !args.flag('moe_router_pre_softmax'),
      ...(family === 'qwen2_moe' ? { shared_expert_intermediate_size: args.num('moe_shared_expert_intermediate_size') } : {}),
    });
  return c;
}

/**
 * DeepSeek-V3's config.json fields from Megatron's MLA / router args (fixtures/torch/mla-notes.md (e);
 * Megatron-Bridge deepseek_v3_bridge.py megatron_to_hf_config). Megatron sums the top
 * topk / group_topk scores of a group where HF sums the top 2, so a grouped router whose ratio is not
 * 2 is refused rather than routed differently.
 */
function deepseekConfig(args: Args, d: MegatronDims): Record<string, unknown> {
  const m = d.mla!;
  const k = args.num('moe_router_topk');
  const groups = args.num('moe_router_num_groups', 1);
  const groupTopk = args.num('moe_router_group_topk', 1);
  const grouped = groupScoreMismatch(k, groups, groupTopk);
  if (grouped) throw new MoekitError('unsupported', `${grouped}; HF DeepSeek-V3 would route differently`);
  if (args.flag('moe_shared_expert_gate'))
    throw new MoekitError('unsupported', 'a gated shared expert (moe_shared_expert_gate), which HF DeepSeek-V3 has no place for');
  const rope: Record<string, unknown> = { rope_theta: args.num('rotary_base', 10000), rope_type: 'default' };
  if (args.get('rope_type') !== 'rope' && args.num('rotary_scaling_factor', 1) !== 1)
    Object.assign(rope, {
      rope_type: 'yarn',
      factor: args.num('rotary_scaling_factor'),
      mscale: args.num('mscale', 1),
      mscale_all_dim: args.num('mscale_all_dim', 0),
      original_max_position_embeddings: args.num('original_max_position_embeddings', 4096),
      beta_fast: args.num('beta_fast', 32),
      beta_slow: args.num('beta_slow', 1),
    });
  return {
    intermediate_size: d.F ?? args.num('ffn_hidden_size'),
    moe_intermediate_size: d.I,
    n_routed_experts: d.E,
    n_shared_experts: (d.Is ?? 0) / d.I,
    first_k_dense_replace: d.denseLayers?.length ?? 0,
    q_lora_rank: m.rq,
    kv_lora_rank: m.rkv,
    qk_nope_head_dim: m.dn,
    qk_rope_head_dim: m.dr,
    qk_head_dim: m.dn + m.dr,
    head_dim: m.dr,
    v_head_dim: m.dv,
    n_group: groups,
    topk_group: groupTopk,
    norm_topk_prob: k > 1,
    routed_scaling_factor: args.num('moe_router_topk_scaling_factor', 1),
    num_nextn_predict_layers: d.mtp ?? 0,
    rope_interleave: true,
    rope_parameters: rope,
    attention_bias: args.flag('add_bias_linear'),
    rms_norm_eps: args.num('layernorm_epsilon', args.num('norm_epsilon', 1e-6)),
  };
}
