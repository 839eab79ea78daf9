/**
 * `moekit convert --to megatron --format torch_dist`: an HF MoE checkpoint (Mixtral, Qwen2-MoE,
 * Qwen3-MoE) written as the Megatron-Core `torch_dist` checkpoint `dist_checkpointing.load` reads
 * into a GPTModel: `latest_checkpointed_iteration.txt`, `iter_0000001/metadata.json`,
 * `.metadata` and `__0_0.distcp`, with every tensor under its stacked Megatron key, the `args`
 * the model was built with in `common_state`, and the (empty) `_extra_state` objects of every
 * linear layer. Each Megatron chunk is a contiguous row range of one HF tensor (megatron-map.ts),
 * so the job is a streaming byte copy: nothing is transposed or held whole.
 *
 * Sources: Megatron-LM `megatron/core/dist_checkpointing/serialization.py` (`load`,
 * `load_common_state_dict`: the `common_state` ShardedObject, `[dict]`), `strategies/torch.py`,
 * `mapping.py` (ShardedObject unique keys `<key>/shard_<offset>_<global shape>`),
 * `megatron/training/checkpointing.py` (tracker file, iteration folder, common state fields);
 * fixtures/torch/mcore_torch_dist_* (the items Megatron-Core 0.20 writes for these models).
 */
import { join, resolve } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { MoekitError } from '../errors.js';
import type { Dtype } from '../store/dtypes.js';
import { chunkBytes } from '../store/pool.js';
import { openStore } from '../store/registry.js';
import type { TensorInfo, TensorStore } from '../store/types.js';
import { type DcpObjectOut, type DcpTensorOut, torchDtype, writeDcp } from '../store/torch/dcp-writer.js';
import { tilingProblem } from '../store/torch/gather.js';
import { castFloat } from '../engine/cast.js';
import type { FloatDtype } from '../store/dtypes.js';
import { EXTRA_STATE, FAMILIES, groupScoreMismatch, type HfEntry, hfEntries, keyNames, type MegatronDims, type Part } from '../store/torch/megatron-map.js';
import { type PyOut, py } from '../store/torch/pickler.js';
import { peakRssMB, withOutput } from '../output/transaction.js';
import type { WriteOptions } from './options.js';

export interface MegatronWriteSummary {
  source: string;
  destination: string;
  family: string;
  format: 'torch_dist';
  tensors: number;
  chunks: number;
  bytes: number;
  files: string[];
  seconds: number;
  peakRssMB: number;
  dryRun?: true;
  plan?: unknown;
}

const n = (c: Record<string, unknown>, k: string, fallback?: number): number => {
  const v = c[k];
  if (typeof v === 'number') return v;
  if (fallback !== undefined) return fallback;
  throw new MoekitError('bad-input', `config.json has no number '${k}'`);
};

/** The model's sizes from its HF config and tensors. */
function dimsOf(store: TensorStore, c: Record<string, unknown>, family: string): MegatronDims {
  const H = n(c, 'hidden_size');
  const heads = n(c, 'num_attention_heads');
  const embed = store.has('model.embed_tokens.weight') ? store.info('model.embed_tokens.weight').shape : undefined;
  if (!embed) throw new MoekitError('bad-input', `${store.dir}: no model.embed_tokens.weight; --format torch_dist writes whole HF models`);
  if (FAMILIES[family]!.mla) return deepseekDims(store, c, family, embed[0]!);
  const sparse = c.decoder_sparse_step ?? 1;
  if (sparse !== 1 || (Array.isArray(c.mlp_only_layers) && c.mlp_only_layers.length > 0))
    throw new MoekitError(
      'unsupported',
      `${store.dir}: dense MLP layers beside the MoE ones; --format torch_dist writes models whose every layer is MoE so far`,
    );
  const shared = family === 'qwen2_moe' ? n(c, 'shared_expert_intermediate_size') : undefined;
  return {
    family,
    L: n(c, 'num_hidden_layers'),
    E: n(c, 'num_local_experts', n(c, 'num_experts', 0)),
    I: family === 'mixtral' ? n(c, 'intermediate_size') : n(c, 'moe_intermediate_size'),
    H,
    V: embed[0]!,
    heads,
    groups: n(c, 'num_key_value_heads', heads),
    hd: n(c, 'head_dim', H / heads),
    Is: shared,
    sharedGate: store.has(`model.layers.0.mlp.${FAMILIES[family]!.sharedGate}.weight`),
    output: store.has('lm_head.weight') && c.tie_word_embeddings !== true,
    qkvBias: store.has('model.layers.0.self_attn.q_proj.bias'),
    qkNorm: store.has('model.layers.0.self_attn.q_norm.weight'),
  };
}

