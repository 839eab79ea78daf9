/**
 * Model families: what moekit knows about each HF `model_type` — which layers are MoE, expert
 * sizes, shared experts, routing rules and activation — read from config.json.
 * Facts from transformers' modeling files (models/<family>/modeling_<family>.py) and
 * ../shared/reference/moe-layouts.md; each family cites where its routing comes from.
 */
import { MoekitError } from '../errors.js';
import { Checker, LIMITS } from '../store/schema.js';

export type ScoreFunc =
  /** softmax over all E logits, then top-k (Mixtral, Qwen, OLMoE) */
  | 'softmax'
  /** sigmoid scores, selection on score + correction bias (DeepSeek-V3, GLM4-MoE, MiniMax-M2) */
  | 'sigmoid'
  /** top-k of the logits, softmax over the k selected logits (GPT-OSS, Granite-MoE) */
  | 'topk_softmax'
  /** top-k of the logits, sigmoid of each selected logit, scaling the expert's input (Llama4) */
  | 'topk_sigmoid_input'
  /** PhiMoE sparsemixer: top-2, each weight a softmax over the experts within a relative gap (modeling_phimoe.py) */
  | 'sparsemixer'
  /** top-k of the logits, sigmoid of each selected logit as its weight (Cohere2-MoE expert_selection_fn "sigmoid") */
  | 'topk_sigmoid';

export type ActivationKind = 'swiglu' | 'geglu_tanh' | 'geglu' | 'relu2' | 'swiglu_oai' | 'swiglu_clamped';

export interface Activation {
  kind: ActivationKind;
  /** swiglu_oai: g·σ(alpha·g)·(u+1) with g ≤ limit, |u| ≤ limit */
  alpha?: number;
  limit?: number;
}

export interface Routing {
  scoreFunc: ScoreFunc;
  topK: number;
  /** group-limited selection (DeepSeek-V3): n_group groups, keep topk_group of them */
  nGroup: number;
  topkGroup: number;
  /** how a group is ranked: the sum of its top-2 choice scores (DeepSeek-V3, default) or its largest score (DeepSeek-V2 group_limited_greedy) */
  groupScore?: 'top2sum' | 'max';
  /** what the experts of unselected groups score before the top-k: 0.0 (DeepSeek-V3's masked_fill, the default) or −inf (Kimi-Linear, MiMo-V2-Flash, A.X-K1) */
  groupMask?: 'zero' | '-inf';
  normTopkProb: boolean;
  routedScalingFactor: number;
  /** score-correction bias used for selection only (e_score_correction_bias) */
  correctionBias: boolean;
  /** router linear has a bias (GPT-OSS) */
  routerBias: boolean;
  /** PhiMoE sparsemixer: the relative logit gap (router_jitter_noise) inside which experts share the softmax */
  jitterEps?: number;
  /** renormalise the top-k weights by their p-norm instead of their sum (DBRX moe_normalize_expert_weights ≠ 1) */
  normP?: number;
  /** the shared experts' output is scaled by this (Cohere2-MoE "average": routed and shared both × 0.5) */
  sharedScale?: number;
  /** the router reads RMSNorm(x) without a weight (Gemma-4 router.norm, Fast-LLM fixed_rms_norm) */
  routerNorm?: boolean;
  /** a constant multiplying the router input (Gemma-4 hidden_size ** -0.5, Fast-LLM router_input_scale) */
  routerInputScale?: number;
  /** epsilon of the router norm and of the block's input / output norms */
  normEps?: number;
  /** added to the top-k weights' sum before renormalising, where it is not DeepSeek-V3's 1e-20 (sigmoid) / 0 (softmax): LFM2-MoE 1e-6 */
  renormEps?: number;
}

/** Routing facts with defaults (plain softmax top-k, no groups, no renorm, no biases) overridden by `r`. */
export function makeRouting(r: Partial<Routing> & { scoreFunc: ScoreFunc; topK: number }): Routing {
  return { nGroup: 1, topkGroup: 1, normTopkProb: false, routedScalingFactor: 1, correctionBias: false, routerBias: false, ...r };
}

export interface SharedExperts {
  /** number of shared experts fused into one MLP (DeepSeek n_shared_experts) */
  count: number;
  intermediateSize: number;
  /** Qwen2-MoE: sigmoid(shared_expert_gate(x)) scales the shared output */
  sigmoidGate: boolean;
}

export interface FamilyFacts {
  family: string;
  modelType: string;
  known: boolean;
  numLayers: number;
  hiddenSize: number;
  /** intermediate size of one routed expert */
  moeIntermediateSize: number;
  /** intermediate size of dense MLP layers (if any) */
  denseIntermediateSize: number;
  numExperts: number;
  topK: number;
  shared: SharedExperts | null;
  routing: Routing;
  activation: Activation;
  /** does layer i hold an MoE block according to config? */
  isMoeLayer(i: number): boolean;
}

const num = (c: Record<string, unknown>, ...keys: string[]): number | undefined => {
  for (const k of keys) {
    const v = c[k];
    if (typeof v === 'number' && Number.isFinite(v)) return v;
  }
  return undefined;
};
const bool = (c: Record<string, unknown>, key: string, dflt: boolean): boolean => (typeof c[key] === 'boolean' ? (c[key] as boolean) : dflt);

/** Integer fields of config.json and their upper bounds: anything else is refused before it sizes a loop or a buffer. */
const INT_FIELDS: Record<string, number> = {
  num_hidden_layers: LIMITS.layers,
  n_layer: LIMITS.layers,
  num_layers: LIMITS.layers,
  hidden_size: LIMITS.hidden,
  d_model: LIMITS.hidden,
  intermediate_size: LIMITS.intermediate,
  moe_intermediate_size: LIMITS.intermediate,
  shared_expert_intermediate_size: LIMITS.intermediate,
  intermediate_size_mlp: LIMITS.intermediate,
  num_experts_per_tok: LIMITS.experts,
  num_experts_per_token: LIMITS.experts,
  moe_top_k: LIMITS.experts,
  experts_per_token: LIMITS.experts,
  moe_topk: LIMITS.experts,
  n_routed_experts: LIMITS.experts,
  num_local_experts: LIMITS.experts,
  num_experts: LIMITS.experts,
  n_shared_experts: LIMITS.experts,
  n_group: LIMITS.experts,
  num_expert_group: LIMITS.experts,
  topk_group: LIMITS.experts,
  first_k_dense_replace: LIMITS.layers,
  moe_layer_freq: LIMITS.layers,
  decoder_sparse_step: LIMITS.layers,
  interleave_moe_layer_step: LIMITS.layers,
  moe_k: LIMITS.experts,
  moe_num_experts: LIMITS.experts,
  top_k_experts: LIMITS.experts,
  moe_num_shared_experts: LIMITS.experts,
  moe_layer_start_index: LIMITS.layers,
  moe_layer_interval: LIMITS.layers,
  num_shared_experts: LIMITS.experts,
  num_dense_layers: LIMITS.layers,
  expert_layer_period: LIMITS.layers,
  expert_layer_offset: LIMITS.layers,
  shared_intermediate_size: LIMITS.intermediate,
  prefix_dense_intermediate_size: LIMITS.intermediate,
  dense_intermediate_size: LIMITS.intermediate,
  share_expert_dim: LIMITS.intermediate,
};

