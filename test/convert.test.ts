/**
 * moekit convert: every fixture through every layout and back, byte-identical per tensor; all
 * pairs of layouts; --gate-up interleaved; --dtype; synthetic checkpoints of the families without a
 * fixture; refusals (unknown layout, mixed shapes, lossy, quantized, existing destination).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, existsSync, readFileSync, readdirSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { convert } from '../src/ops/convert.js';
import { inspectCheckpoint } from '../src/ops/inspect.js';
import { openStore } from '../src/store/registry.js';
import { TARGET_NAMES } from '../converters/index.js';
import { FIXTURES, fixtureNames, dump, diff, tempDir, cli, synth, type Dumped } from './convert-helpers.js';
import { runCli } from './helpers.js';

const NON_HF = TARGET_NAMES.filter((t) => t !== 'hf');
const tmp = tempDir();
afterAll(() => tmp.cleanup());
let seq = 0;
const out = (tag: string) => join(tmp.dir, `${seq++}-${tag}`);
const conv = (src: string, to: string, extra: Parameters<typeof convert>[2] extends infer O ? Partial<O> : never = {}) => {
  const dst = out(to);
  return convert(src, dst, { to, fsync: false, ...extra }).then(() => dst);
};

/**
 * What each source cannot go to, and why (written from the layouts' documented slots, not from the
 * code): GPT-OSS has expert and router biases; Qwen2-MoE a shared-expert gate; DeepSeek / GLM /
 * MiniMax a score-correction bias — flashfusemoe and megatron-grouped have no slot for some of them.
 */