/**
 * DeepSeek-V3 as Megatron holds it (fixtures/torch/mla-notes.md): MLA, the first
 * first_k_dense_replace layers dense, per-layer keys, a sigmoid router with a float32 expert_bias.
 * What Megatron cannot compute the same way is refused: its group score sums the top
 * topk / group_topk experts of a group where HF sums the top 2, and it always renormalises a
 * sigmoid top-k > 1.
 */
function deepseekDims(store: TensorStore, c: Record<string, unknown>, family: string, V: number): MegatronDims {
  const no = (why: string) => new MoekitError('unsupported', `${store.dir}: ${why}; Megatron-Core's MLA model would compute something else`);
  const k = n(c, 'num_experts_per_tok');
  const grouped = groupScoreMismatch(k, n(c, 'n_group', 1), n(c, 'topk_group', 1));
  if (grouped) throw no(grouped);
  if (k > 1 && c.norm_topk_prob === false) throw no('norm_topk_prob false (Megatron renormalises every sigmoid top-k > 1)');
  if (c.rope_interleave === false) throw no('rope_interleave false (Megatron MLA always rotates the interleaved way)');
  if (c.attention_bias === true) throw no('attention biases (MLA projections have none)');
  // the local spec cannot build q_layernorm without a q LoRA, and the TE spec then fuses the input norm into linear_q_proj
  if (typeof c.q_lora_rank !== 'number') throw no('q_lora_rank null (one q projection, which Megatron-Core builds only with its input norm fused in)');
  const I = n(c, 'moe_intermediate_size');
  const L = n(c, 'num_hidden_layers');
  const shared = n(c, 'n_shared_experts', 0);
  return {
    family,
    L,
    E: n(c, 'n_routed_experts'),
    I,
    H: n(c, 'hidden_size'),
    V,
    heads: n(c, 'num_attention_heads'),
    groups: n(c, 'num_attention_heads'),
    hd: n(c, 'v_head_dim'),
    Is: shared > 0 ? shared * I : undefined,
    sharedGate: false,
    output: store.has('lm_head.weight') && c.tie_word_embeddings !== true,
    qkvBias: false,
    qkNorm: false,
    perLayer: true,
    denseLayers: Array.from({ length: Math.min(L, n(c, 'first_k_dense_replace', 0)) }, (_, i) => i),
    F: n(c, 'intermediate_size'),
    mla: {
      rq: n(c, 'q_lora_rank'),
      rkv: n(c, 'kv_lora_rank'),
      dn: n(c, 'qk_nope_head_dim'),
      dr: n(c, 'qk_rope_head_dim'),
      dv: n(c, 'v_head_dim'),
    },
    expertBias: true,
    // the MTP layers the checkpoint holds (DeepSeek's release has them; transformers' save_pretrained drops them)
    mtp: Array.from({ length: n(c, 'num_nextn_predict_layers', 0) }).filter((_, m) => store.has(`model.layers.${L + m}.eh_proj.weight`)).length,
  };
}