/** Integer fields that some families write as a list instead (MiMo-V2-Flash moe_layer_freq per layer, ERNIE-4.5-VL [text, vision] expert sizes). */
const INT_OR_LIST = new Set(['moe_layer_freq', 'moe_intermediate_size']);

/** Refuse config.json values that are not sane integers or layer lists. */
function checkConfig(c: Record<string, unknown>): void {
  const k = new Checker('config.json');
  for (const [key, max] of Object.entries(INT_FIELDS)) {
    if (c[key] === undefined || c[key] === null) continue;
    if (INT_OR_LIST.has(key) && Array.isArray(c[key])) k.ints(c[key], key, 0, max, LIMITS.layers);
    else k.int(c[key], key, 0, max);
  }
  for (const key of ['moe_layers', 'mlp_only_layers']) if (Array.isArray(c[key])) k.ints(c[key], key, 0, LIMITS.layers, LIMITS.layers);
  if (c.mlp_layer_types !== undefined && c.mlp_layer_types !== null) {
    const t = k.arr(c.mlp_layer_types, 'mlp_layer_types', LIMITS.layers);
    for (const [i, v] of t.entries()) k.str(v, `mlp_layer_types[${i}]`, ['dense', 'sparse']);
  }
  const g = c.n_group as number | undefined;
  if (g && typeof c.topk_group === 'number' && c.topk_group > g) k.fail('topk_group', `(${c.topk_group}) exceeds n_group (${g})`);
}

function activationFromConfig(c: Record<string, unknown>): Activation {
  const act = String(c.hidden_act ?? c.hidden_activation ?? c.activation_function ?? 'silu');
  if (act === 'silu' || act === 'swish') {
    const lim = num(c, 'swiglu_limit');
    return lim !== undefined && lim > 0 ? { kind: 'swiglu_clamped', limit: lim } : { kind: 'swiglu' };
  }
  if (act === 'gelu_pytorch_tanh' || act === 'gelu_new' || act === 'gelu_fast') return { kind: 'geglu_tanh' };
  if (act === 'gelu') return { kind: 'geglu' };
  if (act === 'relu2' || act === 'relu_squared') return { kind: 'relu2' };
  throw new MoekitError('unsupported', `config.json: hidden_act '${act}' is not supported (known: silu, gelu, gelu_pytorch_tanh, relu2)`);
}

/** Model types of dense (non-MoE) families moekit recognises (upcycling sources). */
export const DENSE_FAMILIES: readonly string[] = ['llama', 'qwen2', 'qwen3', 'mistral', 'gemma', 'gemma2', 'phi3', 'olmo', 'olmo2'];

/** What every family reads the same way from config.json. */
interface Base {
  modelType: string;
  numLayers: number;
  hiddenSize: number;
  denseIntermediateSize: number;
  numExperts: number;
  topK: number;
  known: boolean;
  activation: Activation;
}

/** A family's own facts, from its (text) config `c` and the common ones. */
type FamilyRule = (c: Record<string, unknown>, base: Base, routing: (r: Partial<Routing> & { scoreFunc: ScoreFunc }) => Routing) => FamilyFacts;

const all = () => true;
const intermediateOf = (c: Record<string, unknown>) => num(c, 'intermediate_size') ?? 0;

