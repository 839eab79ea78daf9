/**
 * A whole Mixtral-architecture model under Fast-LLM's own parameter names, both ways, and the
 * metadata.yaml model config Fast-LLM writes for it (`--format fast_llm`).
 * Sources: ServiceNow/Fast-LLM at 7d61a1b (v0.4.0) fast_llm/models/gpt/conversion/llama.py (query ← q_proj,
 * key_value ← cat(k_proj, v_proj) rows (KeyValueWeightConverter), dense ← o_proj, norm_1 ← input_layernorm,
 * norm_2 ← post_attention_layernorm, embeddings.word_embeddings_weight ← embed_tokens, head.final_norm ←
 * model.norm, head.output_weights ← lm_head) and mixtral.py (the MoE MLP: converters/fast-llm.ts);
 * engine/checkpoint/state_dict.py (`<parameter>/<shard>` keys, metadata.yaml, the safetensors metadata).
 * Checked against fixtures/fast_llm/mixtral, which Fast-LLM 0.4.0 wrote from fixtures/hf/mixtral.
 */
import { MoekitError } from '../errors.js';

/** A float of the config (Python writes 1.0, not 1, and Fast-LLM's config fields are typed). */
class PyFloat {
  constructor(readonly x: number) {}
}
const F = (x: number): PyFloat => new PyFloat(x);

/** Python's repr of a float, as PyYAML then writes it (1e-05 → 1.0e-05). */
function pyFloat(x: number): string {
  let r: string;
  if (!Number.isFinite(x)) r = Number.isNaN(x) ? '.nan' : x > 0 ? '.inf' : '-.inf';
  else if (Number.isInteger(x) && Math.abs(x) < 1e16) r = x.toFixed(1);
  else {
    const [mant, e] = x.toExponential().split('e') as [string, string];
    const exp = Number(e);
    r = exp < -4 || exp >= 16 ? `${mant}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}` : String(x);
  }
  return !r.includes('.') && r.includes('e') ? r.replace('e', '.0e') : r;
}

/** a string PyYAML writes unquoted: word characters, dots, slashes and dashes that YAML 1.1 would not read as a number, bool or null */
const plain = (s: string): boolean =>
  /^[\w][\w./-]*$/.test(s) && !/^(?:null|true|false|yes|no|on|off|y|n)$/i.test(s) && !/^[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:e[-+]?\d+)?$/i.test(s);

/** YAML as PyYAML's yaml.safe_dump writes it (block style, keys sorted, sequences at their key's indent): how Fast-LLM writes metadata.yaml. */
function pyYaml(v: unknown, indent = 0): string {
  const pad = ' '.repeat(indent);
  const scalar = (x: unknown): string =>
    x === null || x === undefined
      ? 'null'
      : x instanceof PyFloat
        ? pyFloat(x.x)
        : typeof x === 'boolean'
          ? String(x)
          : typeof x === 'number'
            ? Number.isInteger(x)
              ? String(x)
              : pyFloat(x)
            : plain(String(x))
              ? String(x)
              : `'${String(x).replace(/'/g, "''")}'`;
  const isMap = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof PyFloat);
  if (Array.isArray(v)) return v.map((x) => `${pad}- ${scalar(x)}\n`).join('');
  if (!isMap(v)) return `${pad}${scalar(v)}\n`;
  let out = '';
  for (const k of Object.keys(v).sort()) {
    const x = v[k];
    if (isMap(x)) out += Object.keys(x).length ? `${pad}${scalar(k)}:\n${pyYaml(x, indent + 2)}` : `${pad}${scalar(k)}: {}\n`;
    else if (Array.isArray(x)) out += x.length ? `${pad}${scalar(k)}:\n${pyYaml(x, indent)}` : `${pad}${scalar(k)}: []\n`;
    else out += `${pad}${scalar(k)}: ${scalar(x)}\n`;
  }
  return out;
}

/** HF Mixtral's whole-model tensors outside the layers, and Fast-LLM's names for them. */
const TOP_NAMES: readonly [hf: string, fast: string][] = [
  ['model.embed_tokens.weight', 'embeddings.word_embeddings_weight'],
  ['model.norm.weight', 'head.final_norm.weight'],
  ['lm_head.weight', 'head.output_weights'],
];
/** Per layer (after model.layers.<n>. / decoder.<n>.): k_proj's rows, then v_proj's, are key_value. */
const LAYER_NAMES: readonly [hf: string, fast: string, kv?: 'k' | 'v'][] = [
  ['input_layernorm.weight', 'norm_1.weight'],
  ['post_attention_layernorm.weight', 'norm_2.weight'],
  ['self_attn.q_proj.weight', 'mixer.query.weight'],
  ['self_attn.k_proj.weight', 'mixer.key_value.weight', 'k'],
  ['self_attn.v_proj.weight', 'mixer.key_value.weight', 'v'],
  ['self_attn.o_proj.weight', 'mixer.dense.weight'],
];