/** Megatron-LM's MLA, router and layer-pattern args for a DeepSeek-V3 config (the inverse of the reader's deepseekConfig). */
function deepseekArgs(d: MegatronDims, c: Record<string, unknown>): Record<string, PyOut> {
  const m = d.mla!;
  const rope = (c.rope_parameters ?? c.rope_scaling ?? {}) as Record<string, unknown>;
  const yarn = rope.rope_type === 'yarn';
  const num = (v: unknown, fallback: number) => py.float(typeof v === 'number' ? v : fallback);
  const dense = new Set(d.denseLayers);
  return {
    multi_latent_attention: true,
    q_lora_rank: m.rq,
    kv_lora_rank: m.rkv,
    qk_head_dim: m.dn,
    qk_pos_emb_head_dim: m.dr,
    v_head_dim: m.dv,
    kv_channels: m.dv,
    qk_layernorm: true,
    ffn_hidden_size: d.F!,
    rope_type: yarn ? 'yarn' : 'rope',
    rotary_scaling_factor: num(rope.factor, 1),
    mscale: num(rope.mscale, 1),
    mscale_all_dim: num(rope.mscale_all_dim, 0),
    ...(yarn
      ? {
          original_max_position_embeddings: n(rope, 'original_max_position_embeddings', 4096),
          beta_fast: num(rope.beta_fast, 32),
          beta_slow: num(rope.beta_slow, 1),
        }
      : {}),
    rotary_interleaved: false,
    moe_layer_freq: Array.from({ length: d.L }, (_, l) => (dense.has(l) ? 0 : 1)),
    moe_router_score_function: 'sigmoid',
    moe_router_pre_softmax: false,
    moe_router_enable_expert_bias: true,
    moe_router_topk_scaling_factor: num(c.routed_scaling_factor, 1),
    moe_router_num_groups: n(c, 'n_group', 1) > 1 ? n(c, 'n_group') : null,
    moe_router_group_topk: n(c, 'n_group', 1) > 1 ? n(c, 'topk_group') : null,
    moe_router_dtype: 'fp32',
    mtp_num_layers: d.mtp || null,
    layernorm_epsilon: py.float(n(c, 'rms_norm_eps', 1e-6)),
  };
}

/** The argparse.Namespace Megatron-LM would have saved for this model (the fields its model builders read). */
export function argsOf(d: MegatronDims, c: Record<string, unknown>, dtype: Dtype, iteration: number, extra: Record<string, PyOut> = {}): PyOut {
  const rope = (c.rope_parameters as Record<string, unknown> | undefined)?.rope_theta ?? c.rope_theta ?? 10000;
  const f = FAMILIES[d.family]!;
  return py.newobj(
    py.global('argparse', 'Namespace'),
    py.obj({
      num_layers: d.L,
      hidden_size: d.H,
      ffn_hidden_size: n(c, 'intermediate_size', d.I),
      num_attention_heads: d.heads,
      group_query_attention: d.groups !== d.heads,
      num_query_groups: d.groups,
      kv_channels: d.hd,
      max_position_embeddings: n(c, 'max_position_embeddings', 4096),
      seq_length: n(c, 'max_position_embeddings', 4096),
      padded_vocab_size: d.V,
      vocab_size: d.V,
      position_embedding_type: 'rope',
      rotary_base: py.float(Number(rope)),
      rotary_percent: py.float(1),
      normalization: 'RMSNorm',
      norm_epsilon: py.float(n(c, 'rms_norm_eps', 1e-6)),
      swiglu: true,
      add_bias_linear: false,
      add_qkv_bias: d.qkvBias,
      untie_embeddings_and_output_weights: d.output,
      qk_layernorm: d.qkNorm,
      num_experts: d.E,
      moe_router_topk: n(c, 'num_experts_per_tok'),
      moe_ffn_hidden_size: d.I,
      moe_shared_expert_intermediate_size: d.Is ?? null,
      moe_shared_expert_gate: d.sharedGate,
      moe_router_pre_softmax: f.moe === 'mlp' && c.norm_topk_prob === false,
      moe_router_score_function: 'softmax',
      moe_router_load_balancing_type: 'none',
      moe_grouped_gemm: false,
      moe_layer_freq: 1,
      tensor_model_parallel_size: 1,
      pipeline_model_parallel_size: 1,
      expert_model_parallel_size: 1,
      expert_tensor_parallel_size: 1,
      params_dtype: torchDtype(dtype),
      bf16: dtype === 'BF16',
      fp16: dtype === 'F16',
      ckpt_format: 'torch_dist',
      iteration,
      ...(d.mla ? deepseekArgs(d, c) : {}),
      ...extra,
    }),
  );
}