/** The family table: model_type → facts. Each entry cites the modeling file its rules come from. */
const FAMILIES: Record<string, FamilyRule> = {
  // modeling_mixtral.py: softmax over all experts, top-k, renormalise.
  mixtral: (c, base, routing) => ({
    ...base,
    family: 'mixtral',
    moeIntermediateSize: intermediateOf(c),
    shared: null,
    routing: routing({ scoreFunc: 'softmax', normTopkProb: true }),
    isMoeLayer: all,
  }),
  // modeling_phimoe.py: sparsemixer routing (top-2, each weight a softmax within a relative logit gap of 2·router_jitter_noise).
  phimoe: (c, base, routing) => ({
    ...base,
    family: 'phimoe',
    moeIntermediateSize: intermediateOf(c),
    shared: null,
    routing: routing({ scoreFunc: 'sparsemixer', jitterEps: num(c, 'router_jitter_noise') ?? 0.01 }),
    isMoeLayer: all,
  }),
  // modeling_minimax_m2.py: sigmoid, selection on score + e_score_correction_bias, always renormalised.
  minimax_m2: (c, base, routing) => ({
    ...base,
    family: 'minimax_m2',
    moeIntermediateSize: intermediateOf(c),
    shared: null,
    routing: routing({ scoreFunc: 'sigmoid', correctionBias: true, normTopkProb: true }),
    isMoeLayer: all,
  }),
  // modeling_qwen2_moe.py: softmax, top-k, renormalise iff norm_topk_prob; shared expert with sigmoid gate.
  qwen2_moe: (c, base, routing) => qwenLike(c, base, routing),
  qwen3_moe: (c, base, routing) => qwenLike(c, base, routing),
  olmoe: (c, base, routing) => qwenLike(c, base, routing),
  // modeling_deepseek_v3.py / modeling_glm4_moe.py / modeling_dots1.py (DeepSeek-V3's router and layers)
  deepseek_v3: (c, base, routing) => deepseekLike(c, base, routing),
  glm4_moe: (c, base, routing) => deepseekLike(c, base, routing),
  dots1: (c, base, routing) => deepseekLike(c, base, routing),
  // modeling_deepseek_v2.py (DeepseekV2Moe): softmax scores; topk_method greedy = plain top-k, group_limited_greedy =
  // groups ranked by their largest score, unselected groups masked to 0; never renormalised (the router does not read
  // norm_topk_prob); × routed_scaling_factor
  deepseek_v2: (c, base, routing) => {
    const grouped = c.topk_method === 'group_limited_greedy';
    return {
      ...deepseekLike(c, base, routing),
      routing: routing({
        scoreFunc: 'softmax',
        nGroup: grouped ? (num(c, 'n_group') ?? 1) : 1,
        topkGroup: grouped ? (num(c, 'topk_group') ?? 1) : 1,
        groupScore: 'max',
        normTopkProb: false,
        routedScalingFactor: num(c, 'routed_scaling_factor') ?? 1,
      }),
    };
  },
  // modeling_gpt_oss.py: router with bias, top-k of logits, softmax over the k; SwiGLU-OAI (alpha 1.702, limit 7).
  gpt_oss: (c, base, routing) => ({
    ...base,
    family: 'gpt_oss',
    moeIntermediateSize: intermediateOf(c),
    shared: null,
    routing: routing({ scoreFunc: 'topk_softmax', routerBias: true }),
    activation: { kind: 'swiglu_oai', alpha: 1.702, limit: num(c, 'swiglu_limit') ?? 7.0 },
    isMoeLayer: all,
  }),
  // modeling_granitemoe.py (GraniteMoeTopKRouter): top-k of the logits, softmax over the k selected.
  granitemoe: (c, base, routing) => ({
    ...base,
    family: 'granitemoe',
    moeIntermediateSize: intermediateOf(c),
    shared: null,
    routing: routing({ scoreFunc: 'topk_softmax' }),
    isMoeLayer: all,
  }),
  llama4: (c, base, routing) => llama4(c, base, routing),
  llama4_text: (c, base, routing) => llama4(c, base, routing),
  // modeling_ernie4_5_moe.py (Ernie4_5_MoeTopKRouter): softmax scores, selection on score + e_score_correction_bias,
  // weights the unbiased scores renormalised; MoE where (i+1) % moe_layer_interval == 0 and start ≤ i ≤ end (end −1: last)
  ernie4_5_moe: (c, base, routing) => {
    const moeI = num(c, 'moe_intermediate_size') ?? intermediateOf(c);
    const nShared = num(c, 'moe_num_shared_experts') ?? 0;
    const start = num(c, 'moe_layer_start_index') ?? 0;
    const endRaw = num(c, 'moe_layer_end_index') ?? -1;
    const end = endRaw < 0 ? base.numLayers - 1 : endRaw;
    const every = num(c, 'moe_layer_interval') ?? 1;
    return {
      ...base,
      family: 'ernie4_5_moe',
      moeIntermediateSize: moeI,
      shared: sharedOfCount(nShared, moeI),
      routing: routing({ scoreFunc: 'softmax', correctionBias: true, normTopkProb: true }),
      isMoeLayer: (i) => (i + 1) % every === 0 && i >= start && i <= end,
    };
  },
  // modeling_hunyuan_v1_moe.py (HunYuanMoEV1Gate): softmax, top-k, renormalised; a shared MLP (intermediate_size) on every token
  hunyuan_v1_moe: (c, base, routing) => ({
    ...base,
    family: 'hunyuan_v1_moe',
    moeIntermediateSize: intermediateOf(c),
    shared: { count: 1, intermediateSize: intermediateOf(c), sigmoidGate: false },
    routing: routing({ scoreFunc: 'softmax', normTopkProb: true }),
    isMoeLayer: all,
  }),
  // modeling_minimax.py (MiniMaxSparseMoeBlock(MixtralSparseMoeBlock)): Mixtral's block; linear-attention layers pass through
  minimax: (c, base, routing) => ({ ...FAMILIES.mixtral!(c, base, routing), family: 'minimax' }),
  // modeling_deepseek_v32.py / modeling_glm4_moe_lite.py / modeling_glm_moe_dsa.py: DeepSeek-V3's MoE block (MLA / DSA attention passes through)
  deepseek_v32: (c, base, routing) => deepseekLike(c, base, routing),
  glm4_moe_lite: (c, base, routing) => deepseekLike(c, base, routing),
  glm_moe_dsa: (c, base, routing) => deepseekLike(c, base, routing),
  // modeling_exaone_moe.py (ExaoneMoeSparseMoEBlock): DeepSeek-V3's routing; num_experts / num_shared_experts
  exaone_moe: (c, base, routing) => deepseekLike(c, base, routing),
  // modeling_qwen3_next.py: Qwen2-MoE's block (shared expert with sigmoid gate); norm_topk_prob defaults to true
  qwen3_next: (c, base, routing) => qwenLike(c, base, routing),
  // modeling_qwen3_5_moe.py (Qwen3_5MoeTopKRouter): Qwen2-MoE's block, always renormalised, every layer MoE
  qwen3_5_moe_text: (c, base, routing) => qwenLike(c, base, routing),
  qwen3_5_moe: (c, base, routing) => qwenLike(c, base, routing),
  // modeling_flex_olmo.py (FlexOlmoSparseMoeBlock(OlmoeSparseMoeBlock)): OLMoE's block, every layer MoE
  flex_olmo: (c, base, routing) => qwenLike(c, base, routing),
  // modeling_granitemoeshared.py: Granite-MoE's router; shared_mlp (shared_intermediate_size, 0 = none) added unweighted
  granitemoeshared: (c, base, routing) => {
    const sharedI = num(c, 'shared_intermediate_size') ?? 0;
    return {
      ...FAMILIES.granitemoe!(c, base, routing),
      family: 'granitemoeshared',
      shared: sharedI > 0 ? { count: 1, intermediateSize: sharedI, sigmoidGate: false } : null,
    };
  },
  // modeling_granitemoe_swa.py: Granite-MoE-Shared's block (fused v5 expert names); fixture pending (families3-notes-a.md)
  granitemoe_swa: (c, base, routing) => ({ ...FAMILIES.granitemoeshared!(c, base, routing), family: 'granitemoe_swa' }),
  // modeling_jamba.py (JambaSparseMoeBlock): softmax over all experts, top-k, not renormalised; MoE where
  // i % expert_layer_period == expert_layer_offset
  jamba: (c, base, routing) => {
    const period = num(c, 'expert_layer_period') ?? 2;
    const offset = num(c, 'expert_layer_offset') ?? 1;
    return {
      ...base,
      family: 'jamba',
      moeIntermediateSize: intermediateOf(c),
      shared: null,
      routing: routing({ scoreFunc: 'softmax' }),
      isMoeLayer: (i) => base.numExperts > 1 && i % period === offset,
    };
  },
  // modeling_jetmoe.py (JetMoeTopKGating, JetMoeMoE): top-k of the logits, softmax over the k; an output bias
  // mlp.bias [H] added once per token; the attention experts (self_attention.experts) pass through
  jetmoe: (c, base, routing) => ({ ...FAMILIES.granitemoe!(c, base, routing), family: 'jetmoe' }),
  // modeling_dbrx.py (DbrxRouter): softmax over all experts, top-k, divided by the top-k weights' p-norm
  // (p = moe_normalize_expert_weights; null: not renormalised); config fields nested in ffn_config (flattened by textConfig)
  dbrx: (c, base, routing) => {
    const p = c.moe_normalize_expert_weights === null ? undefined : (num(c, 'moe_normalize_expert_weights') ?? 1);
    return {
      ...base,
      family: 'dbrx',
      moeIntermediateSize: intermediateOf(c),
      shared: null,
      routing: routing({ scoreFunc: 'softmax', normTopkProb: p !== undefined, ...(p !== undefined && p !== 1 ? { normP: p } : {}) }),
      isMoeLayer: all,
    };
  },
  // modeling_afmoe.py (AfmoeTokenChoiceRouter): sigmoid, selection on score + mlp.expert_bias, always renormalised
  // (+1e-20), × route_scale; MoE from num_dense_layers; shared experts ungated
  afmoe: (c, base, routing) => {
    const moeI = num(c, 'moe_intermediate_size') ?? intermediateOf(c);
    const nShared = num(c, 'num_shared_experts') ?? 0;
    const dense = num(c, 'num_dense_layers') ?? 0;
    return {
      ...base,
      family: 'afmoe',
      moeIntermediateSize: moeI,
      shared: sharedOfCount(nShared, moeI),
      routing: routing({ scoreFunc: 'sigmoid', correctionBias: true, normTopkProb: true, routedScalingFactor: num(c, 'route_scale') ?? 1 }),
      isMoeLayer: (i) => i >= dense,
    };
  },
  // modeling_qwen3_vl_moe.py (Qwen3VLMoeTextTopKRouter, Qwen3VLMoeTextSparseMoeBlock(Qwen3MoeSparseMoeBlock)): softmax,
  // top-k, always renormalised (the text config has no norm_topk_prob); Qwen3-MoE's layers (decoder_sparse_step, mlp_only_layers)
  qwen3_vl_moe: (c, base, routing) => qwenLike(c, base, routing),
  qwen3_vl_moe_text: (c, base, routing) => qwenLike(c, base, routing),
  // modeling_lfm2_moe.py (Lfm2MoeSparseMoeBlock.route_tokens_to_experts): sigmoid, selection on score + expert_bias
  // (use_expert_bias), weights the unbiased scores, renormalised iff norm_topk_prob with + 1e-6, × routed_scaling_factor;
  // the first num_dense_layers layers are dense (feed_forward.w1/w3/w2); the conv layers pass through
  lfm2_moe: (c, base, routing) => {
    const dense = num(c, 'num_dense_layers') ?? 2;
    return {
      ...base,
      family: 'lfm2_moe',
      moeIntermediateSize: num(c, 'moe_intermediate_size') ?? intermediateOf(c),
      shared: null,
      routing: routing({
        scoreFunc: 'sigmoid',
        correctionBias: bool(c, 'use_expert_bias', true),
        normTopkProb: bool(c, 'norm_topk_prob', true),
        routedScalingFactor: num(c, 'routed_scaling_factor') ?? 1,
        renormEps: 1e-6,
      }),
      isMoeLayer: (i) => i >= dense,
    };
  },
  // modeling_granitemoehybrid.py (GraniteMoeHybridDecoderLayer): Granite-MoE-Shared's block on mamba and attention
  // layers alike; shared_mlp (shared_intermediate_size) on every layer, experts where num_local_experts > 0
  granitemoehybrid: (c, base, routing) => {
    const sharedI = num(c, 'shared_intermediate_size') ?? 1024;
    return {
      ...FAMILIES.granitemoe!(c, base, routing),
      family: 'granitemoehybrid',
      shared: { count: 1, intermediateSize: sharedI, sigmoidGate: false },
      isMoeLayer: () => base.numExperts > 0,
    };
  },
  // axk2 … mellum (and granitemoe_swa below) are read from transformers 5.17's modeling files (fixtures/hf/families3-notes-*.md);
  // their fixtures (gen_fixtures_families3_*.py, transformers 5.17) confirmed the saved names.
  // modeling_axk2.py (AXK2TopkRouter): DeepSeek-V3's router exactly (no groups when n_group is null); MoE per mlp_layer_types
  axk2: (c, base, routing) => deepseekLike(c, base, routing),
  // modeling_glm5_next.py (Glm5NextTextMoE): DeepSeek-V3's router with unselected groups masked to −inf,
  // clamped SwiGLU (swiglu_limit); text model under text_config or flat; MoE per mlp_layer_types
  glm5_next: (c, base, routing) => glm5Next(c, base, routing),
  glm5_next_text: (c, base, routing) => glm5Next(c, base, routing),
  // modeling_qwen4_exp.py (Qwen4ExpTextSparseMoeBlock): Qwen2-MoE's block (shared expert with sigmoid gate), every layer MoE
  qwen4_exp: (c, base, routing) => qwenLike(c, base, routing),
  qwen4_exp_text: (c, base, routing) => qwenLike(c, base, routing),
  // modeling_qwen3_omni_moe.py (Qwen3OmniMoeThinkerTextSparseMoeBlock): Qwen3-MoE's block in the thinker's text model
  // (thinker_config.text_config, names under thinker.model.); renormalised unless norm_topk_prob is false
  qwen3_omni_moe: (c, base, routing) => qwenLike(c, base, routing),
  qwen3_omni_moe_text: (c, base, routing) => qwenLike(c, base, routing),
  // modeling_mellum.py (MellumTopKRouter): softmax, top-k, renormalised iff norm_topk_prob (default true); MoE per mlp_layer_types
  mellum: (c, base, routing) => ({
    ...base,
    family: 'mellum',
    moeIntermediateSize: num(c, 'moe_intermediate_size') ?? intermediateOf(c),
    shared: null,
    routing: routing({ scoreFunc: 'softmax', normTopkProb: bool(c, 'norm_topk_prob', true) }),
    isMoeLayer: sparseLayers(c, all),
  }),
  // mistral4 … ernie4_5_vl_moe: the same source (fixtures/hf/families3-notes-a.md, -b.md), names confirmed by their fixtures.
  // modeling_mistral4.py (Mistral4TopkRouter): DeepSeek-V3's groups on softmax scores without a bias (top-2 sums, unselected
  // groups masked to 0.0), renormalised iff norm_topk_prob, × routed_scaling_factor; ungated shared experts
  mistral4: (c, base, routing) => {
    const f = deepseekLike(c, base, routing);
    const shared = sharedOfCount(num(c, 'n_shared_experts') ?? 1, f.moeIntermediateSize);
    return { ...f, shared, routing: routing({ ...f.routing, scoreFunc: 'softmax', correctionBias: false }) };
  },
  // modeling_laguna.py (LagunaTopKRouter): sigmoid, selection on score + bias, always renormalised, routed sum
  // × moe_routed_scaling_factor, one ungated shared expert; tanh logit capping refused; MoE per mlp_layer_types
  laguna: (c, base, routing) => {
    const cap = num(c, 'moe_router_logit_softcapping') ?? 0;
    if (cap > 0)
      throw new MoekitError('unsupported', `config.json: laguna's moe_router_logit_softcapping ${cap} (tanh-capped router logits) is not supported (0 only)`);
    const sharedI = num(c, 'shared_expert_intermediate_size') ?? 512;
    return {
      ...base,
      family: 'laguna',
      moeIntermediateSize: num(c, 'moe_intermediate_size') ?? intermediateOf(c),
      shared: sharedI > 0 ? { count: 1, intermediateSize: sharedI, sigmoidGate: false } : null,
      routing: routing({ scoreFunc: 'sigmoid', correctionBias: true, normTopkProb: true, routedScalingFactor: num(c, 'moe_routed_scaling_factor') ?? 1 }),
      isMoeLayer: sparseLayers(c, (i) => i >= 1),
    };
  },
  // modeling_hy_v3.py (HYV3TopKRouter): AFMoE's rule (sigmoid + bias, always renormalised) × router_scaling_factor;
  // num_shared_experts ungated; MoE per mlp_layer_types; mlp_bias (biases on the shared MLP) refused
  hy_v3: (c, base, routing) => {
    if (c.mlp_bias === true) throw new MoekitError('unsupported', 'config.json: hy_v3 with mlp_bias true (biased shared and dense MLPs) is not supported');
    const moeI = num(c, 'moe_intermediate_size') ?? intermediateOf(c);
    return {
      ...base,
      family: 'hy_v3',
      moeIntermediateSize: moeI,
      shared: sharedOfCount(num(c, 'num_shared_experts') ?? 1, moeI),
      routing: routing({ scoreFunc: 'sigmoid', correctionBias: true, normTopkProb: true, routedScalingFactor: num(c, 'router_scaling_factor') ?? 2.826 }),
      isMoeLayer: sparseLayers(c, (i) => i >= 1),
    };
  },
  // modeling_kimi_linear.py (KimiLinearTopkRouter): DeepSeek-V3's router with unselected groups masked to −inf; its own
  // config keys (num_experts_per_token, num_expert_group, moe_renormalize, num_shared_experts); MoE per mlp_layer_types,
  // else after first_k_dense_replace (1) dense layers; the KDA / MLA attention passes through
  kimi_linear: (c, base, routing) => {
    const moeI = num(c, 'moe_intermediate_size') ?? intermediateOf(c);
    const firstDense = num(c, 'first_k_dense_replace') ?? 1;
    return {
      ...base,
      family: 'kimi_linear',
      moeIntermediateSize: moeI,
      shared: sharedOfCount(num(c, 'num_shared_experts', 'n_shared_experts') ?? 1, moeI),
      routing: infMasked(
        routing({
          scoreFunc: 'sigmoid',
          correctionBias: true,
          nGroup: num(c, 'num_expert_group', 'n_group') ?? 1,
          topkGroup: num(c, 'topk_group') ?? 1,
          normTopkProb: bool(c, 'moe_renormalize', true),
          routedScalingFactor: num(c, 'routed_scaling_factor') ?? 2.446,
        }),
      ),
      isMoeLayer: sparseLayers(c, (i) => i >= firstDense),
    };
  },
  // modeling_mimo_v2_flash.py: DeepSeek-V3's router with −inf group masking, no shared experts; MoE per mlp_layer_types,
  // else every layer but the first (a list-valued moe_layer_freq is not read)
  mimo_v2_flash: (c, base, routing) => {
    const f = deepseekLike(c, base, routing);
    return { ...f, routing: infMasked(f.routing), isMoeLayer: sparseLayers(c, (i) => i >= 1) };
  },
  // modeling_step3p7.py (Step3p7TopKRouter, Step3p7MoE): sigmoid + router_bias for selection, always renormalised, routed sum
  // × moe_router_scaling_factor, one ungated shared expert (share_expert_dim); text model under text_config (hidden_act
  // forced to silu by textConfig); a SwiGLU clamp (swiglu_limits / swiglu_limits_shared) on an MoE layer is refused
  step3p7: (c, base, routing) => {
    const isMoe = step3p7Layers(c, base.numLayers);
    for (const key of ['swiglu_limits', 'swiglu_limits_shared']) {
      const lim = Array.isArray(c[key]) ? (c[key] as unknown[]) : [];
      const i = lim.findIndex((v, i) => typeof v === 'number' && v !== 0 && isMoe(i));
      if (i >= 0)
        throw new MoekitError(
          'unsupported',
          `config.json: step3p7 ${key}[${i}] = ${lim[i]} on MoE layer ${i} (silu(g) clamped after the activation) is not supported; 0 or null only`,
        );
    }
    const sharedI = num(c, 'share_expert_dim', 'share_expert_dims') ?? 0;
    return {
      ...base,
      family: 'step3p7',
      moeIntermediateSize: num(c, 'moe_intermediate_size') ?? intermediateOf(c),
      shared: sharedI > 0 ? { count: 1, intermediateSize: sharedI, sigmoidGate: false } : null,
      routing: routing({ scoreFunc: 'sigmoid', correctionBias: true, normTopkProb: true, routedScalingFactor: num(c, 'moe_router_scaling_factor') ?? 1 }),
      activation: { kind: 'swiglu' },
      isMoeLayer: isMoe,
    };
  },
  // modeling_axk1.py (AXK1TopkRouter, AXK1MoE): DeepSeek-V3's router with −inf group masking; the block's output (routed +
  // shared) goes through post_mlp_layernorm (RMSNorm, rms_norm_eps); MoE from first_k_dense_replace (default 1)
  axk1: (c, base, routing) => {
    const f = deepseekLike(c, base, routing);
    const firstDense = num(c, 'first_k_dense_replace') ?? 1;
    return { ...f, routing: { ...infMasked(f.routing), normEps: num(c, 'rms_norm_eps') ?? 1e-6 }, isMoeLayer: (i) => i >= firstDense };
  },
  // modeling_minimax_m3_vl.py (MiniMaxM3VLTopKRouter, MiniMaxM3VLSparseMoeBlock): MiniMax-M2's router (sigmoid + bias,
  // always renormalised) × routed_scaling_factor, one ungated shared expert (shared_intermediate_size); SwiGLU-OAI
  // (swiglu_alpha, swiglu_limit) whatever hidden_act says; experts sized by intermediate_size, dense layers by
  // dense_intermediate_size; text model under text_config; MoE per mlp_layer_types, else a per-layer moe_layer_freq list
  minimax_m3_vl: (c, base, routing) => minimaxM3(c, base, routing),
  minimax_m3_vl_text: (c, base, routing) => minimaxM3(c, base, routing),
  // modeling_ernie4_5_vl_moe.py (Ernie4_5_VLMoeMoeBlock): text tokens route as ERNIE-4.5-MoE (its text_moe); every MoE layer
  // also holds the vision experts under the same names (experts E..2E−1 of moe_intermediate_size[1], router gate.weight_1,
  // row 1 of moe_statics.e_score_correction_bias [2,E]), which hf-ernie-vl passes through: moekit reads the text path only
  ernie4_5_vl_moe: (c, base, routing) => ernieVl(c, base, routing),
  ernie4_5_vl_moe_text: (c, base, routing) => ernieVl(c, base, routing),
  // modeling_glm4v_moe.py (Glm4vMoeTextMoE(Glm4MoeMoE)): GLM4-MoE's block in the text model (under text_config)
  glm4v_moe: (c, base, routing) => ({ ...deepseekLike(c, base, routing), family: 'glm4v_moe' }),
  glm4v_moe_text: (c, base, routing) => ({ ...deepseekLike(c, base, routing), family: 'glm4v_moe' }),
  // modeling_solar_open.py (SolarOpenMoE(Glm4MoeMoE)): GLM4-MoE's block on every layer (no first_k_dense_replace)
  solar_open: (c, base, routing) => deepseekLike(c, base, routing),
  // a Fast-LLM checkpoint without an HF config (src/store/fast-llm.ts builds this config from metadata.yaml):
  // mixture_of_experts.py _topk_routing: top-k of the logits, softmax over the k; router input
  // RMSNorm (fixed_rms_norm) × router_scale × router_input_scale; × router_per_expert_scale after top-k
  fast_llm: (c, base, routing) => ({
    ...base,
    family: 'fast_llm',
    moeIntermediateSize: num(c, 'moe_intermediate_size') ?? 0,
    // shared experts: extra expert slots, score 1 (_add_shared_experts), i.e. one always-on MLP of n·I
    shared:
      (num(c, 'n_shared_experts') ?? 0) > 0
        ? { count: num(c, 'n_shared_experts')!, intermediateSize: num(c, 'n_shared_experts')! * (num(c, 'moe_intermediate_size') ?? 0), sigmoidGate: false }
        : null,
    routing: routing({
      scoreFunc: 'topk_softmax',
      ...(c.router_normalization === true ? { routerNorm: true } : {}),
      ...(num(c, 'router_input_scale') === undefined ? {} : { routerInputScale: num(c, 'router_input_scale') }),
      normEps: num(c, 'rms_norm_eps') ?? 1e-5,
    }),
    isMoeLayer: all,
  }),
  gemma4: (c, base, routing) => gemma4(c, base, routing),
  gemma4_text: (c, base, routing) => gemma4(c, base, routing),
  // modeling_cohere2_moe.py (Cohere2MoeTopKRouter, Cohere2MoeSparseMoeBlock): top-k of the logits, softmax over the k
  // (expert_selection_fn "softmax") or sigmoid of each (renormalised iff norm_topk_prob); experts sized by
  // intermediate_size; shared experts combined as (routed + shared) / 2 ("average") or summed; MoE per mlp_layer_types
  cohere2_moe: (c, base, routing) => {
    const inter = intermediateOf(c);
    const nShared = num(c, 'num_shared_experts') ?? 0;
    const sel = String(c.expert_selection_fn ?? 'softmax');
    if (sel !== 'softmax' && sel !== 'sigmoid')
      throw new MoekitError('unsupported', `config.json: expert_selection_fn '${sel}' is not supported (known: softmax, sigmoid)`);
    const strategy = String(c.shared_expert_combination_strategy ?? 'average');
    if (strategy !== 'average' && strategy !== 'sum')
      throw new MoekitError('unsupported', `config.json: shared_expert_combination_strategy '${strategy}' is not supported (known: average, sum)`);
    const avg = nShared > 0 && strategy === 'average';
    return {
      ...base,
      family: 'cohere2_moe',
      moeIntermediateSize: inter,
      denseIntermediateSize: num(c, 'prefix_dense_intermediate_size') ?? inter,
      shared: sharedOfCount(nShared, inter),
      routing: routing({
        scoreFunc: sel === 'sigmoid' ? 'topk_sigmoid' : 'topk_softmax',
        normTopkProb: sel === 'sigmoid' && bool(c, 'norm_topk_prob', true),
        ...(avg ? { routedScalingFactor: 0.5, sharedScale: 0.5 } : {}),
      }),
      isMoeLayer: sparseLayers(c, () => true),
    };
  },
};

