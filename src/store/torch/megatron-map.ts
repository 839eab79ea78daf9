/**
 * The one table of how a Megatron-Core GPT model's tensors (torch_dist form: layers stacked on
 * axis 0, experts on axis 1) hold an HF model's tensors, as row ranges: HF rows [rowAt, rowAt +
 * rows) of tensor `name` are rows [r0, r0 + rows) of Megatron `key` at leading indices `prefix`.
 * Reading a Megatron checkpoint (megatron.ts) and writing one (ops/megatron-write.ts) both use it,
 * so the two directions cannot disagree.
 *
 * Sources: Megatron-LM `megatron/core/transformer/attention.py` (linear_qkv rows per query group:
 * q_per_group·head_dim q rows, head_dim k rows, head_dim v rows), `mlp.py` (SwiGLU linear_fc1 =
 * [gate; up]), `moe/experts.py` and `moe/shared_experts.py` (sharded keys, `gate_weight`),
 * `transformer_layer.py` (TE-style norm keys `linear_qkv.layer_norm_weight`,
 * `mlp.linear_fc1.layer_norm_weight` in the sharded state dict even for the local spec);
 * transformers `modeling_mixtral.py`, `modeling_qwen2_moe.py`, `modeling_qwen3_moe.py`;
 * fixtures/torch/mcore_*\/keys.json (the mapping as checked against transformers).
 * DeepSeek-V3 (MLA, dense layers, per-layer keys): `transformer_block.py` (non-homogeneous layers:
 * `decoder.layers.<i>.` prefixes, no layer axis), `multi_latent_attention.py` (linear_q_down_proj /
 * linear_q_up_proj / linear_kv_down_proj / linear_kv_up_proj rows), `moe/router.py` (expert_bias,
 * float32), transformers `modeling_deepseek_v3.py`; fixtures/torch/mla-notes.md has the details.
 */

export interface MegatronDims {
  family: string;
  L: number;
  E: number;
  I: number;
  H: number;
  V: number;
  heads: number;
  groups: number;
  hd: number;
  /** shared-expert intermediate size; undefined: no shared expert */
  Is?: number;
  sharedGate: boolean;
  /** an untied output layer */
  output: boolean;
  /** Megatron stores linear_qkv.bias (--add-qkv-bias) */
  qkvBias: boolean;
  qkNorm: boolean;
  /** keys `decoder.layers.<i>.…` with no layer axis (Megatron's non-homogeneous layers: any moe_layer_freq list) */
  perLayer?: boolean;
  /** layers whose MLP is dense (moe_layer_freq 0), of intermediate size F */
  denseLayers?: readonly number[];
  F?: number;
  /** multi-latent attention (DeepSeek-V2/V3): q LoRA rank (null: one q projection), kv LoRA rank, head dims */
  mla?: { rq: number | null; rkv: number; dn: number; dr: number; dv: number };
  /** the router has a float32 expert_bias (HF e_score_correction_bias; zeros when absent) */
  expertBias?: boolean;
  /** multi-token-prediction layers after the L decoder layers (HF model.layers.<L + m>.) */
  mtp?: number;
}

/** HF names of one family's MoE block (transformers modeling_<family>.py). */
export interface FamilyNames {
  moe: string;
  experts: [gate: string, up: string, down: string];
  shared?: string;
  sharedGate?: string;
  /** HF attention has q/k/v biases (zeros when Megatron has none) */
  qkvBias?: boolean;
  qkNorm?: boolean;
  /** multi-latent attention, dense layers first, a sigmoid router with a score bias (DeepSeek-V3) */
  mla?: boolean;
  architecture: string;
}
export const FAMILIES: Record<string, FamilyNames> = {
  mixtral: { moe: 'block_sparse_moe', experts: ['w1', 'w3', 'w2'], architecture: 'MixtralForCausalLM' },
  qwen2_moe: {
    moe: 'mlp',
    experts: ['gate_proj', 'up_proj', 'down_proj'],
    shared: 'shared_expert',
    sharedGate: 'shared_expert_gate',
    qkvBias: true,
    architecture: 'Qwen2MoeForCausalLM',
  },
  qwen3_moe: { moe: 'mlp', experts: ['gate_proj', 'up_proj', 'down_proj'], qkNorm: true, architecture: 'Qwen3MoeForCausalLM' },
  deepseek_v3: {
    moe: 'mlp',
    experts: ['gate_proj', 'up_proj', 'down_proj'],
    shared: 'shared_experts',
    mla: true,
    architecture: 'DeepseekV3ForCausalLM',
  },
};