/** The HF tensor an entry of the mapping reads (checked present and of the shape the config implies), and its bytes per row. */
export function hfRows(store: TensorStore, e: HfEntry, d: MegatronDims): { t: TensorInfo; rowBytes: number } {
  if (!store.has(e.name)) throw new MoekitError('bad-input', `${store.dir}: no tensor '${e.name}', which a ${d.family} model of these sizes has`);
  const t = store.info(e.name);
  const want = [e.rows, ...e.rest];
  if (t.shape.join() !== want.join()) throw new MoekitError('bad-input', `${store.dir}: '${e.name}' is [${t.shape}], config.json implies [${want}]`);
  return { t, rowBytes: t.nbytes / e.rows };
}

/** The Megatron tensors (chunk lists over HF byte ranges) and objects of the model. */
function megatronItems(
  store: TensorStore,
  d: MegatronDims,
  args: PyOut,
  iteration: number,
  ep = 1,
): { tensors: DcpTensorOut[]; objects: DcpObjectOut[]; bytes: number } {
  // under expert parallelism each EP rank writes its own experts (`__<rank>_0.distcp`), rank 0 everything else
  const perRank = d.E / ep;
  const rankOf = (expert: number | undefined) => (expert === undefined ? 0 : Math.floor(expert / perRank));
  const byKey = new Map<string, DcpTensorOut>();
  let bytes = 0;
  const extents = new Map<string, number[]>();
  // every linear layer's (empty) _extra_state, a ShardedObject at the weight's layer/expert slot
  // (transformer/utils.py _get_extra_state_offsets: with no offsets at all, shard_0_1)
  const objects: DcpObjectOut[] = [];
  const seen = new Set<string>();
  const extraState = (p: Part) => {
    if (!EXTRA_STATE.test(p.key) || p.key.startsWith('output_layer')) return;
    const slot =
      p.prefix.length === 0 ? '0_1' : d.perLayer ? `${p.expert}_${d.E}` : p.expert === undefined ? `${p.layer}_${d.L}` : `${p.layer}.${p.expert}_${d.L}.${d.E}`;
    const fqn = `${p.key.replace(/\.weight$/, '')}._extra_state/shard_${slot}`;
    if (seen.has(fqn)) return;
    seen.add(fqn);
    objects.push({ fqn, value: [null], rank: rankOf(p.expert) });
  };
  for (const e of hfEntries(d, (k, l) => keyNames(k, l, d.L)[0]!)) {
    if (e.parts.length === 0) continue;
    const { t, rowBytes } = hfRows(store, e, d);
    // Megatron keeps the router's expert_bias in float32 whatever the model's dtype (moe/router.py)
    const asF32 = e.name.endsWith('.e_score_correction_bias') && t.dtype !== 'F32';
    const dtype = asF32 ? 'F32' : t.dtype;
    for (const p of e.parts) {
      extraState(p);
      let out = byKey.get(p.key);
      if (!out) byKey.set(p.key, (out = { fqn: p.key, dtype, shape: [], chunks: [] }));
      if (out.dtype !== dtype)
        throw new MoekitError('unsupported', `${store.dir}: '${e.name}' is ${t.dtype}, other tensors Megatron stacks with it ${out.dtype}`);
      const at = [...p.prefix, p.r0, ...e.rest.map(() => 0)];
      const sizes = [...p.prefix.map(() => 1), p.rows, ...e.rest];
      const ext = extents.get(p.key) ?? at.map(() => 0);
      extents.set(
        p.key,
        at.map((a, i) => Math.max(ext[i]!, a + sizes[i]!)),
      );
      bytes += p.rows * rowBytes;
      const range = [p.rowAt * rowBytes, (p.rowAt + p.rows) * rowBytes] as const;
      out.chunks.push({
        offsets: at,
        sizes,
        rank: rankOf(p.expert),
        data: asF32
          ? async function* () {
              yield castFloat(await store.read(t, ...range), t.dtype as FloatDtype, 'F32');
            }
          : () => chunkBytes(store.chunks(t, undefined, 2, ...range)),
      });
    }
  }
  for (const t of byKey.values()) {
    t.shape = extents.get(t.fqn)!;
    const why = tilingProblem(
      t.shape,
      t.chunks.map((c) => ({ at: c.offsets, shape: c.sizes })),
    );
    if (why) throw new MoekitError('internal', `${t.fqn}: the chunks do not tile [${t.shape}]: ${why}`);
  }
  const common = py.obj({
    args,
    checkpoint_version: py.float(3),
    iteration,
    num_floating_point_operations_so_far: 0,
    content_metadata: py.obj({ singleton_local_shards: false, chained_optim_avoid_prefix: true }),
  });
  objects.push({ fqn: 'common_state/shard_0_1', value: [common] });
  return { tensors: [...byKey.values()], objects, bytes };
}