/**
 * modeling_gemma4.py (Gemma4TextRouter, Gemma4TextDecoderLayer): with enable_moe_block every layer has
 * experts beside its dense MLP. Router: RMSNorm(x) without weight, × router.scale, × hidden_size^-0.5,
 * softmax over all experts, top-k, renormalised, × per_expert_scale of each selected expert. Experts read
 * pre_feedforward_layernorm_2(x) and their sum goes through post_feedforward_layernorm_2 (both in the IR);
 * the dense MLP and the other norms pass through. GeGLU (tanh) experts.
 */
const gemma4: FamilyRule = (c, base, routing) => {
  const moe = bool(c, 'enable_moe_block', false) && base.numExperts > 0;
  return {
    ...base,
    family: 'gemma4',
    moeIntermediateSize: num(c, 'moe_intermediate_size') ?? 0,
    shared: null,
    routing: routing({
      scoreFunc: 'softmax',
      normTopkProb: true,
      routerNorm: true,
      routerInputScale: base.hiddenSize ** -0.5,
      normEps: num(c, 'rms_norm_eps') ?? 1e-6,
    }),
    isMoeLayer: () => moe,
  };
};

/** `count` ungated shared experts of `perExpert` intermediate each, fused into one MLP (DeepSeek n_shared_experts and its kin), or none. */
function sharedOfCount(count: number, perExpert: number): SharedExperts | null {
  return count > 0 ? { count, intermediateSize: count * perExpert, sigmoidGate: false } : null;
}