const REFUSE: Record<string, Record<string, RegExp>> = {
  gpt_oss: {
    'megatron-grouped': /no place for the expert gate biases, expert up biases, expert down biases/,
    flashfusemoe: /no place for the router bias, expert gate biases/,
    'hf-fused': /no place for the router bias, expert gate biases/,
  },
  qwen2_moe: { flashfusemoe: /no place for the shared-expert gate/, 'hf-fused': /no place for the shared-expert gate/ },
  deepseek_v3: { flashfusemoe: /no place for the score-correction bias/ },
  deepseek_v3_bf16: { flashfusemoe: /no place for the score-correction bias/ },
  minimax_m2: { flashfusemoe: /no place for the score-correction bias/ },
  glm4_moe: { flashfusemoe: /no place for the score-correction bias/ },
  dots1: { flashfusemoe: /no place for the score-correction bias/ },
  ernie4_5_moe: { flashfusemoe: /no place for the score-correction bias/ },
  deepseek_v32: { flashfusemoe: /no place for the score-correction bias/ },
  glm4_moe_lite: { flashfusemoe: /no place for the score-correction bias/ },
  glm_moe_dsa: { flashfusemoe: /no place for the score-correction bias/ },
  exaone_moe: { flashfusemoe: /no place for the score-correction bias/ },
  afmoe: { flashfusemoe: /no place for the score-correction bias/ },
  glm4v_moe: { flashfusemoe: /no place for the score-correction bias/ },
  lfm2_moe: { flashfusemoe: /no place for the score-correction bias/ },
  solar_open: { flashfusemoe: /no place for the score-correction bias/ },
  // its shared MLP (96) is no whole number of expert slots (40)
  granitemoehybrid: { 'fast-llm': /shared expert has intermediate size 96, not a multiple of the routed experts' 40/ },
  qwen3_next: { flashfusemoe: /no place for the shared-expert gate/, 'hf-fused': /no place for the shared-expert gate/ },
  qwen3_5_moe: { flashfusemoe: /no place for the shared-expert gate/, 'hf-fused': /no place for the shared-expert gate/ },
  // JetMoE's block output bias (mlp.bias) has no slot in any framework layout
  jetmoe: Object.fromEntries(NON_HF.map((t) => [t, /no place for the block output bias/])),
  // Gemma-4's router input scale (and per-expert scale, block norms) likewise, but for Fast-LLM, which has all four
  gemma4_text: Object.fromEntries(NON_HF.filter((t) => t !== 'fast-llm').map((t) => [t, /no place for the router input scale/])),
  // A.X-K1's post-MLP norm is part of the block moekit verifies; no framework layout has a slot for it
  axk1: Object.fromEntries(NON_HF.map((t) => [t, /no place for the (score-correction bias, )?block output norm|no place for the score-correction bias/])),
  granitemoe_swa: { 'fast-llm': /shared expert has intermediate size 96, not a multiple of the routed experts' 40/ },
  qwen4_exp: { flashfusemoe: /no place for the shared-expert gate/, 'hf-fused': /no place for the shared-expert gate/ },
};
// Fast-LLM keeps a shared expert as extra expert slots weighted 1 (engine/shared-slots.ts), and has no biases
// and no shared-expert gate: families with a score-correction bias or a gated shared expert go elsewhere
for (const f of [
  'deepseek_v3',
  'deepseek_v3_bf16',
  'deepseek_v32',
  'dots1',
  'glm4_moe',
  'glm4_moe_lite',
  'glm_moe_dsa',
  'exaone_moe',
  'afmoe',
  'ernie4_5_moe',
  'glm4v_moe',
  'lfm2_moe',
  'solar_open',
  'axk2',
  'ernie4_5_vl_moe',
  'glm5_next',
  'hy_v3',
  'kimi_linear',
  'laguna',
  'mimo_v2_flash',
  'minimax_m3_vl',
  'step3p7',
])
  REFUSE[f] = { ...REFUSE[f], 'fast-llm': /no place for the score-correction bias/ };
for (const f of ['axk2', 'ernie4_5_vl_moe', 'glm5_next', 'hy_v3', 'kimi_linear', 'laguna', 'mimo_v2_flash', 'minimax_m3_vl', 'step3p7'])
  REFUSE[f] = { ...REFUSE[f], flashfusemoe: /no place for the score-correction bias/ };
for (const f of ['qwen2_moe', 'qwen3_next', 'qwen3_5_moe', 'qwen4_exp'])
  REFUSE[f] = { ...REFUSE[f], 'fast-llm': /keeps shared experts as expert slots weighted 1, and layer 0's shared expert has a sigmoid gate/ };
REFUSE.minimax_m2 = { ...REFUSE.minimax_m2, 'fast-llm': /no place for the score-correction bias/ };
REFUSE.gpt_oss = { ...REFUSE.gpt_oss, 'fast-llm': /no place for the router bias/ };
const QUANTIZED = new Set(['deepseek_v3_fp8', 'gpt_oss_mxfp4']);
const DENSE = new Set(['llama_dense', 'qwen3_dense']);

// ---- synthetic checkpoints of families with no fixture, from their documented names/shapes ----
const H = 16;
const I = 8;
const E = 4;
function perExpert(prefix: string, names: [string, string, string], n = E): Record<string, number[]> {
  const t: Record<string, number[]> = {};
  for (let e = 0; e < n; e++) {
    t[`${prefix}experts.${e}.${names[0]}`] = [I, H];
    t[`${prefix}experts.${e}.${names[1]}`] = [I, H];
    t[`${prefix}experts.${e}.${names[2]}`] = [H, I];
  }
  return t;
}
const common = (root: string, l: number): Record<string, number[]> => ({
  [`${root}layers.${l}.input_layernorm.weight`]: [H],
  [`${root}layers.${l}.self_attn.q_proj.weight`]: [H, H],
  [`${root}layers.${l}.self_attn.o_proj.weight`]: [H, H],
});
const SYNTH: Record<string, { config: Record<string, unknown>; tensors: () => Record<string, number[]> }> = {
  // transformers modeling_phimoe.py: block_sparse_moe.gate / experts.<e>.w1,w2,w3; LayerNorm with bias
  phimoe: {
    config: {
      model_type: 'phimoe',
      num_hidden_layers: 2,
      hidden_size: H,
      intermediate_size: I,
      num_local_experts: E,
      num_experts_per_tok: 2,
      hidden_act: 'silu',
    },
    tensors: () => {
      const t: Record<string, number[]> = {
        'model.embed_tokens.weight': [32, H],
        'model.norm.weight': [H],
        'model.norm.bias': [H],
        'lm_head.weight': [32, H],
        'lm_head.bias': [32],
      };
      for (const l of [0, 1])
        Object.assign(
          t,
          common('model.', l),
          { [`model.layers.${l}.input_layernorm.bias`]: [H], [`model.layers.${l}.block_sparse_moe.gate.weight`]: [E, H] },
          perExpert(`model.layers.${l}.block_sparse_moe.`, ['w1.weight', 'w3.weight', 'w2.weight']),
        );
      return t;
    },
  },
  // MiniMax-M2: block_sparse_moe.gate, block_sparse_moe.e_score_correction_bias, experts w1/w3/w2
  minimax_m2: {
    config: {
      model_type: 'minimax_m2',
      num_hidden_layers: 2,
      hidden_size: H,
      intermediate_size: I,
      num_local_experts: E,
      num_experts_per_tok: 2,
      hidden_act: 'silu',
      scoring_func: 'sigmoid',
    },
    tensors: () => {
      const t: Record<string, number[]> = { 'model.embed_tokens.weight': [32, H], 'model.norm.weight': [H], 'lm_head.weight': [32, H] };
      for (const l of [0, 1]) {
        Object.assign(t, common('model.', l), {
          [`model.layers.${l}.block_sparse_moe.gate.weight`]: [E, H],
          [`model.layers.${l}.block_sparse_moe.e_score_correction_bias`]: [E],
        });
        Object.assign(t, perExpert(`model.layers.${l}.block_sparse_moe.`, ['w1.weight', 'w3.weight', 'w2.weight']));
      }
      return t;
    },
  },
  // transformers modeling_glm4_moe.py: first_k_dense_replace dense layers, mlp.gate(+e_score_correction_bias), shared_experts
  glm4_moe: {
    config: {
      model_type: 'glm4_moe',
      num_hidden_layers: 3,
      hidden_size: H,
      intermediate_size: 24,
      moe_intermediate_size: I,
      n_routed_experts: E,
      n_shared_experts: 1,
      num_experts_per_tok: 2,
      first_k_dense_replace: 1,
      n_group: 1,
      topk_group: 1,
      routed_scaling_factor: 1.8,
      norm_topk_prob: true,
      hidden_act: 'silu',
    },
    tensors: () => {
      const t: Record<string, number[]> = { 'model.embed_tokens.weight': [32, H], 'model.norm.weight': [H], 'lm_head.weight': [32, H] };
      Object.assign(t, common('model.', 0), {
        'model.layers.0.mlp.gate_proj.weight': [24, H],
        'model.layers.0.mlp.up_proj.weight': [24, H],
        'model.layers.0.mlp.down_proj.weight': [H, 24],
      });
      for (const l of [1, 2]) {
        Object.assign(t, common('model.', l), { [`model.layers.${l}.mlp.gate.weight`]: [E, H], [`model.layers.${l}.mlp.gate.e_score_correction_bias`]: [E] });
        Object.assign(t, perExpert(`model.layers.${l}.mlp.`, ['gate_proj.weight', 'up_proj.weight', 'down_proj.weight']));
        Object.assign(t, {
          [`model.layers.${l}.mlp.shared_experts.gate_proj.weight`]: [I, H],
          [`model.layers.${l}.mlp.shared_experts.up_proj.weight`]: [I, H],
          [`model.layers.${l}.mlp.shared_experts.down_proj.weight`]: [H, I],
        });
      }
      return t;
    },
  },
  // transformers modeling_olmoe.py: mlp.gate, mlp.experts.<e>.gate_proj/up_proj/down_proj, q_norm/k_norm
  olmoe: {
    config: { model_type: 'olmoe', num_hidden_layers: 2, hidden_size: H, intermediate_size: I, num_experts: E, num_experts_per_tok: 2, hidden_act: 'silu' },
    tensors: () => {
      const t: Record<string, number[]> = { 'model.embed_tokens.weight': [32, H], 'model.norm.weight': [H], 'lm_head.weight': [32, H] };
      for (const l of [0, 1]) {
        Object.assign(t, common('model.', l), { [`model.layers.${l}.self_attn.q_norm.weight`]: [H], [`model.layers.${l}.mlp.gate.weight`]: [E, H] });
        Object.assign(t, perExpert(`model.layers.${l}.mlp.`, ['gate_proj.weight', 'up_proj.weight', 'down_proj.weight']));
      }
      return t;
    },
  },
  // transformers modeling_llama4.py: feed_forward.router, experts.gate_up_proj [E,H,2I], down_proj [E,I,H], shared_expert;
  // Llama4ForConditionalGeneration keeps the text model under language_model.model.
  llama4: {
    config: {
      model_type: 'llama4',
      text_config: {
        model_type: 'llama4_text',
        num_hidden_layers: 2,
        hidden_size: H,
        intermediate_size: I,
        intermediate_size_mlp: 24,
        num_local_experts: E,
        num_experts_per_tok: 1,
        interleave_moe_layer_step: 1,
        hidden_act: 'silu',
      },
    },
    tensors: () => {
      const r = 'language_model.model.';
      const t: Record<string, number[]> = {
        [`${r}embed_tokens.weight`]: [32, H],
        [`${r}norm.weight`]: [H],
        'language_model.lm_head.weight': [32, H],
        'vision_model.patch_embedding.linear.weight': [H, 12],
      };
      for (const l of [0, 1]) {
        Object.assign(t, common(r, l), {
          [`${r}layers.${l}.feed_forward.router.weight`]: [E, H],
          [`${r}layers.${l}.feed_forward.experts.gate_up_proj`]: [E, H, 2 * I],
          [`${r}layers.${l}.feed_forward.experts.down_proj`]: [E, I, H],
          [`${r}layers.${l}.feed_forward.shared_expert.gate_proj.weight`]: [I, H],
          [`${r}layers.${l}.feed_forward.shared_expert.up_proj.weight`]: [I, H],
          [`${r}layers.${l}.feed_forward.shared_expert.down_proj.weight`]: [H, I],
        });
      }
      return t;
    },
  },
  // transformers modeling_granitemoe.py: block_sparse_moe.router.layer, input_linear [E,2I,H], output_linear [E,H,I]
  granitemoe: {
    config: {
      model_type: 'granitemoe',
      num_hidden_layers: 2,
      hidden_size: H,
      intermediate_size: I,
      num_local_experts: E,
      num_experts_per_tok: 2,
      hidden_act: 'silu',
    },
    tensors: () => {
      const t: Record<string, number[]> = { 'model.embed_tokens.weight': [32, H], 'model.norm.weight': [H] };
      for (const l of [0, 1]) {
        Object.assign(t, common('model.', l), {
          [`model.layers.${l}.block_sparse_moe.router.layer.weight`]: [E, H],
          [`model.layers.${l}.block_sparse_moe.input_linear.weight`]: [E, 2 * I, H],
          [`model.layers.${l}.block_sparse_moe.output_linear.weight`]: [E, H, I],
        });
      }
      return t;
    },
  },
};

const SOURCES: Record<string, string> = {};
beforeAll(async () => {
  for (const f of fixtureNames()) SOURCES[f] = join(FIXTURES, f);
  for (const [name, s] of Object.entries(SYNTH)) {
    const dir = join(tmp.dir, `synth-${name}`);
    mkdirSync(dir);
    await synth(dir, s.config, s.tensors());
    SOURCES[name] = dir;
  }
});

const dumps = new Map<string, Map<string, Dumped>>();
const srcDump = async (name: string) => {
  let d = dumps.get(name);
  if (!d) dumps.set(name, (d = await dump(SOURCES[name]!)));
  return d;
};
const ALL = [...fixtureNames(), ...Object.keys(SYNTH)];
const MOE = ALL.filter((n) => !QUANTIZED.has(n) && !DENSE.has(n));
const allowed = (name: string, to: string) => !REFUSE[name]?.[to];

/** src → L outputs, kept for the pair tests. */
const firstHop = new Map<string, string>();

describe('every source → every layout → hf is byte-identical', () => {
  for (const name of ALL) {
    it(name, async () => {
      const src = SOURCES[name]!;
      if (DENSE.has(name)) {
        for (const to of TARGET_NAMES) await expect(conv(src, to)).rejects.toThrow(/no expert tensors/);
        return;
      }
      const want = await srcDump(name);
      for (const to of TARGET_NAMES) {
        if (QUANTIZED.has(name) && to !== 'hf') {
          await expect(conv(src, to)).rejects.toThrow(/(128-row scale block|is mxfp4|reinterpreted).*: moekit dequant .* --to/);
          continue;
        }
        const re = REFUSE[name]?.[to];
        if (re) {
          await expect(conv(src, to)).rejects.toThrow(re);
          continue;
        }
        const mid = await conv(src, to);
        firstHop.set(`${name}:${to}`, mid);
        if (to !== 'hf') {
          // the middle really is in the target layout (no HF expert names left)
          // ERNIE-4.5-VL's vision experts (8..15) pass through under their HF names by design
          const names = [...(await dump(mid)).keys()].filter((n) => name !== 'ernie4_5_vl_moe' || !/experts\.(8|9|1[0-5])\./.test(n));
          const hfNames = /experts\.\d+\.(w1|gate_proj)|block_sparse_moe\.input_linear|feed_forward\.experts\.gate_up_proj|mlp\.experts\.gate_up_proj$/;
          // hf-fused shares GPT-OSS's fused names by design; every other layout must rename them
          if (to !== 'hf-fused')
            expect(
              names.some((n) => hfNames.test(n)),
              `${name} → ${to}`,
            ).toBe(false);
        }
        const back = await conv(mid, 'hf');
        expect(diff(want, await dump(back)), `${name} → ${to} → hf`).toEqual([]);
      }
    });
  }
});

describe('all pairs: src → L1 → L2 → hf is byte-identical', () => {
  for (const name of MOE) {
    it(name, async () => {
      const want = await srcDump(name);
      let n = 0;
      for (const l1 of NON_HF) {
        if (!allowed(name, l1)) continue;
        const mid = firstHop.get(`${name}:${l1}`) ?? (await conv(SOURCES[name]!, l1));
        for (const l2 of NON_HF) {
          if (l2 === l1) continue;
          if (!allowed(name, l2)) {
            await expect(conv(mid, l2)).rejects.toThrow(REFUSE[name]![l2]!);
            continue;
          }
          const back = await conv(await conv(mid, l2), 'hf');
          expect(diff(want, await dump(back)), `${name} → ${l1} → ${l2} → hf`).toEqual([]);
          n++;
        }
      }
      // JetMoE goes nowhere but its own HF layout, Gemma-4 only to fast-llm (their refusals are checked above)
      expect(n > 0 || NON_HF.filter((l) => allowed(name, l)).length <= 1).toBe(true);
    });
  }
});

describe('gate/up order and orientation', () => {
  it('--gate-up interleaved really interleaves, and converts back byte-identical', async () => {
    const src = SOURCES.qwen3_moe!;
    const cat = await dump(await conv(src, 'nemo'));
    const ilDir = await conv(src, 'nemo', { gateUp: 'interleaved' });
    const il = await dump(ilDir);
    const name = 'model.layers.1.mlp.experts.gate_and_up_projs';
    expect(il.get(name)!.shape).toEqual(cat.get(name)!.shape);
    expect(il.get(name)!.bytes.equals(cat.get(name)!.bytes)).toBe(false);
    expect(JSON.parse(readFileSync(join(ilDir, 'moekit.json'), 'utf8')).gateUp).toBe('interleaved');
    // element check: gate_and_up_projs[e][h][2j] = gate_e[j][h], [2j+1] = up_e[j][h]
    const s = await srcDump('qwen3_moe');
    const [Ex, Hx, I2] = il.get(name)!.shape as [number, number, number];
    const g = s.get('model.layers.1.mlp.experts.5.gate_proj.weight')!.bytes;
    const u = s.get('model.layers.1.mlp.experts.5.up_proj.weight')!.bytes;
    const t = il.get(name)!.bytes;
    expect(Ex).toBe(8);
    for (const [h, j] of [
      [0, 0],
      [3, 7],
      [Hx - 1, I2 / 2 - 1],
    ] as [number, number][]) {
      expect(t.readFloatLE(((5 * Hx + h) * I2 + 2 * j) * 4)).toBe(g.readFloatLE((j * Hx + h) * 4));
      expect(t.readFloatLE(((5 * Hx + h) * I2 + 2 * j + 1) * 4)).toBe(u.readFloatLE((j * Hx + h) * 4));
    }
    // interleaved → hf and interleaved → concat nemo
    expect(diff(s, await dump(await conv(ilDir, 'hf')))).toEqual([]);
    expect(diff(cat, await dump(await conv(ilDir, 'nemo', { gateUp: 'concat' })))).toEqual([]);
  });

  it('TE linear_fc1.weight<i> is [gate rows; up rows] of the HF expert (fails if gate/up are swapped both ways)', async () => {
    const te = await dump(await conv(SOURCES.mixtral!, 'te'));
    const s = await srcDump('mixtral');
    const fc1 = te.get('decoder.layers.1.mlp.experts.linear_fc1.weight3')!;
    expect(fc1.shape).toEqual([80, 48]);
    const w1 = s.get('model.layers.1.block_sparse_moe.experts.3.w1.weight')!.bytes; // gate
    const w3 = s.get('model.layers.1.block_sparse_moe.experts.3.w3.weight')!.bytes; // up
    expect(fc1.bytes.equals(Buffer.concat([w1, w3]))).toBe(true);
    expect(te.get('decoder.layers.1.mlp.experts.linear_fc2.weight3')!.bytes.equals(s.get('model.layers.1.block_sparse_moe.experts.3.w2.weight')!.bytes)).toBe(
      true,
    );
    expect(te.get('decoder.layers.1.mlp.router.weight')!.bytes.equals(s.get('model.layers.1.block_sparse_moe.gate.weight')!.bytes)).toBe(true);
  });

  it('megatron-grouped weight1 is the raw memory of [E,H,2I], not a column concat (Megatron-LM #909)', async () => {
    const mg = await dump(await conv(SOURCES.qwen3_moe!, 'megatron-grouped'));
    const s = await srcDump('qwen3_moe');
    const w1 = mg.get('decoder.layers.0.mlp.experts.weight1')!;
    const w2 = mg.get('decoder.layers.0.mlp.experts.weight2')!;
    expect(w1.shape).toEqual([48, 8 * 80]);
    expect(w2.shape).toEqual([8 * 40, 48]);
    const e = 6;
    const gate = s.get(`model.layers.0.mlp.experts.${e}.gate_proj.weight`)!.bytes;
    const up = s.get(`model.layers.0.mlp.experts.${e}.up_proj.weight`)!.bytes;
    const down = s.get(`model.layers.0.mlp.experts.${e}.down_proj.weight`)!.bytes;
    for (const [h, j] of [
      [0, 0],
      [47, 39],
      [5, 11],
    ] as [number, number][]) {
      const at = ((e * 48 + h) * 80 + j) * 4; // [E,H,2I] element (e, h, j)
      expect(w1.bytes.readFloatLE(at)).toBe(gate.readFloatLE((j * 48 + h) * 4));
      expect(w1.bytes.readFloatLE(at + 40 * 4)).toBe(up.readFloatLE((j * 48 + h) * 4));
      expect(w2.bytes.readFloatLE(((e * 40 + j) * 48 + h) * 4)).toBe(down.readFloatLE((h * 40 + j) * 4));
    }
  });

  it('GPT-OSS interleaved gate_up_proj becomes TE [gate; up] rows with biases split the same way', async () => {
    const te = await dump(await conv(SOURCES.gpt_oss!, 'te'));
    const s = await srcDump('gpt_oss');
    const gu = s.get('model.layers.0.mlp.experts.gate_up_proj')!.bytes; // [8,48,80]
    const gub = s.get('model.layers.0.mlp.experts.gate_up_proj_bias')!.bytes; // [8,80]
    const fc1 = te.get('decoder.layers.0.mlp.experts.linear_fc1.weight2')!.bytes; // [80,48]
    const b1 = te.get('decoder.layers.0.mlp.experts.linear_fc1.bias2')!.bytes; // [80]
    for (const [j, h] of [
      [0, 0],
      [39, 47],
      [17, 3],
    ] as [number, number][]) {
      expect(fc1.readFloatLE((j * 48 + h) * 4)).toBe(gu.readFloatLE(((2 * 48 + h) * 80 + 2 * j) * 4));
      expect(fc1.readFloatLE(((40 + j) * 48 + h) * 4)).toBe(gu.readFloatLE(((2 * 48 + h) * 80 + 2 * j + 1) * 4));
      expect(b1.readFloatLE(j * 4)).toBe(gub.readFloatLE((2 * 80 + 2 * j) * 4));
      expect(b1.readFloatLE((40 + j) * 4)).toBe(gub.readFloatLE((2 * 80 + 2 * j + 1) * 4));
    }
  });
});

describe('options and outputs', () => {
  it('--dtype bf16 of the f32 Mixtral equals the bf16 fixture (RNE), through TE', async () => {
    const te = await conv(SOURCES.mixtral!, 'te', { dtype: 'BF16' });
    const back = await conv(te, 'hf');
    expect(diff(await srcDump('mixtral_bf16'), await dump(back))).toEqual([]);
  });

  it('sharded output with an index, config.json and moekit.json; reading back needs no config.json', async () => {
    const dst = await conv(SOURCES.deepseek_v3!, 'megatron', { maxShardSize: 60_000 });
    const files = readdirSync(dst);
    expect(files).toContain('model.safetensors.index.json');
    expect(files.filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(3);
    const mk = JSON.parse(readFileSync(join(dst, 'moekit.json'), 'utf8'));
    expect(mk).toMatchObject({
      family: 'deepseek_v3',
      layout: 'megatron',
      gateUp: 'concat',
      gated: true,
      hfRoot: 'model.',
      dims: { hiddenSize: 48, numExperts: 16, moeIntermediateSize: 40, sharedIntermediateSize: 40 },
    });
    expect(mk.routing).toMatchObject({ scoreFunc: 'sigmoid', nGroup: 4, topkGroup: 2, routedScalingFactor: 2.5 });
    // who loads it: Megatron-Core's SequentialMLP, and the way back to HF
    expect(mk.loadedBy).toMatch(/^Megatron-Core SequentialMLP.*--to hf gives the HF model back$/);
    const hfMk = JSON.parse(readFileSync(join(await conv(SOURCES.deepseek_v3!, 'hf-fused'), 'moekit.json'), 'utf8'));
    expect(hfMk.loadedBy).toMatch(/^transformers 5 \(fused/);
    expect(mk.layers.map((l: { layer: number }) => l.layer)).toEqual([1, 2]); // layer 0 is dense (first_k_dense_replace)
    expect(JSON.parse(readFileSync(join(dst, 'config.json'), 'utf8')).model_type).toBe('deepseek_v3');
    // drop config.json: moekit.json alone carries family and layout
    const bare = join(tmp.dir, 'bare');
    mkdirSync(bare);
    for (const f of files.filter((f) => f !== 'config.json')) writeFileSync(join(bare, f), readFileSync(join(dst, f)));
    expect(diff(await srcDump('deepseek_v3'), await dump(await conv(bare, 'hf')))).toEqual([]);
  });

  it('--json summary and the same-layout byte copy (quantized fixtures included)', async () => {
    for (const name of ['deepseek_v3_fp8', 'gpt_oss_mxfp4', 'qwen2_moe']) {
      const dst = out('json');
      const r = await cli(['convert', SOURCES[name]!, '--to', 'hf', '-o', dst, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j).toMatchObject({ identity: true, layout: j.sourceLayout });
      expect(diff(await srcDump(name), await dump(dst))).toEqual([]);
    }
  });

  it('inspect recognises every layout convert writes (one source of truth: the specs)', async () => {
    for (const to of NON_HF) {
      if (!allowed('deepseek_v3', to)) continue;
      const dst = await conv(SOURCES.deepseek_v3!, to);
      const ck = await openStore(dst);
      try {
        const r = await inspectCheckpoint(ck, dst);
        expect([r.layout, r.numExperts, r.moeIntermediateSize, r.moeLayers, r.sharedExperts?.intermediateSize, r.warnings], to).toEqual([
          to,
          16,
          40,
          [1, 2],
          40,
          [],
        ]);
      } finally {
        await ck.close();
      }
    }
  });

  it('--help teaches: layouts, renamed tensors, examples', async () => {
    const r = await cli(['convert', '--help']);
    for (const l of TARGET_NAMES) expect(r.stdout).toContain(`  ${l} `);
    expect(r.stdout).toMatch(/Only expert-block tensors are renamed/);
    expect(r.stdout).toMatch(/Examples:/);
  });
});

describe('refusals: one line, non-zero exit, nothing written', () => {
  const refused = async (args: string[], re: RegExp) => {
    const dst = out('refused');
    const r = await cli(['convert', ...args, '-o', dst]);
    expect([2, 4, 5], r.stderr).toContain(r.code);
    expect(r.stderr).toMatch(re);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(existsSync(dst)).toBe(false);
    expect(readdirSync(tmp.dir).filter((f) => f.includes('moekit-tmp'))).toEqual([]);
    return r;
  };

  it('unknown layout', async () => {
    await refused(
      [SOURCES.mixtral!, '--to', 'deepspeed'],
      /^moekit: error: unknown layout 'deepspeed'; known: hf, nemo, te, megatron, megatron-grouped, flashfusemoe, hf-fused, fast-llm$/m,
    );
  });

  it('lossy: GPT-OSS biases into megatron-grouped', async () => {
    await refused(
      [SOURCES.gpt_oss!, '--to', 'megatron-grouped'],
      /cannot convert losslessly to 'megatron-grouped': it has no place for the expert gate biases.*layouts that hold everything: nemo, te, megatron/,
    );
  });

  it('--gate-up on a layout that cannot hold it', async () => {
    await refused([SOURCES.mixtral!, '--to', 'te', '--gate-up', 'interleaved'], /layout 'te' only reads concat gate\/up/);
  });

  it('mixed expert shapes', async () => {
    const dir = join(tmp.dir, 'mixed');
    mkdirSync(dir);
    const t = SYNTH.phimoe!.tensors();
    t['model.layers.1.block_sparse_moe.experts.2.w1.weight'] = [I + 2, H];
    t['model.layers.1.block_sparse_moe.experts.2.w3.weight'] = [I + 2, H];
    t['model.layers.1.block_sparse_moe.experts.2.w2.weight'] = [H, I + 2];
    await synth(dir, SYNTH.phimoe!.config, t);
    await refused(
      [dir, '--to', 'nemo'],
      /mixed expert shapes: 'model.layers.1.block_sparse_moe.experts.2.w1.weight' is \[10,16\], expected \[8,16\] \(layer 1: E=4, H=16, I=8\)$/m,
    );
  });

  it('a missing expert', async () => {
    const dir = join(tmp.dir, 'missing');
    mkdirSync(dir);
    const t = SYNTH.olmoe!.tensors();
    delete t['model.layers.0.mlp.experts.1.down_proj.weight'];
    await synth(dir, SYNTH.olmoe!.config, t);
    await refused([dir, '--to', 'te'], /layer 0: expert 1 has no down tensor/);
  });

  it('quantized to another layout where the scales cannot follow (I = 192 in 128-row blocks; MXFP4)', async () => {
    await refused(
      [SOURCES.deepseek_v3_fp8!, '--to', 'te'],
      /expert intermediate size 192 is not a multiple of the 128-row scale block.*moekit dequant .* --to te/,
    );
    await refused([SOURCES.gpt_oss_mxfp4!, '--to', 'nemo'], /is mxfp4: .*moekit dequant .* --to nemo/);
  });

  it('existing non-empty destination unless --force, and --force replaces only a moekit output', async () => {
    const dst = out('exists');
    mkdirSync(dst);
    writeFileSync(join(dst, 'keep.txt'), 'x');
    const r = await cli(['convert', SOURCES.mixtral!, '--to', 'te', '-o', dst]);
    expect([r.code, r.stderr.trim()]).toEqual([5, `moekit: error: ${dst} exists and is not empty; pass --force to replace it`]);
    expect(readdirSync(dst)).toEqual(['keep.txt']);
    const n = await cli(['convert', SOURCES.mixtral!, '--to', 'te', '-o', dst, '--force']);
    expect([n.code, n.stderr.trim()]).toEqual([
      5,
      `moekit: error: ${dst} exists and was not written by moekit; --force replaces only moekit outputs: choose another destination or remove it yourself`,
    ]);
    expect(readdirSync(dst)).toEqual(['keep.txt']);
    const m = out('moekit-output');
    expect((await cli(['convert', SOURCES.mixtral!, '--to', 'te', '-o', m])).code).toBe(0);
    writeFileSync(join(m, 'stale.txt'), 'x');
    const f = await cli(['convert', SOURCES.mixtral!, '--to', 'nemo', '-o', m, '--force']);
    expect(f.code, f.stderr).toBe(0);
    expect(readdirSync(m)).not.toContain('stale.txt');
    expect(readdirSync(m)).toContain('.moekit-output');
  });
});

describe('output folders users can load', () => {
  it('config.json byte-identical when unchanged; other-format weights skipped with a line each; a model card keeping the source card and license', () => {
    const { dir, cleanup } = tempDir('moekit-card-');
    try {
      const src = join(dir, 'src');
      cpSync(join(FIXTURES, 'mixtral'), src, { recursive: true });
      writeFileSync(join(src, 'pytorch_model.bin'), 'stale');
      mkdirSync(join(src, 'original'));
      writeFileSync(join(src, 'README.md'), '---\nlicense: apache-2.0\ntags:\n- old\n---\n# Tiny Mixtral\nIts card.\n');
      writeFileSync(join(src, 'tokenizer.json'), '{}');
      const out = join(dir, 'te');
      const r = runCli(['convert', src, '--to', 'te', '-o', out, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).skipped).toEqual(['original/', 'pytorch_model.bin']);
      expect(r.stderr).toMatch(/skipped: pytorch_model\.bin \(weights in another format; not copied\)/);
      expect(readdirSync(out).sort()).toEqual([
        '.moekit-output',
        'README.md',
        'config.json',
        'generation_config.json',
        'model.safetensors',
        'moekit.json',
        'tokenizer.json',
      ]);
      expect(readFileSync(join(out, 'config.json'))).toEqual(readFileSync(join(src, 'config.json')));
      const card = readFileSync(join(out, 'README.md'), 'utf8');
      expect(card).toMatch(/^---\nlicense: apache-2\.0\ntags:\n- moekit\n- mixture-of-experts\n- mixtral\n- te\n---\n/);
      expect(card).toContain(`moekit convert ${src} --to te -o <this folder>\n`);
      expect(card).toMatch(/Load it with Megatron-Core with Transformer Engine/);
      expect(card).toMatch(/## Original model card\n\n# Tiny Mixtral\nIts card\./);
      // --dtype changes config.json (dtype recorded); --no-card keeps the source's README.md as it is
      const bf = join(dir, 'bf16');
      expect(runCli(['convert', src, '--to', 'hf', '--dtype', 'bf16', '--no-card', '-q', '-o', bf]).code).toBe(0);
      expect(JSON.parse(readFileSync(join(bf, 'config.json'), 'utf8')).dtype).toBe('bfloat16');
      expect(readFileSync(join(bf, 'README.md'), 'utf8')).toBe(readFileSync(join(src, 'README.md'), 'utf8'));
    } finally {
      cleanup();
    }
  });
});
