/**
 * Fast-LLM's `fast_llm` checkpoint format (ServiceNow/Fast-LLM fast_llm/engine/checkpoint/state_dict.py
 * FastLLMCheckpointHandler at 7d61a1b): a folder with metadata.yaml and model_<n>.safetensors (with
 * pipeline parallelism model_<pp>_<n>.safetensors) whose keys are "<parameter>/<shard>": `weights`, and
 * the optimizer states `exp_avgs` / `exp_avgs_sq` when saved. Each tensor is the whole (unsharded)
 * parameter. This store shows the `weights` shard under the parameter names and skips the others.
 * Without a config.json beside it, the MoE facts come from metadata.yaml (`config.base_model`:
 * hidden_size, decoder.num_blocks, decoder.block.mlp: type moe, experts (shared ones included), shared_experts,
 * experts_per_token, intermediate_size, gated, activation, routing, router_normalization,
 * router_input_scale; fast_llm/layers/decoder/mlp/config.py MoEMLPConfig), as a config of model_type
 * `fast_llm` (src/families/index.ts); `routing` "aux_loss" (the default, top-k then softmax over the k) vs
 * "sinkhorn" (refused). Checked against a metadata.yaml Fast-LLM 0.4.0 wrote (fixtures/fast_llm/mixtral).
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'yaml';
import { MoekitError } from '../errors.js';
import { DerivedStore } from './derived.js';
import { hfNames, mixtralConfigOf } from './fast-llm-names.js';
import { FAST_LLM_FILE } from './registry.js';
import { SafetensorsStore } from './safetensors/reader.js';
import type { TensorInfo, TensorStore } from './types.js';

const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {});

/** An HF-style config of model_type `fast_llm` from metadata.yaml's model config. */
function configFrom(meta: Record<string, unknown>, where: string): Record<string, unknown> {
  const base = obj(obj(meta.config).base_model);
  const decoder = obj(base.decoder);
  const mlp = obj(obj(decoder.block).mlp);
  const bad = (m: string): never => {
    throw new MoekitError('unsupported', `${where}: ${m}`);
  };
  if (mlp.type !== 'moe') bad(`decoder.block.mlp.type is '${String(mlp.type ?? 'mlp')}', not 'moe' (moekit reads Fast-LLM MoE checkpoints)`);
  if (mlp.routing === 'sinkhorn') bad('sinkhorn routing is not supported (moekit verifies top-k routing: routing aux_loss)');
  // experts counts the shared ones too: the router scores experts − shared_experts (config.py unshared_experts)
  const shared = Number(mlp.shared_experts ?? 0);
  const experts = Number(mlp.experts);
  if (!Number.isInteger(shared) || shared < 0 || !(shared < experts))
    bad(`shared_experts ${String(mlp.shared_experts)} is not a count below experts (${String(mlp.experts)})`);
  if (shared > 0 && obj(mlp.router_per_expert_scale).enabled === true)
    bad(`router_per_expert_scale with ${shared} shared experts is not supported (the scale would also weight the shared slots)`);
  const norm = obj(mlp.router_normalization).type;
  if (norm !== undefined && norm !== 'none' && norm !== 'fixed_rms_norm')
    bad(`router_normalization '${String(norm)}' is not supported (known: none, fixed_rms_norm)`);
  const gated = mlp.gated === true;
  // fast_llm/functional/config.py ActivationType: gelu is the tanh approximation; squared_relu is HF's relu2
  const act = String(mlp.activation ?? (gated ? 'silu' : 'gelu'));
  const hfAct: Record<string, string> = { silu: 'silu', gelu: 'gelu_pytorch_tanh', squared_relu: 'relu2' };
  if (!hfAct[act]) bad(`activation '${act}' is not supported (known: silu, gelu, squared_relu)`);
  if (!gated && act !== 'squared_relu') bad(`a non-gated '${act}' MLP is not supported (non-gated experts: squared_relu)`);
  const eps = obj(mlp.router_normalization).epsilon ?? obj(mlp.pre_norm).epsilon ?? 1e-5;
  return {
    model_type: 'fast_llm',
    hidden_size: base.hidden_size,
    num_hidden_layers: decoder.num_blocks,
    num_experts: experts - shared,
    ...(shared > 0 ? { n_shared_experts: shared } : {}),
    num_experts_per_tok: mlp.experts_per_token ?? 1,
    moe_intermediate_size: mlp.intermediate_size,
    hidden_act: hfAct[act],
    rms_norm_eps: eps,
    router_normalization: norm === 'fixed_rms_norm',
    ...(mlp.router_input_scale === undefined ? {} : { router_input_scale: mlp.router_input_scale }),
  };
}