/** `mlp_layer_types` ("dense" / "sparse" per layer) where config.json has it, else `fallback`. */
function sparseLayers(c: Record<string, unknown>, fallback: (i: number) => boolean): (i: number) => boolean {
  const t = c.mlp_layer_types;
  return Array.isArray(t) ? (i) => t[i] === 'sparse' : fallback;
}

/**
 * Qwen2-MoE, Qwen3-MoE, Qwen3-Next, Qwen3.5-MoE, Qwen3-VL-MoE, OLMoE, FlexOlmo: softmax top-k; MoE every decoder_sparse_step
 * layers except mlp_only_layers (OLMoE, FlexOlmo, Qwen3.5-MoE: every layer). Renormalised iff norm_topk_prob
 * (default false; Qwen3-MoE and Qwen3-Next true; Qwen3.5-MoE and Qwen3-VL-MoE always). A shared expert with a sigmoid gate for
 * the Qwen2-MoE lineage (qwen2_moe, qwen3_next, qwen3_5_moe).
 */
const qwenLike: FamilyRule = (c, base, routing) => {
  const t = base.modelType;
  const step = num(c, 'decoder_sparse_step') ?? 1;
  const mlpOnly = Array.isArray(c.mlp_only_layers) ? (c.mlp_only_layers as number[]) : [];
  const sharedI = num(c, 'shared_expert_intermediate_size') ?? 0;
  const q35 = t.startsWith('qwen3_5_moe');
  const vl = t.startsWith('qwen3_vl_moe');
  const q4 = t.startsWith('qwen4_exp');
  const omni = t.startsWith('qwen3_omni_moe');
  const everyLayer = t === 'olmoe' || t === 'flex_olmo' || q35 || q4;
  return {
    ...base,
    family: q35 ? 'qwen3_5_moe' : vl ? 'qwen3_vl_moe' : q4 ? 'qwen4_exp' : omni ? 'qwen3_omni_moe' : t, // one family, two model_types (text-only and multimodal)
    moeIntermediateSize: num(c, 'moe_intermediate_size') ?? intermediateOf(c),
    shared: (t === 'qwen2_moe' || t === 'qwen3_next' || q35 || q4) && sharedI > 0 ? { count: 1, intermediateSize: sharedI, sigmoidGate: true } : null,
    routing: routing({ scoreFunc: 'softmax', normTopkProb: q35 || vl || bool(c, 'norm_topk_prob', t === 'qwen3_moe' || t === 'qwen3_next' || q4 || omni) }),
    isMoeLayer: (i) => everyLayer || (!mlpOnly.includes(i) && base.numExperts > 0 && (i + 1) % step === 0),
  };
};