/** Fast-LLM's name of one HF Mixtral tensor outside the experts, or undefined; k_proj / v_proj become one key_value. */
function fastLlmName(hf: string): { name: string; kv?: 'k' | 'v' } | undefined {
  const top = TOP_NAMES.find(([h]) => h === hf);
  if (top) return { name: top[1] };
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  const p = m && LAYER_NAMES.find(([h]) => h === m[2]);
  return p ? { name: `decoder.${m![1]}.${p[1]}`, ...(p[2] ? { kv: p[2] } : {}) } : undefined;
}

/** The HF names of a Fast-LLM tensor outside the experts (key_value: k_proj's, then v_proj's), or undefined. */
export function hfNames(fast: string): string[] | undefined {
  const top = TOP_NAMES.find(([, f]) => f === fast);
  if (top) return [top[0]];
  const m = /^decoder\.(\d+)\.(.+)$/.exec(fast);
  const names = m ? LAYER_NAMES.filter(([, f]) => f === m[2]).map(([h]) => `model.layers.${m[1]}.${h}`) : [];
  return names.length ? names : undefined;
}

const num = (c: Record<string, unknown>, k: string): number | undefined => (typeof c[k] === 'number' ? (c[k] as number) : undefined);

/** Fast-LLM's `config` (base_model, distributed, type) of an HF Mixtral config.json, as its Mixtral converter exports it. */
function fastLlmConfig(c: Record<string, unknown>, E: number, topK: number, I: number): Record<string, unknown> {
  const bad = (m: string): never => {
    throw new MoekitError('unsupported', `--format fast_llm: ${m}`);
  };
  const H = num(c, 'hidden_size') ?? bad('config.json has no hidden_size');
  const heads = num(c, 'num_attention_heads') ?? bad('config.json has no num_attention_heads');
  const rope = (c.rope_parameters ?? {}) as Record<string, unknown>;
  const ropeType = String(rope.rope_type ?? (c.rope_scaling as Record<string, unknown> | undefined)?.rope_type ?? 'default');
  if (ropeType !== 'default') bad(`rope type '${ropeType}' (moekit writes Fast-LLM's default rotary only)`);
  if (c.hidden_act !== undefined && c.hidden_act !== 'silu') bad(`hidden_act '${String(c.hidden_act)}' (Mixtral's experts are SiLU-gated)`);
  const norm = () => ({ epsilon: F(num(c, 'rms_norm_eps') ?? 1e-5), type: 'rms_norm', zero_centered: false });
  return {
    base_model: {
      decoder: {
        block: {
          mixer: {
            add_linear_biases: false,
            causal: true,
            dropout: F(0),
            head_groups: num(c, 'num_key_value_heads') ?? heads,
            head_size: num(c, 'head_dim') ?? H / heads,
            heads,
            key_norm: null,
            query_norm: null,
            rotary: { theta: F(num(rope, 'rope_theta') ?? num(c, 'rope_theta') ?? 1e6), type: 'default' },
            shared_key_value: false,
            softmax_scale_power: F(0.5),
            type: 'attention',
            value_norm: null,
            window_size: num(c, 'sliding_window') ?? null,
          },
          mlp: {
            activation: 'silu',
            add_linear_biases: false,
            experts: E,
            experts_per_token: topK,
            gated: true,
            intermediate_size: I,
            post_norm: null,
            pre_norm: null,
            router_input_scale: F(1),
            router_normalization: null,
            routing: 'aux_loss',
            shared_experts: 0,
            type: 'moe',
          },
          normalization: norm(),
          post_mixer_normalization: null,
          post_mlp_normalization: null,
          pre_mixer_normalization: null,
          pre_mlp_normalization: null,
          type: 'decoder',
        },
        num_blocks: num(c, 'num_hidden_layers') ?? bad('config.json has no num_hidden_layers'),
        type: 'fixed',
      },
      embeddings: { embedding_scale: F(1), vocab_size: num(c, 'vocab_size') ?? bad('config.json has no vocab_size') },
      head: { final_logit_softcap: null, normalization: norm(), prediction_heads: 1 },
      hidden_size: H,
      peft: { type: 'none' },
      tied_embedding_weight: c.tie_word_embeddings === true,
    },
    distributed: { local_world_size: 1, rank: 0, use_cuda: false, world_size: 1 },
    type: 'gpt',
  };
}

