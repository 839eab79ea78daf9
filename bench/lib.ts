/** Shared helpers for `npm run bench`: synthetic checkpoints, timing, child processes. */
import { spawnSync, execFileSync } from 'node:child_process';
import { writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { writeCheckpoint, type WriteEntry } from '../src/store/safetensors/writer.js';
import type { Chunk } from '../src/store/pool.js';

export interface SynthSpec {
  layers: number;
  experts: number;
  hidden: number;
  inter: number;
}

/** Deterministic pseudo-random bf16 bytes (xorshift), generated chunk by chunk. */
function synthSource(nbytes: number, seed: number): () => AsyncIterable<Chunk> {
  return async function* () {
    const chunk = 8 * 1024 * 1024;
    let s = (seed * 2654435761) >>> 0 || 1;
    const buf = Buffer.allocUnsafe(chunk);
    const u32 = new Uint32Array(buf.buffer, buf.byteOffset, chunk / 4);
    for (let pos = 0; pos < nbytes; pos += chunk) {
      const n = Math.min(chunk, nbytes - pos);
      for (let i = 0; i < n / 4; i++) {
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        // two bf16 values with exponent around 2^-6, random sign/mantissa: sane weights
        u32[i] = ((s & 0x807f807f) | 0x3c003c00) >>> 0;
      }
      yield { data: buf.subarray(0, n) };
    }
  };
}

/** A dense Llama bf16 checkpoint (HF names, config.json): the source of `upcycle` in the bench. */
export async function writeSyntheticLlama(dir: string, spec: Omit<SynthSpec, 'experts'>): Promise<number> {
  const { layers, hidden: H, inter: I } = spec;
  const entries: WriteEntry[] = [];
  let seed = 101;
  const add = (name: string, shape: number[]) =>
    entries.push({ name, dtype: 'BF16', shape, source: synthSource(shape.reduce((a, b) => a * b, 1) * 2, seed++) });
  add('model.embed_tokens.weight', [1024, H]);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [H]);
    add(`${p}.post_attention_layernorm.weight`, [H]);
    for (const x of ['q', 'k', 'v', 'o']) add(`${p}.self_attn.${x}_proj.weight`, [H, H]);
    add(`${p}.mlp.gate_proj.weight`, [I, H]);
    add(`${p}.mlp.up_proj.weight`, [I, H]);
    add(`${p}.mlp.down_proj.weight`, [H, I]);
  }
  add('model.norm.weight', [H]);
  add('lm_head.weight', [1024, H]);
  const res = await writeCheckpoint(dir, entries, { metadata: { format: 'pt' }, fsync: false });
  const config = {
    model_type: 'llama',
    architectures: ['LlamaForCausalLM'],
    num_hidden_layers: layers,
    hidden_size: H,
    intermediate_size: I,
    num_attention_heads: H / 128,
    num_key_value_heads: H / 128,
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    vocab_size: 1024,
    dtype: 'bfloat16',
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return res.totalSize;
}

/** Families the bench writes synthetic MoE checkpoints of: every layer an MoE layer of the same expert bytes. */
export type SynthFamily = 'mixtral' | 'llama4' | 'gpt_oss';

/**
 * One layer's router and expert tensors (HF names, shapes) in the family's own layout: Mixtral per expert
 * w1 / w3 [I,H] and w2 [H,I]; Llama4 and GPT-OSS fused, transposed gate_up_proj [E,H,2I] (GPT-OSS's gate and
 * up interleaved) and down_proj [E,I,H] (converters/hf-llama4.ts, hf-gpt-oss.ts), GPT-OSS with its biases,
 * Llama4 with its shared expert.
 */