/**
 * DeepSeek-V3 (and V3.2), GLM4-MoE (and -Lite, -DSA), dots.llm1, EXAONE-MoE: sigmoid + correction bias,
 * group-limited top-k, renormalise iff norm_topk_prob, × routed_scaling_factor; MoE layers from
 * mlp_layer_types where the config has it, else after first_k_dense_replace dense layers.
 */
const deepseekLike: FamilyRule = (c, base, routing) => {
  const firstDense = num(c, 'first_k_dense_replace') ?? 0;
  const freq = num(c, 'moe_layer_freq') ?? 1;
  const moeI = num(c, 'moe_intermediate_size') ?? intermediateOf(c);
  const nShared = num(c, 'n_shared_experts', 'num_shared_experts') ?? 0;
  return {
    ...base,
    family: base.modelType,
    moeIntermediateSize: moeI,
    shared: sharedOfCount(nShared, moeI),
    routing: routing({
      scoreFunc: 'sigmoid',
      correctionBias: true,
      nGroup: num(c, 'n_group') ?? 1,
      topkGroup: num(c, 'topk_group') ?? 1,
      normTopkProb: bool(c, 'norm_topk_prob', true),
      routedScalingFactor: num(c, 'routed_scaling_factor') ?? 1,
    }),
    isMoeLayer: sparseLayers(c, (i) => i >= firstDense && i % freq === 0),
  };
};