/** The HF Mixtral config.json of a Fast-LLM model config whose blocks are Llama attention + a SiLU-gated MoE, else undefined. */
export function mixtralConfigOf(base: Record<string, unknown>): Record<string, unknown> | undefined {
  const o = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {});
  const block = o(o(base.decoder).block);
  const mixer = o(block.mixer);
  const mlp = o(block.mlp);
  const norm = o(block.normalization);
  const rotary = o(mixer.rotary);
  const plain =
    mixer.type === 'attention' &&
    !mixer.add_linear_biases &&
    !mixer.query_norm &&
    !mixer.key_norm &&
    (rotary.type ?? 'default') === 'default' &&
    mlp.type === 'moe' &&
    mlp.gated === true &&
    (mlp.activation ?? 'silu') === 'silu' &&
    !mlp.router_normalization &&
    (mlp.routing ?? 'aux_loss') === 'aux_loss' &&
    o(mlp.router_scale).enabled !== true &&
    o(mlp.router_per_expert_scale).enabled !== true &&
    !mlp.pre_norm &&
    !mlp.post_norm &&
    Number(mlp.shared_experts ?? 0) === 0 &&
    (mlp.router_input_scale ?? 1) === 1 &&
    norm.type === 'rms_norm' &&
    !norm.zero_centered &&
    !block.pre_mixer_normalization &&
    !block.post_mixer_normalization &&
    !block.pre_mlp_normalization &&
    !block.post_mlp_normalization &&
    (o(base.embeddings).embedding_scale ?? 1) === 1 &&
    !o(base.head).final_logit_softcap;
  if (!plain) return undefined;
  const heads = Number(mixer.heads);
  const H = Number(base.hidden_size);
  return {
    architectures: ['MixtralForCausalLM'],
    model_type: 'mixtral',
    hidden_size: H,
    intermediate_size: mlp.intermediate_size,
    num_hidden_layers: o(base.decoder).num_blocks,
    num_attention_heads: heads,
    num_key_value_heads: mixer.head_groups ?? heads,
    head_dim: mixer.head_size ?? H / heads,
    num_local_experts: mlp.experts,
    num_experts_per_tok: mlp.experts_per_token ?? 1,
    vocab_size: o(base.embeddings).vocab_size,
    rms_norm_eps: norm.epsilon ?? 1e-5,
    rope_parameters: { rope_theta: rotary.theta ?? 10000, rope_type: 'default' },
    sliding_window: mixer.window_size ?? null,
    tie_word_embeddings: base.tied_embedding_weight === true,
    hidden_act: 'silu',
  };
}

/** What `--format fast_llm` changes in a planned fast-llm-layout checkpoint: the names, one key_value per layer, the metadata. */
export interface FastLlmContainer<T> {
  tensors: T[];
  /** the safetensors `__metadata__` Fast-LLM writes into every weight file */
  metadata: Record<string, string>;
  /** metadata.yaml, given which file holds each tensor */
  metadataYaml: (weightMap: Record<string, string>) => string;
}

/**
 * The planned tensors of an HF Mixtral → `fast-llm` conversion as Fast-LLM's own checkpoint: every tensor
 * under `<Fast-LLM name>/weights`, k_proj and v_proj joined into key_value (their slabs one after the other).
 * `join` makes one planned tensor of two (rows stacked); the caller's plan type stays opaque here.
 */
export function fastLlmContainer<T extends { name: string; shape: number[] }>(
  tensors: T[],
  config: Record<string, unknown>,
  moe: { E: number; topK: number; I: number },
  join: (name: string, k: T, v: T) => T,
): FastLlmContainer<T> {
  if (config.model_type !== 'mixtral')
    throw new MoekitError(
      'unsupported',
      `--format fast_llm writes Mixtral-architecture models (Fast-LLM's mixtral converter's names); this is '${String(config.model_type)}': write --to fast-llm as safetensors`,
    );
  const out: T[] = [];
  const kv = new Map<string, { k?: T; v?: T }>();
  for (const t of tensors) {
    if (/^decoder\.\d+\.mlp\./.test(t.name)) {
      out.push({ ...t, name: `${t.name}/weights` });
      continue;
    }
    const f = fastLlmName(t.name);
    if (!f)
      throw new MoekitError(
        'unsupported',
        `--format fast_llm: no Fast-LLM name for '${t.name}' (a Mixtral checkpoint has embeddings, attention, norms, experts and lm_head only)`,
      );
    if (!f.kv) {
      out.push({ ...t, name: `${f.name}/weights` });
      continue;
    }
    const pair = kv.get(f.name) ?? {};
    pair[f.kv] = t;
    kv.set(f.name, pair);
  }
  for (const [name, { k, v }] of kv) {
    if (!k || !v) throw new MoekitError('bad-input', `--format fast_llm: ${name} needs both k_proj and v_proj; one is missing`);
    out.push(join(`${name}/weights`, k, v));
  }
  out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const cfg = fastLlmConfig(config, moe.E, moe.topK, moe.I);
  // in the order Fast-LLM puts them into the safetensors metadata
  const head = { fast_llm_version: '0.4.0', model: 'gpt', format: 'fast_llm' };
  return {
    tensors: out,
    metadata: { metadata: '{}\n', config: pyYaml(cfg), shards: '- weights\n', ...head },
    metadataYaml: (weightMap) =>
      pyYaml({ config: cfg, ...head, metadata: { state_index: Object.fromEntries(out.map((t) => [t.name, weightMap[t.name]])) }, shards: ['weights'] }),
  };
}