function moeLayer(family: SynthFamily, p: string, E: number, H: number, I: number): [string, number[]][] {
  if (family === 'mixtral') {
    const t: [string, number[]][] = [[`${p}.block_sparse_moe.gate.weight`, [E, H]]];
    for (let e = 0; e < E; e++) {
      const x = `${p}.block_sparse_moe.experts.${e}`;
      t.push([`${x}.w1.weight`, [I, H]], [`${x}.w2.weight`, [H, I]], [`${x}.w3.weight`, [I, H]]);
    }
    return t;
  }
  if (family === 'llama4') {
    const f = `${p}.feed_forward`;
    return [
      [`${f}.router.weight`, [E, H]],
      [`${f}.experts.gate_up_proj`, [E, H, 2 * I]],
      [`${f}.experts.down_proj`, [E, I, H]],
      [`${f}.shared_expert.gate_proj.weight`, [I, H]],
      [`${f}.shared_expert.up_proj.weight`, [I, H]],
      [`${f}.shared_expert.down_proj.weight`, [H, I]],
    ];
  }
  const m = `${p}.mlp`;
  return [
    [`${m}.router.weight`, [E, H]],
    [`${m}.router.bias`, [E]],
    [`${m}.experts.gate_up_proj`, [E, H, 2 * I]],
    [`${m}.experts.gate_up_proj_bias`, [E, 2 * I]],
    [`${m}.experts.down_proj`, [E, I, H]],
    [`${m}.experts.down_proj_bias`, [E, H]],
  ];
}

/** config.json of a synthetic checkpoint: the fields moekit's family table reads (src/families/index.ts). */
function synthConfig(family: SynthFamily, spec: SynthSpec): Record<string, unknown> {
  const { layers, experts, hidden: H, inter: I } = spec;
  const common = { num_hidden_layers: layers, hidden_size: H, intermediate_size: I, num_local_experts: experts, vocab_size: 1024, dtype: 'bfloat16' };
  if (family === 'llama4') {
    const all = Array.from({ length: layers }, (_, i) => i);
    return {
      model_type: 'llama4_text',
      architectures: ['Llama4ForCausalLM'],
      ...common,
      intermediate_size_mlp: 2 * I,
      num_experts_per_tok: 1,
      interleave_moe_layer_step: 1,
      moe_layers: all,
      hidden_act: 'silu',
    };
  }
  if (family === 'gpt_oss') return { model_type: 'gpt_oss', architectures: ['GptOssForCausalLM'], ...common, num_experts_per_tok: 4, hidden_act: 'silu' };
  return { model_type: 'mixtral', architectures: ['MixtralForCausalLM'], ...common, num_experts_per_tok: 2, hidden_act: 'silu' };
}

/** A bf16 MoE checkpoint (HF names, config.json) of the given shape in a family's own layout (default Mixtral). */
export async function writeSyntheticMixtral(dir: string, spec: SynthSpec, maxShardSize = 1 << 30, family: SynthFamily = 'mixtral'): Promise<number> {
  const { layers, experts, hidden: H, inter: I } = spec;
  const entries: WriteEntry[] = [];
  let seed = 1;
  const add = (name: string, shape: number[]) => {
    const nbytes = shape.reduce((a, b) => a * b, 1) * 2;
    entries.push({ name, dtype: 'BF16', shape, source: synthSource(nbytes, seed++) });
  };
  add('model.embed_tokens.weight', [1024, H]);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [H]);
    add(`${p}.post_attention_layernorm.weight`, [H]);
    add(`${p}.self_attn.q_proj.weight`, [H, H]);
    add(`${p}.self_attn.o_proj.weight`, [H, H]);
    for (const [name, shape] of moeLayer(family, p, experts, H, I)) add(name, shape);
  }
  add('model.norm.weight', [H]);
  add('lm_head.weight', [1024, H]);
  const res = await writeCheckpoint(dir, entries, { maxShardSize, metadata: { format: 'pt' }, fsync: false });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(synthConfig(family, spec), null, 2));
  return res.totalSize;
}

/** Run a command, return wall seconds. */
export function timeCmd(cmd: string, args: string[]): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status})`);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Run a node script that prints a JSON line; returns wall seconds and its JSON. */
export function timeNode(script: string, args: string[]): { seconds: number; out: Record<string, number> } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [script, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${script} failed (${r.status})`);
  const last = r.stdout.trim().split('\n').pop() ?? '{}';
  return { seconds, out: JSON.parse(last) as Record<string, number> };
}

export function rm(p: string): void {
  rmSync(p, { recursive: true, force: true });
}

export function syncAll(): void {
  execFileSync('sync');
}

export const fmt = (x: number, d = 2) => x.toFixed(d);
export const MB = 1024 * 1024;