async function allZeroBiases(store: TensorStore, L: number): Promise<boolean> {
  for (let l = 0; l < L; l++)
    for (const p of ['q_proj', 'k_proj', 'v_proj']) {
      const name = `model.layers.${l}.self_attn.${p}.bias`;
      if (!store.has(name)) return false;
      const b = await store.read(name);
      for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
    }
  return true;
}

/** An HF model Megatron can hold: its config, family and Megatron dims (what both Megatron writers start from). */
export async function megatronSource(
  store: TensorStore,
  src: string,
  format: string,
): Promise<{ config: Record<string, unknown>; family: string; d: MegatronDims }> {
  const config = await store.config();
  const family = String(config?.model_type ?? '');
  if (!config || !FAMILIES[family])
    throw new MoekitError(
      'unsupported',
      `${src}: --format ${format} writes ${Object.keys(FAMILIES).join(', ')} models (this is '${family || 'no config.json'}')`,
    );
  const d = dimsOf(store, config, family);
  // Qwen2-MoE always has q/k/v biases; all-zero ones are a model Megatron builds without --add-qkv-bias
  if (d.qkvBias && (await allZeroBiases(store, d.L))) d.qkvBias = false;
  await unmapped(store, d);
  return { config, family, d };
}

/**
 * Refuse a tensor the Megatron model has no place for, rather than drop it. An MTP layer's copies of
 * the embedding and output layer (DeepSeek's release stores them; Megatron shares the main ones) are
 * let through when they are byte for byte the main ones.
 */