/** GLM-5.3-Flash's text MoE: DeepSeek-V3's router with unselected groups masked to −inf. */
const glm5Next: FamilyRule = (c, base, routing) => {
  const f = deepseekLike(c, base, routing);
  return { ...f, family: 'glm5_next', routing: infMasked(f.routing) };
};

const minimaxM3: FamilyRule = (c, base, routing) => {
  const sharedI = num(c, 'shared_intermediate_size') ?? 0;
  const freq = c.moe_layer_freq;
  return {
    ...base,
    family: 'minimax_m3_vl',
    moeIntermediateSize: intermediateOf(c),
    denseIntermediateSize: num(c, 'dense_intermediate_size') ?? intermediateOf(c),
    shared: sharedI > 0 ? { count: 1, intermediateSize: sharedI, sigmoidGate: false } : null,
    routing: routing({ scoreFunc: 'sigmoid', correctionBias: true, normTopkProb: true, routedScalingFactor: num(c, 'routed_scaling_factor') ?? 2 }),
    activation: { kind: 'swiglu_oai', alpha: num(c, 'swiglu_alpha') ?? 1.702, limit: num(c, 'swiglu_limit') ?? 7 },
    isMoeLayer: sparseLayers(c, Array.isArray(freq) ? (i) => Boolean(freq[i]) : all),
  };
};

/**
 * ERNIE-4.5-VL's text experts: moe_intermediate_size [text, vision] (a number read as the text size), moe_num_shared_experts
 * shared experts of the text size, ERNIE-4.5-MoE's routing; MoE per mlp_layer_types, else every layer but the first.
 */
const ernieVl: FamilyRule = (c, base, routing) => {
  const sizes = c.moe_intermediate_size;
  const moeI = Array.isArray(sizes) ? Number(sizes[0] ?? 0) : (num(c, 'moe_intermediate_size') ?? intermediateOf(c));
  return {
    ...base,
    family: 'ernie4_5_vl_moe',
    moeIntermediateSize: moeI,
    shared: sharedOfCount(num(c, 'moe_num_shared_experts') ?? 0, moeI),
    routing: routing({ scoreFunc: 'softmax', correctionBias: true, normTopkProb: true }),
    isMoeLayer: sparseLayers(c, (i) => i > 0),
  };
};

/** Step-3.7's MoE layers: mlp_layer_types, else the legacy moe_layers_enum (indices, a list or a comma string), else from layer 3. */
function step3p7Layers(c: Record<string, unknown>, numLayers: number): (i: number) => boolean {
  const e = c.moe_layers_enum;
  const listed = typeof e === 'string' ? e.split(',').map((x) => Number(x.trim())) : Array.isArray(e) ? e.map(Number) : undefined;
  if (listed) new Checker('config.json').ints(listed, 'moe_layers_enum', 0, Math.max(0, numLayers - 1), LIMITS.layers);
  return sparseLayers(c, listed ? (i) => listed.includes(i) : (i) => i >= 3);
}