export class FastLlmStore extends DerivedStore {
  /** each presented tensor: its `<parameter>/weights` entry and the byte offset of its rows there (k_proj / v_proj of key_value) */
  private readonly from = new Map<string, { inner: string; at: number }>();

  private constructor(
    inner: TensorStore,
    private readonly fastConfig: Record<string, unknown>,
    /** a Mixtral-architecture model: tensors outside the experts under their HF names (fast-llm-names.ts) */
    hf: boolean,
  ) {
    super(inner, 'Fast-LLM weights');
    const kvRows = hf ? Number(fastConfig.num_key_value_heads) * Number(fastConfig.head_dim) : 0;
    for (const t of inner.tensors.values()) {
      const cut = t.name.lastIndexOf('/');
      if (cut <= 0 || t.name.slice(cut + 1) !== 'weights') continue;
      const name = t.name.slice(0, cut);
      const names = hf ? (hfNames(name) ?? [name]) : [name];
      if (names.length === 2 && (t.shape.length !== 2 || t.shape[0] !== 2 * kvRows))
        throw new MoekitError(
          'bad-input',
          `${inner.dir}: '${name}' is ${JSON.stringify(t.shape)}, not the [2·${kvRows}, hidden] of metadata.yaml's head_groups × head_size`,
        );
      const rowBytes = names.length === 2 ? t.nbytes / t.shape[0]! : 0;
      names.forEach((n, i) => {
        const shape = names.length === 2 ? [kvRows, t.shape[1]!] : t.shape;
        const at = i * kvRows * rowBytes;
        const nbytes = names.length === 2 ? kvRows * rowBytes : t.nbytes;
        this.tensors.set(n, { ...t, name: n, shape, nbytes, ...(t.offset === undefined ? {} : { offset: t.offset + at }) });
        this.from.set(n, { inner: t.name, at });
      });
    }
    if (this.tensors.size === 0) throw new MoekitError('bad-input', `${inner.dir}: no '<parameter>/weights' tensor in the Fast-LLM checkpoint`);
  }

  static async open(dir: string): Promise<FastLlmStore> {
    const names = (await readdir(dir)).filter((n) => FAST_LLM_FILE.test(n)).sort();
    let meta: Record<string, unknown>;
    try {
      meta = obj(parse(await readFile(join(dir, 'metadata.yaml'), 'utf8'), { maxAliasCount: 100 }));
    } catch (e) {
      throw new MoekitError('bad-input', `${join(dir, 'metadata.yaml')}: not readable YAML (${(e as Error).message.split('\n')[0]})`);
    }
    const inner = await SafetensorsStore.openFiles(
      dir,
      names.map((n) => join(dir, n)),
    );
    try {
      const where = join(dir, 'metadata.yaml');
      const mixtral = inner.has('decoder.0.mixer.key_value.weight/weights') ? mixtralConfigOf(obj(obj(meta.config).base_model)) : undefined;
      return new FastLlmStore(inner, mixtral ?? configFrom(meta, where), mixtral !== undefined);
    } catch (e) {
      await inner.close();
      throw e;
    }
  }

  override get format(): string {
    return 'fast_llm';
  }

  /** Fast-LLM's own safetensors metadata (its config) describes this container, not what is converted from it. */
  override get metadata(): Record<string, string> {
    return { format: 'pt' };
  }

  read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const info = this.info(typeof t === 'string' ? t : t.name);
    const f = this.from.get(info.name)!;
    return this.inner.read(f.inner, f.at + start, f.at + (end ?? info.nbytes), into);
  }

  /** config.json beside the checkpoint when there is one (an HF twin), else the facts of metadata.yaml. */
  override async config(): Promise<Record<string, unknown> | undefined> {
    return (await this.inner.config()) ?? this.fastConfig;
  }
}
