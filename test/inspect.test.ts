import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES, fixtureNames, runCli } from './helpers.js';

type Cfg = Record<string, unknown>;
const cfg = (name: string): Cfg => JSON.parse(readFileSync(join(FIXTURES, name, 'config.json'), 'utf8')) as Cfg;
const n = (c: Cfg, ...keys: string[]) => keys.map((k) => c[k]).find((v) => typeof v === 'number') as number | undefined;

/** What config.json says each fixture is; inspect must agree with it (and with the tensors). */
function expected(name: string) {
  // multimodal models (qwen3_vl_moe, glm4v_moe) hold the text model's facts in text_config
  const outer = cfg(name);
  // Qwen3-Omni nests its text model one level deeper, in thinker_config.text_config
  const text = (outer.text_config ?? (outer.thinker_config as Cfg | undefined)?.text_config) as Cfg | undefined;
  const raw: Cfg = text ? { ...text, model_type: outer.model_type } : outer;
  // DBRX (configuration_dbrx.py) names its fields d_model / n_layers and nests the MoE ones in ffn_config
  const ffn = (raw.ffn_config ?? {}) as Cfg;
  const c: Cfg =
    raw.model_type === 'dbrx'
      ? {
          ...raw,
          num_hidden_layers: raw.n_layers,
          hidden_size: raw.d_model,
          num_experts: ffn.moe_num_experts,
          num_experts_per_tok: ffn.moe_top_k,
          intermediate_size: ffn.ffn_hidden_size,
        }
      : raw;
  const layers = c.num_hidden_layers as number;
  const all = Array.from({ length: layers }, (_, i) => i);
  const type = c.model_type as string;
  const dense = type === 'llama' || type === 'qwen3';
  const firstDense = ((c.first_k_dense_replace ?? c.num_dense_layers) as number | undefined) ?? 0;
  const types = c.mlp_layer_types as string[] | undefined;
  const moeLayers = Array.isArray(c.moe_layers)
    ? (c.moe_layers as number[])
    : types
      ? all.filter((i) => types[i] === 'sparse')
      : all.filter((i) => i >= firstDense);
  return {
    family: ['llama4_text', 'gemma4_text', 'qwen3_5_moe_text'].includes(type) ? type.replace('_text', '') : type, // one family, two model_types (text-only and multimodal)
    numLayers: layers,
    moeLayers: dense ? [] : moeLayers,
    numExperts: dense ? 0 : n(c, 'n_routed_experts', 'num_local_experts', 'num_experts', 'moe_num_experts'),
    topK: dense ? 0 : n(c, 'num_experts_per_tok', 'num_experts_per_token', 'moe_topk', 'moe_k', 'top_k_experts'),
    hiddenSize: c.hidden_size,
    // ERNIE-4.5-VL gives [text, vision] expert sizes; moekit reads the text experts
    moeIntermediateSize: dense ? 0 : Array.isArray(c.moe_intermediate_size) ? c.moe_intermediate_size[0] : n(c, 'moe_intermediate_size', 'intermediate_size'),
  };
}

describe('inspect --json agrees with config.json for every fixture', () => {
  for (const name of fixtureNames()) {
    it(name, () => {
      const r = runCli(['inspect', join(FIXTURES, name), '--json']);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      const want = expected(name);
      for (const [k, v] of Object.entries(want)) expect(j[k], k).toEqual(v);
      expect(j.warnings).toEqual([]);
      // total bytes is the sum of the tensors' sizes = file size minus headers
      const file = readFileSync(join(FIXTURES, name, 'model.safetensors'));
      expect(j.totalBytes).toBe(file.length - 8 - Number(file.readBigUInt64LE(0)));
      const c = cfg(name);
      const qc = c.quantization_config as Record<string, unknown> | undefined;
      expect(j.quantization?.method ?? null).toBe(qc ? qc.quant_method : null);
    });
  }

  it('layouts, shared experts, gate/up order', () => {
    const get = (name: string) => JSON.parse(runCli(['inspect', join(FIXTURES, name), '--json']).stdout);
    const mix = get('mixtral');
    expect([mix.layout, mix.gateUp, mix.sharedExperts]).toEqual(['hf-mixtral', 'separate', null]);
    const q2 = get('qwen2_moe');
    expect(q2.sharedExperts).toEqual({ count: 1, intermediateSize: cfg('qwen2_moe').shared_expert_intermediate_size, sigmoidGate: true });
    const ds = get('deepseek_v3');
    expect(ds.sharedExperts).toEqual({ count: 1, intermediateSize: 40, sigmoidGate: false });
    expect(ds.denseMlpLayers).toEqual([0]);
    expect(ds.routing).toMatchObject({ scoreFunc: 'sigmoid', nGroup: 4, topkGroup: 2, routedScalingFactor: 2.5, correctionBias: true });
    const oss = get('gpt_oss');
    expect([oss.layout, oss.gateUp, oss.activation]).toEqual(['hf-gpt-oss', 'interleaved', 'swiglu_oai']);
    expect(get('gpt_oss_mxfp4').dtypes).toEqual({ BF16: 33, U8: 8 });
    expect(get('deepseek_v3_fp8').dtypes.F8_E4M3).toBe(40);
    expect(get('llama_dense').layout).toBe('dense');
  });

  it('human output is a table', () => {
    const r = runCli(['inspect', join(FIXTURES, 'qwen2_moe')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^family\s+qwen2_moe$/m);
    expect(r.stdout).toMatch(/^shared experts\s+1 \(intermediate 56, sigmoid gate\)$/m);
  });

  it('says clearly what it does not recognise', async () => {
    const { tempDir } = await import('./helpers.js');
    const { writeCheckpoint, bufferSource } = await import('../src/store/safetensors/writer.js');
    const { writeFileSync } = await import('node:fs');
    const t = tempDir();
    await writeCheckpoint(t.dir, [{ name: 'encoder.block.0.weird.weight', dtype: 'F32', shape: [2], source: bufferSource(Buffer.alloc(8)) }]);
    writeFileSync(join(t.dir, 'config.json'), JSON.stringify({ model_type: 'mystery' }));
    const r = runCli(['inspect', t.dir]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/family\s+mystery \(not recognised\)/);
    expect(r.stdout).toMatch(/warning: no expert layout recognised/);
    t.cleanup();
  });

  it('missing path is a one-line error', () => {
    const r = runCli(['inspect', '/nonexistent/model']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('moekit: error: /nonexistent/model: no such file or folder');
  });
});