/** DeepSeek-V3's routing with unselected groups masked to −inf instead of 0.0 (only meaningful with groups). */
function infMasked(r: Routing): Routing {
  return r.nGroup > 1 ? { ...r, groupMask: '-inf' } : r;
}

/**
 * modeling_llama4.py (Llama4Router, Llama4TextMoe): top-k of the logits, sigmoid of each selected
 * logit scales that expert's input; a shared expert on every token. MoE layers: `moe_layers`, else
 * every interleave_moe_layer_step-th layer (Llama4TextConfig).
 */
const llama4: FamilyRule = (c, base, routing) => {
  const step = num(c, 'interleave_moe_layer_step') ?? 1;
  const moeLayers = Array.isArray(c.moe_layers) ? (c.moe_layers as number[]) : undefined;
  const inter = intermediateOf(c);
  return {
    ...base,
    family: 'llama4',
    moeIntermediateSize: inter,
    denseIntermediateSize: num(c, 'intermediate_size_mlp') ?? inter,
    shared: { count: 1, intermediateSize: inter, sigmoidGate: false },
    routing: routing({ scoreFunc: 'topk_sigmoid_input' }),
    isMoeLayer: (i) => (moeLayers ? moeLayers.includes(i) : (i + 1) % step === 0),
  };
};

/** A family not in the table: dense families are known (no experts), others unknown. */
const otherFamily: FamilyRule = (_c, base, routing) => {
  const dense = DENSE_FAMILIES.includes(base.modelType);
  return {
    ...base,
    family: dense ? base.modelType : base.modelType || 'unknown',
    known: dense,
    moeIntermediateSize: 0,
    numExperts: dense ? 0 : base.numExperts,
    shared: null,
    routing: routing({ scoreFunc: 'softmax' }),
    isMoeLayer: () => false,
  };
};

/** Model types whose text model's fields sit under text_config (the multimodal wrappers). */
const TEXT_CONFIG_TYPES: readonly string[] = [
  'llama4',
  'qwen3_5_moe',
  'gemma4',
  'qwen3_vl_moe',
  'glm4v_moe',
  'glm5_next',
  'qwen4_exp',
  'minimax_m3_vl',
  'ernie4_5_vl_moe',
];

/**
 * The fields the family rules read: Llama4, Qwen3.5-MoE, Gemma-4, Qwen3-VL-MoE and GLM-4.5V (glm4v_moe) keep the text model's under text_config;
 * DBRX (configuration_dbrx.py) names them d_model / n_layers and nests the MoE ones in ffn_config.
 */
function textConfig(modelType: string, config: Record<string, unknown>): Record<string, unknown> {
  const obj = (v: unknown) => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined);
  if (TEXT_CONFIG_TYPES.includes(modelType)) return obj(config.text_config) ?? config;
  // configuration_qwen3_omni_moe.py: the thinker's text model two levels down
  if (modelType === 'qwen3_omni_moe') return obj(obj(config.thinker_config)?.text_config) ?? config;
  // configuration_step3p7.py: the text model (step3p5) runs silu whatever hidden_act says (the Hub's "swigluoai")
  if (modelType === 'step3p7') return { ...(obj(config.text_config) ?? config), hidden_act: 'silu' };
  if (modelType !== 'dbrx') return config;
  const ffn = obj(config.ffn_config) ?? {};
  const act = obj(ffn.ffn_act_fn)?.name;
  return {
    ...config,
    num_hidden_layers: config.n_layers,
    hidden_size: config.d_model,
    intermediate_size: ffn.ffn_hidden_size,
    num_local_experts: ffn.moe_num_experts ?? 4,
    num_experts_per_tok: ffn.moe_top_k ?? 1,
    moe_normalize_expert_weights: ffn.moe_normalize_expert_weights === undefined ? 1 : ffn.moe_normalize_expert_weights,
    hidden_act: act ?? 'silu',
  };
}

export function familyFacts(config: Record<string, unknown>): FamilyFacts {
  const modelType = String(config.model_type ?? '');
  const c = textConfig(modelType, config);
  checkConfig(c);
  const topK = num(c, 'num_experts_per_tok', 'num_experts_per_token', 'experts_per_token', 'moe_topk', 'moe_top_k', 'moe_k', 'top_k_experts') ?? 0;
  const base: Base = {
    modelType,
    numLayers: num(c, 'num_hidden_layers', 'n_layer', 'num_layers') ?? 0,
    hiddenSize: num(c, 'hidden_size', 'd_model') ?? 0,
    denseIntermediateSize: intermediateOf(c),
    numExperts: num(c, 'n_routed_experts', 'num_local_experts', 'num_experts', 'moe_num_experts') ?? 0,
    topK,
    known: true,
    activation: activationFromConfig(c),
  };
  const routing = (r: Partial<Routing> & { scoreFunc: ScoreFunc }): Routing => makeRouting({ topK, ...r });
  const facts = (Object.hasOwn(FAMILIES, modelType) ? FAMILIES[modelType]! : otherFamily)(c, base, routing);
  checkRouting(facts);
  return facts;
}

/** A MoE family's routing must be possible with its experts: 1 ≤ top-k ≤ E, groups within E. */
function checkRouting(f: FamilyFacts): void {
  if (!f.known || f.numExperts === 0) return;
  const k = new Checker('config.json');
  const E = f.numExperts;
  if (f.topK < 1 || f.topK > E) k.fail('num_experts_per_tok', `(${f.topK}) must be between 1 and the ${E} experts`);
  const r = f.routing;
  if (r.nGroup > E || E % r.nGroup !== 0) k.fail('n_group', `(${r.nGroup}) must divide the ${E} experts`);
  if (r.topkGroup > r.nGroup || r.topkGroup < 1) k.fail('topk_group', `(${r.topkGroup}) must be between 1 and n_group (${r.nGroup})`);
}

const TORCH_DTYPE = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' } as const;

/** Record a --dtype cast in an HF config.json (in place): `dtype` where the config has it, else `torch_dtype`. */
export function stampDtype(cfg: Record<string, unknown>, dtype: keyof typeof TORCH_DTYPE): void {
  if ('torch_dtype' in cfg || !('dtype' in cfg)) cfg.torch_dtype = TORCH_DTYPE[dtype];
  if ('dtype' in cfg) cfg.dtype = TORCH_DTYPE[dtype];
}