/** Megatron keys, the name Megatron-Core 0.20 writes first and older / local-spec names after it */
/** where Megatron-Core's routed experts (SequentialMLP) sit: their keys stack [layer, expert, …] */
export const EXPERT_KEYS = 'decoder.layers.mlp.experts.experts.';

export const KEYS = {
  embedding: ['embedding.word_embeddings.weight'],
  output: ['output_layer.weight'],
  finalNorm: ['decoder.final_layernorm.weight'],
  inputNorm: ['decoder.layers.self_attention.linear_qkv.layer_norm_weight', 'decoder.layers.input_layernorm.weight'],
  preMlpNorm: ['decoder.layers.mlp.linear_fc1.layer_norm_weight', 'decoder.layers.pre_mlp_layernorm.weight'],
  qkv: ['decoder.layers.self_attention.linear_qkv.weight'],
  qkvBias: ['decoder.layers.self_attention.linear_qkv.bias'],
  qNorm: ['decoder.layers.self_attention.q_layernorm.weight'],
  kNorm: ['decoder.layers.self_attention.k_layernorm.weight'],
  proj: ['decoder.layers.self_attention.linear_proj.weight'],
  router: ['decoder.layers.mlp.router.weight'],
  fc1: ['decoder.layers.mlp.experts.experts.linear_fc1.weight'],
  fc2: ['decoder.layers.mlp.experts.experts.linear_fc2.weight'],
  sharedFc1: ['decoder.layers.mlp.shared_experts.linear_fc1.weight'],
  sharedFc2: ['decoder.layers.mlp.shared_experts.linear_fc2.weight'],
  sharedGate: ['decoder.layers.mlp.shared_experts.gate_weight'],
  expertBias: ['decoder.layers.mlp.router.expert_bias'],
  denseFc1: ['decoder.layers.mlp.linear_fc1.weight'],
  denseFc2: ['decoder.layers.mlp.linear_fc2.weight'],
  // MLA: the local spec's names first (what moekit writes), the Transformer Engine spec's after
  mlaInputNorm: ['decoder.layers.input_layernorm.weight'],
  mlaPreMlpNorm: ['decoder.layers.pre_mlp_layernorm.weight', 'decoder.layers.mlp.linear_fc1.layer_norm_weight'],
  qProj: ['decoder.layers.self_attention.linear_q_proj.weight'],
  qDown: ['decoder.layers.self_attention.linear_q_down_proj.weight'],
  qUp: ['decoder.layers.self_attention.linear_q_up_proj.weight'],
  qLoraNorm: ['decoder.layers.self_attention.q_layernorm.weight', 'decoder.layers.self_attention.linear_q_up_proj.layer_norm_weight'],
  kvDown: ['decoder.layers.self_attention.linear_kv_down_proj.weight'],
  kvUp: ['decoder.layers.self_attention.linear_kv_up_proj.weight'],
  kvLoraNorm: ['decoder.layers.self_attention.kv_layernorm.weight', 'decoder.layers.self_attention.linear_kv_up_proj.layer_norm_weight'],
} as const;
export type KeyName = keyof typeof KEYS;

/**
 * Why Megatron's group-limited routing would pick other experts than HF DeepSeek-V3's, or undefined:
 * Megatron scores a group by the sum of its top topk / group_topk experts (moe_utils.py
 * group_limited_topk), HF by its top 2, so the two agree only when that ratio is 2.
 */
export function groupScoreMismatch(topk: number, groups: number, groupTopk: number): string | undefined {
  const per = Math.floor(topk / groupTopk);
  if (groups <= 1 || per === 2) return undefined;
  return `a grouped router (top-${topk}, ${groupTopk} of ${groups} groups) that Megatron scores by the top ${per} of each group, not HF's top 2`;
}

/** a stacked key's name in a checkpoint with per-layer keys: `decoder.layers.X` → `decoder.layers.<l>.X` */
/**
 * a stacked key's name in a checkpoint with per-layer keys: `decoder.layers.X` → `decoder.layers.<l>.X`;
 * layers from `L` on are multi-token-prediction layers, `mtp.layers.<l - L>.transformer_layer.X`
 * (transformer/multi_token_prediction.py MultiTokenPredictionLayer.sharded_state_dict)
 */
const layerKey = (stacked: string, l: number, L: number): string =>
  stacked.replace(/^decoder\.layers\./, l < L ? `decoder.layers.${l}.` : `mtp.layers.${l - L}.transformer_layer.`);
