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

/** A Mixtral-layout bf16 checkpoint (HF names, config.json) of the given shape. */
export async function writeSyntheticMixtral(dir: string, spec: SynthSpec, maxShardSize = 1 << 30): Promise<number> {
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
    add(`${p}.block_sparse_moe.gate.weight`, [experts, H]);
    for (let e = 0; e < experts; e++) {
      add(`${p}.block_sparse_moe.experts.${e}.w1.weight`, [I, H]);
      add(`${p}.block_sparse_moe.experts.${e}.w2.weight`, [H, I]);
      add(`${p}.block_sparse_moe.experts.${e}.w3.weight`, [I, H]);
    }
  }
  add('model.norm.weight', [H]);
  add('lm_head.weight', [1024, H]);
  const res = await writeCheckpoint(dir, entries, { maxShardSize, metadata: { format: 'pt' }, fsync: false });
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify(
      {
        model_type: 'mixtral',
        architectures: ['MixtralForCausalLM'],
        num_hidden_layers: layers,
        hidden_size: H,
        intermediate_size: I,
        num_local_experts: experts,
        num_experts_per_tok: 2,
        hidden_act: 'silu',
        vocab_size: 1024,
        dtype: 'bfloat16',
      },
      null,
      2,
    ),
  );
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
