/**
 * Model families: what moekit knows about each HF `model_type` — which layers are MoE, expert
 * sizes, shared experts, routing rules and activation — read from config.json.
 * Facts from transformers' modeling files (models/<family>/modeling_<family>.py) and
 * ../shared/reference/moe-layouts.md; each family cites where its routing comes from.
 */
import { MoekitError } from '../errors.js';

export type ScoreFunc =
  /** softmax over all E logits, then top-k (Mixtral, Qwen, OLMoE) */
  | 'softmax'
  /** sigmoid scores, selection on score + correction bias (DeepSeek-V3, GLM4-MoE, MiniMax-M2) */
  | 'sigmoid'
  /** top-k of the logits, softmax over the k selected logits (GPT-OSS, Granite-MoE) */
  | 'topk_softmax'
  /** top-k of the logits, sigmoid of each selected logit, scaling the expert's input (Llama4) */
  | 'topk_sigmoid_input'
  /** PhiMoE sparsemixer: not supported by the forward yet */
  | 'sparsemixer';

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
  normTopkProb: boolean;
  routedScalingFactor: number;
  /** score-correction bias used for selection only (e_score_correction_bias) */
  correctionBias: boolean;
  /** router linear has a bias (GPT-OSS) */
  routerBias: boolean;
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

function activationFromConfig(c: Record<string, unknown>): Activation {
  const act = String(c.hidden_act ?? c.hidden_activation ?? 'silu');
  if (act === 'silu' || act === 'swish') {
    const lim = num(c, 'swiglu_limit');
    return lim !== undefined && lim > 0 ? { kind: 'swiglu_clamped', limit: lim } : { kind: 'swiglu' };
  }
  if (act === 'gelu_pytorch_tanh' || act === 'gelu_new' || act === 'gelu_fast') return { kind: 'geglu_tanh' };
  if (act === 'gelu') return { kind: 'geglu' };
  if (act === 'relu2' || act === 'relu_squared') return { kind: 'relu2' };
  throw new MoekitError('unsupported', `config.json: hidden_act '${act}' is not supported (known: silu, gelu, gelu_pytorch_tanh, relu2)`);
}

/** Families moekit knows, by model_type; `dense` ones have no experts (upcycling sources). */
export const MOE_FAMILIES = [
  'mixtral',
  'phimoe',
  'minimax_m2',
  'qwen2_moe',
  'qwen3_moe',
  'olmoe',
  'deepseek_v3',
  'glm4_moe',
  'gpt_oss',
  'llama4',
  'llama4_text',
  'granitemoe',
] as const;
export const DENSE_FAMILIES = ['llama', 'qwen2', 'qwen3', 'mistral', 'gemma', 'gemma2', 'phi3', 'olmo', 'olmo2'] as const;