/** the names key `k` may have (for layer `l` of a model of `L` decoder layers when keys are per layer), preferred first */
export const keyNames = (k: KeyName, l?: number, L = Number.POSITIVE_INFINITY): string[] => KEYS[k].map((n) => (l === undefined ? n : layerKey(n, l, L)));
/** an MTP layer's own tensors (multi_token_prediction.py) and their HF names in DeepSeek's release (model.layers.<L + m>.) */
const MTP_OWN = [
  ['enorm.weight', 'enorm.weight'],
  ['hnorm.weight', 'hnorm.weight'],
  ['eh_proj.weight', 'eh_proj.weight'],
  ['final_layernorm.weight', 'shared_head.norm.weight'],
] as const;
/** the linear layers whose weights carry an (empty) `_extra_state` object beside them */
export const EXTRA_STATE = /(linear_(qkv|proj|fc1|fc2|q_proj|q_down_proj|q_up_proj|kv_down_proj|kv_up_proj)|eh_proj)\.weight$/;

export interface Part {
  rowAt: number;
  key: string;
  prefix: number[];
  r0: number;
  rows: number;
  /** the decoder layer and routed expert the rows belong to (also when the key has no axis for them) */
  layer?: number;
  expert?: number;
}
export interface HfEntry {
  name: string;
  rows: number;
  rest: number[];
  /** none: an all-zero tensor Megatron does not store (Qwen2's q/k/v bias without --add-qkv-bias, a router without expert_bias) */
  parts: Part[];
  /** the dtype of an all-zero tensor, when not the checkpoint's */
  zeroDtype?: 'F32';
}

/**
 * Every HF tensor of the model `d` describes, as row ranges of Megatron keys. `key(k, l)` names key
 * `k` as stored (for layer `l` when the checkpoint's keys are per layer; see keyNames).
 */
export function hfEntries(d: MegatronDims, key: (k: KeyName, l?: number) => string): HfEntry[] {
  const f = FAMILIES[d.family]!;
  const out: HfEntry[] = [];
  // where layer l's (and expert e's) rows of key k are: stacked [L, E, …] or per layer [E, …]
  const at = (k: KeyName, l: number, e?: number) => {
    const lead = e === undefined ? [] : [e];
    return d.perLayer ? { key: key(k, l), prefix: lead, layer: l, expert: e } : { key: key(k), prefix: [l, ...lead], layer: l, expert: e };
  };
  const rowsOf = (name: string, k: KeyName, l: number | undefined, r0: number, rows: number, rest: number[], e?: number) =>
    out.push({ name, rows, rest, parts: [{ rowAt: 0, ...(l === undefined ? { key: key(k), prefix: [] } : at(k, l, e)), r0, rows }] });
  const whole = (name: string, k: KeyName, l: number | undefined, rows: number, rest: number[], e?: number) => rowsOf(name, k, l, 0, rows, rest, e);
  /** a SwiGLU fc1 [gate; up] (rows [0, n) and [n, 2n)) and its fc2 */
  const glu = (p: string, names: readonly [string, string, string], fc1: KeyName, fc2: KeyName, l: number, n: number, e?: number) => {
    rowsOf(`${p}${names[0]}.weight`, fc1, l, 0, n, [d.H], e);
    rowsOf(`${p}${names[1]}.weight`, fc1, l, n, n, [d.H], e);
    whole(`${p}${names[2]}.weight`, fc2, l, d.H, [n], e);
  };
  whole('model.embed_tokens.weight', 'embedding', undefined, d.V, [d.H]);
  if (d.output) whole('lm_head.weight', 'output', undefined, d.V, [d.H]);
  whole('model.norm.weight', 'finalNorm', undefined, d.H, []);
  const dense = new Set(d.denseLayers ?? []);
  for (let l = 0; l < d.L + (d.mtp ?? 0); l++) {
    const p = `model.layers.${l}.`;
    if (l >= d.L)
      for (const [mg, hf] of MTP_OWN) {
        const rest = mg === 'eh_proj.weight' ? [2 * d.H] : [];
        out.push({ name: `${p}${hf}`, rows: d.H, rest, parts: [{ rowAt: 0, key: `mtp.layers.${l - d.L}.${mg}`, prefix: [], r0: 0, rows: d.H, layer: l }] });
      }
    whole(`${p}input_layernorm.weight`, d.mla ? 'mlaInputNorm' : 'inputNorm', l, d.H, []);
    whole(`${p}post_attention_layernorm.weight`, d.mla ? 'mlaPreMlpNorm' : 'preMlpNorm', l, d.H, []);
    if (d.mla) mlaEntries(d, d.mla, l, `${p}self_attn.`, whole);
    else gqaEntries(d, f, l, p, out, at);
    if (dense.has(l)) {
      glu(`${p}mlp.`, ['gate_proj', 'up_proj', 'down_proj'], 'denseFc1', 'denseFc2', l, d.F!);
      continue;
    }
    const m = `${p}${f.moe}.`;
    whole(`${m}gate.weight`, 'router', l, d.E, [d.H]);
    if (d.expertBias) whole(`${m}gate.e_score_correction_bias`, 'expertBias', l, d.E, []);
    else if (f.mla) out.push({ name: `${m}gate.e_score_correction_bias`, rows: d.E, rest: [], parts: [], zeroDtype: 'F32' });
    for (let e = 0; e < d.E; e++) glu(`${m}experts.${e}.`, f.experts, 'fc1', 'fc2', l, d.I, e);
    if (d.Is === undefined || !f.shared) continue;
    glu(`${m}${f.shared}.`, f.experts, 'sharedFc1', 'sharedFc2', l, d.Is);
    if (d.sharedGate && f.sharedGate) whole(`${m}${f.sharedGate}.weight`, 'sharedGate', l, 1, [d.H]);
  }
  return out;
}