async function unmapped(store: TensorStore, d: MegatronDims): Promise<void> {
  const entries = hfEntries(d, () => '');
  // a tensor the model should have and lacks says more than the stray one beside it
  for (const e of entries) if (e.parts.length > 0) hfRows(store, e, d);
  const mapped = new Set(entries.map((e) => e.name));
  for (const t of store.tensors.values()) {
    if (mapped.has(t.name)) continue;
    const copy = /^model\.layers\.(\d+)\.(embed_tokens|shared_head\.head)\.weight$/.exec(t.name);
    const main = copy && Number(copy[1]) >= d.L ? (copy[2] === 'embed_tokens' ? 'model.embed_tokens.weight' : 'lm_head.weight') : undefined;
    if (main && store.has(main) && (await sameBytes(store, t, store.info(main)))) continue;
    throw new MoekitError(
      'unsupported',
      `${store.dir}: '${t.name}' has no place in a Megatron ${d.family} model${main ? ` (it differs from ${main}, which Megatron's MTP layers share)` : ''}; moekit will not drop it (convert to another layout to keep it)`,
    );
  }
}

async function sameBytes(store: TensorStore, a: TensorInfo, b: TensorInfo): Promise<boolean> {
  if (a.dtype !== b.dtype || a.shape.join() !== b.shape.join()) return false;
  const step = 64 << 20;
  for (let at = 0; at < a.nbytes; at += step) {
    const end = Math.min(a.nbytes, at + step);
    if (!(await store.read(a, at, end)).equals(await store.read(b, at, end))) return false;
  }
  return true;
}

/** The files around Megatron's iteration folder: the tracker, and the HF config (so the way back needs no --hf-config). */
export async function megatronRoot(tmp: string, iteration: number, config: Record<string, unknown>): Promise<void> {
  await writeFile(join(tmp, 'latest_checkpointed_iteration.txt'), String(iteration));
  await writeFile(join(tmp, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
}

export async function writeMegatron(
  src: string,
  dst: string,
  opts: WriteOptions & { iteration?: number; extraArgs?: Record<string, PyOut>; ep?: number },
): Promise<MegatronWriteSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const iteration = opts.iteration ?? 1;
  const store = await openStore(src);
  try {
    const { config, family, d } = await megatronSource(store, src, 'torch_dist');
    const dtype = store.info('model.embed_tokens.weight').dtype;
    const ep = opts.ep ?? 1;
    if (!Number.isInteger(ep) || ep < 1 || d.E % ep !== 0)
      throw new MoekitError('usage', `--ep ${ep}: ${d.E} experts do not split evenly over ${ep} ranks (torch_dist keeps Megatron's contiguous placement)`);
    const args = argsOf(d, config, dtype, iteration, { ...(ep > 1 ? { expert_model_parallel_size: ep } : {}), ...opts.extraArgs });
    const { tensors, objects, bytes: total } = megatronItems(store, d, args, iteration, ep);
    const iter = `iter_${String(iteration).padStart(7, '0')}`;
    const files = [
      'latest_checkpointed_iteration.txt',
      'config.json',
      `${iter}/metadata.json`,
      `${iter}/.metadata`,
      ...Array.from({ length: ep }, (_, r) => `${iter}/__${r}_0.distcp`),
    ];
    const base = {
      source: src,
      destination: dst,
      family,
      format: 'torch_dist' as const,
      tensors: tensors.length,
      chunks: tensors.reduce((a, t) => a + t.chunks.length, 0),
      bytes: total,
      files,
    };
    if (opts.dryRun)
      return {
        ...base,
        seconds: 0,
        peakRssMB: peakRssMB(),
        dryRun: true,
        plan: tensors.map((t) => ({ key: t.fqn, shape: t.shape, dtype: t.dtype, chunks: t.chunks.length })),
      };
    let done = 0;
    await withOutput(dst, { force: opts.force, sources: [store.dir, ...store.files] }, async (tmp) => {
      await writeDcp(join(tmp, iter), tensors, objects, {
        checkpointId: iter,
        fsync: opts.fsync,
        onBytes: (b) => opts.onProgress?.((done += b), total),
      });
      await writeFile(join(tmp, iter, 'metadata.json'), JSON.stringify({ sharded_backend: 'torch_dist', sharded_backend_version: 1 }));
      await megatronRoot(tmp, iteration, config);
    });
    return { ...base, seconds: (Date.now() - t0) / 1000, peakRssMB: peakRssMB() };
  } finally {
    await store.close();
  }
}