export function familyFacts(config: Record<string, unknown>): FamilyFacts {
  // Llama4 keeps the text model's fields under text_config.
  const modelType = String(config.model_type ?? '');
  const c = modelType === 'llama4' && typeof config.text_config === 'object' && config.text_config ? (config.text_config as Record<string, unknown>) : config;
  const numLayers = num(c, 'num_hidden_layers', 'n_layer', 'num_layers') ?? 0;
  const hiddenSize = num(c, 'hidden_size', 'd_model') ?? 0;
  const intermediate = num(c, 'intermediate_size') ?? 0;
  const topK = num(c, 'num_experts_per_tok', 'experts_per_token', 'moe_topk') ?? 0;
  const numExperts = num(c, 'n_routed_experts', 'num_local_experts', 'num_experts') ?? 0;
  const base = {
    modelType,
    numLayers,
    hiddenSize,
    denseIntermediateSize: intermediate,
    numExperts,
    topK,
    known: true,
    activation: activationFromConfig(c),
  };
  const routing = (r: Partial<Routing> & { scoreFunc: ScoreFunc }): Routing => makeRouting({ topK, ...r });
  const all = () => true;
  switch (modelType) {
    // modeling_mixtral.py: softmax over all experts, top-k, renormalise.
    case 'mixtral':
      return {
        ...base,
        family: 'mixtral',
        moeIntermediateSize: intermediate,
        shared: null,
        routing: routing({ scoreFunc: 'softmax', normTopkProb: true }),
        isMoeLayer: all,
      };
    // modeling_phimoe.py: sparsemixer routing (top-2 with jitter masks).
    case 'phimoe':
      return { ...base, family: 'phimoe', moeIntermediateSize: intermediate, shared: null, routing: routing({ scoreFunc: 'sparsemixer' }), isMoeLayer: all };
    // modeling_minimax_m2.py: sigmoid, selection on score + e_score_correction_bias, always renormalised.
    case 'minimax_m2':
      return {
        ...base,
        family: 'minimax_m2',
        moeIntermediateSize: intermediate,
        shared: null,
        routing: routing({ scoreFunc: 'sigmoid', correctionBias: true, normTopkProb: true }),
        isMoeLayer: all,
      };
    // modeling_qwen2_moe.py: softmax, top-k, renormalise iff norm_topk_prob; shared expert with sigmoid gate.
    case 'qwen2_moe':
    case 'qwen3_moe':
    case 'olmoe': {
      const step = num(c, 'decoder_sparse_step') ?? 1;
      const mlpOnly = Array.isArray(c.mlp_only_layers) ? (c.mlp_only_layers as number[]) : [];
      const sharedI = num(c, 'shared_expert_intermediate_size') ?? 0;
      return {
        ...base,
        family: modelType,
        moeIntermediateSize: num(c, 'moe_intermediate_size') ?? intermediate,
        shared: modelType === 'qwen2_moe' && sharedI > 0 ? { count: 1, intermediateSize: sharedI, sigmoidGate: true } : null,
        routing: routing({ scoreFunc: 'softmax', normTopkProb: bool(c, 'norm_topk_prob', modelType === 'qwen3_moe') }),
        isMoeLayer: (i) => modelType === 'olmoe' || (!mlpOnly.includes(i) && numExperts > 0 && (i + 1) % step === 0),
      };
    }
    // modeling_deepseek_v3.py / modeling_glm4_moe.py: sigmoid + correction bias, group-limited top-k,
    // renormalise iff norm_topk_prob, × routed_scaling_factor; first_k_dense_replace dense layers.
    case 'deepseek_v3':
    case 'glm4_moe': {
      const firstDense = num(c, 'first_k_dense_replace') ?? 0;
      const freq = num(c, 'moe_layer_freq') ?? 1;
      const moeI = num(c, 'moe_intermediate_size') ?? intermediate;
      const nShared = num(c, 'n_shared_experts') ?? 0;
      return {
        ...base,
        family: modelType,
        moeIntermediateSize: moeI,
        shared: nShared > 0 ? { count: nShared, intermediateSize: nShared * moeI, sigmoidGate: false } : null,
        routing: routing({
          scoreFunc: 'sigmoid',
          correctionBias: true,
          nGroup: num(c, 'n_group') ?? 1,
          topkGroup: num(c, 'topk_group') ?? 1,
          normTopkProb: bool(c, 'norm_topk_prob', true),
          routedScalingFactor: num(c, 'routed_scaling_factor') ?? 1,
        }),
        isMoeLayer: (i) => i >= firstDense && i % freq === 0,
      };
    }
    // modeling_gpt_oss.py: router with bias, top-k of logits, softmax over the k; SwiGLU-OAI (alpha 1.702, limit 7).
    case 'gpt_oss':
      return {
        ...base,
        family: 'gpt_oss',
        moeIntermediateSize: intermediate,
        shared: null,
        routing: routing({ scoreFunc: 'topk_softmax', routerBias: true }),
        activation: { kind: 'swiglu_oai', alpha: 1.702, limit: num(c, 'swiglu_limit') ?? 7.0 },
        isMoeLayer: all,
      };
    // modeling_granitemoe.py: top-k of logits, softmax over the k selected.
    case 'granitemoe':
      return {
        ...base,
        family: 'granitemoe',
        moeIntermediateSize: intermediate,
        shared: null,
        routing: routing({ scoreFunc: 'topk_softmax' }),
        isMoeLayer: all,
      };
    // modeling_llama4.py: top-k of logits, sigmoid of the selected logit scales the expert input; shared expert.
    case 'llama4':
    case 'llama4_text': {
      const step = num(c, 'interleave_moe_layer_step') ?? 1;
      const moeLayers = Array.isArray(c.moe_layers) ? (c.moe_layers as number[]) : undefined;
      return {
        ...base,
        family: 'llama4',
        moeIntermediateSize: intermediate,
        denseIntermediateSize: num(c, 'intermediate_size_mlp') ?? intermediate,
        shared: { count: 1, intermediateSize: intermediate, sigmoidGate: false },
        routing: routing({ scoreFunc: 'topk_sigmoid_input' }),
        isMoeLayer: (i) => (moeLayers ? moeLayers.includes(i) : (i + 1) % step === 0),
      };
    }
    default: {
      const dense = (DENSE_FAMILIES as readonly string[]).includes(modelType);
      return {
        ...base,
        family: dense ? modelType : modelType || 'unknown',
        known: dense,
        moeIntermediateSize: 0,
        numExperts: dense ? 0 : numExperts,
        shared: null,
        routing: routing({ scoreFunc: 'softmax' }),
        isMoeLayer: () => false,
      };
    }
  }
}