type Whole = (name: string, k: KeyName, l: number, rows: number, rest: number[]) => void;

/** MLA (modeling_deepseek_v3.py DeepseekV3Attention ↔ multi_latent_attention.py): every tensor a straight copy */
function mlaEntries(d: MegatronDims, m: NonNullable<MegatronDims['mla']>, l: number, a: string, whole: Whole): void {
  if (m.rq === null) whole(`${a}q_proj.weight`, 'qProj', l, d.heads * (m.dn + m.dr), [d.H]);
  else {
    whole(`${a}q_a_proj.weight`, 'qDown', l, m.rq, [d.H]);
    whole(`${a}q_a_layernorm.weight`, 'qLoraNorm', l, m.rq, []);
    whole(`${a}q_b_proj.weight`, 'qUp', l, d.heads * (m.dn + m.dr), [m.rq]);
  }
  whole(`${a}kv_a_proj_with_mqa.weight`, 'kvDown', l, m.rkv + m.dr, [d.H]);
  whole(`${a}kv_a_layernorm.weight`, 'kvLoraNorm', l, m.rkv, []);
  whole(`${a}kv_b_proj.weight`, 'kvUp', l, d.heads * (m.dn + m.dv), [m.rkv]);
  whole(`${a}o_proj.weight`, 'proj', l, d.H, [d.heads * m.dv]);
}

/** grouped-query attention: q/k/v rows per query group of linear_qkv (attention.py) */
function gqaEntries(
  d: MegatronDims,
  f: FamilyNames,
  l: number,
  p: string,
  out: HfEntry[],
  at: (k: KeyName, l: number) => { key: string; prefix: number[]; layer: number },
): void {
  const qpg = d.heads / d.groups;
  for (const kind of ['weight', 'bias'] as const) {
    const rest = kind === 'weight' ? [d.H] : [];
    for (const [proj, first, n] of [
      ['q_proj', 0, qpg],
      ['k_proj', qpg, 1],
      ['v_proj', qpg + 1, 1],
    ] as const) {
      const name = `${p}self_attn.${proj}.${kind}`;
      if (kind === 'bias' && !d.qkvBias) {
        if (f.qkvBias) out.push({ name, rows: d.groups * n * d.hd, rest, parts: [] });
        continue;
      }
      const parts: Part[] = [];
      for (let g = 0; g < d.groups; g++)
        parts.push({ rowAt: g * n * d.hd, ...at(kind === 'weight' ? 'qkv' : 'qkvBias', l), r0: (g * (qpg + 2) + first) * d.hd, rows: n * d.hd });
      out.push({ name, rows: d.groups * n * d.hd, rest, parts });
    }
  }
  const one = (name: string, k: KeyName, rows: number, rest: number[]) => out.push({ name, rows, rest, parts: [{ rowAt: 0, ...at(k, l), r0: 0, rows }] });
  if (d.qkNorm) {
    one(`${p}self_attn.q_norm.weight`, 'qNorm', d.hd, []);
    one(`${p}self_attn.k_norm.weight`, 'kNorm', d.hd, []);
  }
  one(`${p}self_attn.o_proj.weight`, 'proj', d.H, [d.heads * d.hd]);
}
