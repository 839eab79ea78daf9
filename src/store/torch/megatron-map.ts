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
} as const;
export type KeyName = keyof typeof KEYS;

export interface Part {
  rowAt: number;
  key: string;
  prefix: number[];
  r0: number;
  rows: number;
}
export interface HfEntry {
  name: string;
  rows: number;
  rest: number[];
  /** none: an all-zero tensor Megatron does not store (Qwen2's q/k/v bias without --add-qkv-bias) */
  parts: Part[];
}

/** Every HF tensor of the model `d` describes, as row ranges of Megatron keys (`key` resolves a key's name). */
export function hfEntries(d: MegatronDims, key: (k: KeyName) => string): HfEntry[] {
  const f = FAMILIES[d.family]!;
  const out: HfEntry[] = [];
  const whole = (name: string, k: KeyName, prefix: number[], rows: number, rest: number[]) =>
    out.push({ name, rows, rest, parts: [{ rowAt: 0, key: key(k), prefix, r0: 0, rows }] });
  const rowsOf = (name: string, k: KeyName, prefix: number[], r0: number, rows: number, rest: number[]) =>
    out.push({ name, rows, rest, parts: [{ rowAt: 0, key: key(k), prefix, r0, rows }] });
  whole('model.embed_tokens.weight', 'embedding', [], d.V, [d.H]);
  if (d.output) whole('lm_head.weight', 'output', [], d.V, [d.H]);
  whole('model.norm.weight', 'finalNorm', [], d.H, []);
  const qpg = d.heads / d.groups;
  for (let l = 0; l < d.L; l++) {
    const p = `model.layers.${l}.`;
    whole(`${p}input_layernorm.weight`, 'inputNorm', [l], d.H, []);
    whole(`${p}post_attention_layernorm.weight`, 'preMlpNorm', [l], d.H, []);
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
          parts.push({ rowAt: g * n * d.hd, key: key(kind === 'weight' ? 'qkv' : 'qkvBias'), prefix: [l], r0: (g * (qpg + 2) + first) * d.hd, rows: n * d.hd });
        out.push({ name, rows: d.groups * n * d.hd, rest, parts });
      }
    }
    if (d.qkNorm) {
      whole(`${p}self_attn.q_norm.weight`, 'qNorm', [l], d.hd, []);
      whole(`${p}self_attn.k_norm.weight`, 'kNorm', [l], d.hd, []);
    }
    whole(`${p}self_attn.o_proj.weight`, 'proj', [l], d.H, [d.heads * d.hd]);
    const m = `${p}${f.moe}.`;
    whole(`${m}gate.weight`, 'router', [l], d.E, [d.H]);
    for (let e = 0; e < d.E; e++) {
      rowsOf(`${m}experts.${e}.${f.experts[0]}.weight`, 'fc1', [l, e], 0, d.I, [d.H]);
      rowsOf(`${m}experts.${e}.${f.experts[1]}.weight`, 'fc1', [l, e], d.I, d.I, [d.H]);
      whole(`${m}experts.${e}.${f.experts[2]}.weight`, 'fc2', [l, e], d.H, [d.I]);
    }
    if (d.Is === undefined || !f.shared) continue;
    const s = `${m}${f.shared}.`;
    rowsOf(`${s}${f.experts[0]}.weight`, 'sharedFc1', [l], 0, d.Is, [d.H]);
    rowsOf(`${s}${f.experts[1]}.weight`, 'sharedFc1', [l], d.Is, d.Is, [d.H]);
    whole(`${s}${f.experts[2]}.weight`, 'sharedFc2', [l], d.H, [d.Is]);
    if (d.sharedGate && f.sharedGate) whole(`${m}${f.sharedGate}.weight`, 'sharedGate', [l], 1, [d.H]);
  }
  return out;
}
