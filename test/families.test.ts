/**
 * Every model family with a transformers-written fixture (fixtures/gen_fixtures_more.py and
 * gen_fixtures_families.py): inspect's facts, verify against transformers' block outputs on WebGPU and
 * on the CPU, in f32 and (after convert --dtype bf16) in bf16; shard --ep 2 (× ETP 1, 2) → merge is
 * byte-identical, and the sharded folder verifies too; one framework layout read back through the IR.
 * The first fixtures (mixtral, qwen*, deepseek_v3, gpt_oss, ...) have the same checks in verify.test.ts,
 * shard.test.ts and verify-layouts.test.ts.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { shard } from '../src/ops/shard/shard.js';
import { merge } from '../src/ops/shard/merge.js';
import { verify } from '../src/ops/verify.js';
import { convert } from '../src/ops/convert.js';
import { inspectCheckpoint } from '../src/ops/inspect.js';
import { openStore } from '../src/store/registry.js';
import { familyFacts } from '../src/families/index.js';
import { TARGET_NAMES } from '../converters/index.js';
import { rmsNorm } from '../src/forward/routing.js';
import { FIXTURES, dump, diff, tempDir } from './convert-helpers.js';
import { copyFileSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { writeCheckpoint, bufferSource } from '../src/store/safetensors/writer.js';

/** fixture → [routing rule inspect must report, the non-HF layout to read it back through (or none: JetMoE's output bias, Gemma-4's router scales fit none)] */
const FAMILIES: Record<string, [string, string | null]> = {
  dots1: ['sigmoid', 'nemo'],
  deepseek_v2: ['softmax', 'te'],
  deepseek_v2_group: ['softmax', 'megatron'],
  ernie4_5_moe: ['softmax', 'te'],
  hunyuan_v1_moe: ['softmax', 'nemo'],
  deepseek_v32: ['sigmoid', 'megatron-grouped'],
  glm4_moe_lite: ['sigmoid', 'te'],
  glm_moe_dsa: ['sigmoid', 'nemo'],
  exaone_moe: ['sigmoid', 'megatron'],
  cohere2_moe: ['topk_softmax', 'flashfusemoe'],
  qwen3_next: ['softmax', 'te'],
  qwen3_5_moe: ['softmax', 'nemo'],
  flex_olmo: ['softmax', 'hf-fused'],
  granitemoeshared: ['topk_softmax', 'megatron'],
  minimax: ['softmax', 'megatron-grouped'],
  jamba: ['softmax', 'te'],
  jetmoe: ['topk_softmax', null],
  dbrx: ['softmax', 'nemo'],
  afmoe: ['sigmoid', 'te'],
  // Gemma-4's router scales and block norms fit Fast-LLM's (router_scale, router_per_expert_scale, pre/post_norm) only
  gemma4_text: ['softmax', 'fast-llm'],
  qwen3_vl_moe: ['softmax', 'te'],
  lfm2_moe: ['sigmoid', 'nemo'],
  granitemoehybrid: ['topk_softmax', 'megatron-grouped'],
  glm4v_moe: ['sigmoid', 'megatron'],
  solar_open: ['sigmoid', 'hf-fused'],
  // the third batch (fixtures/gen_fixtures_families3_{a,b}.py)
  mistral4: ['softmax', 'te'],
  laguna: ['sigmoid', 'nemo'],
  mellum: ['softmax', 'megatron'],
  hy_v3: ['sigmoid', 'megatron-grouped'],
  kimi_linear: ['sigmoid', 'te'],
  mimo_v2_flash: ['sigmoid', 'nemo'],
  granitemoe_swa: ['topk_softmax', 'flashfusemoe'],
  step3p7: ['sigmoid', 'megatron'],
  // A.X-K1's post-MLP norm (the block's output norm) fits no framework layout
  axk1: ['sigmoid', null],
  axk2: ['sigmoid', 'hf-fused'],
  ernie4_5_vl_moe: ['softmax', 'te'],
  glm5_next: ['sigmoid', 'nemo'],
  minimax_m3_vl: ['sigmoid', 'megatron'],
  qwen3_omni_moe: ['softmax', 'megatron-grouped'],
  qwen4_exp: ['softmax', 'te'],
};

const tmp = tempDir('moekit-families-');
afterAll(() => tmp.cleanup());
let seq = 0;
const out = (tag: string) => join(tmp.dir, `${seq++}-${tag}`);
const fast = { fsync: false } as const;
const ref = (f: string) => join(FIXTURES, f, 'reference.safetensors');
const config = (f: string) => JSON.parse(readFileSync(join(FIXTURES, f, 'config.json'), 'utf8')) as Record<string, unknown>;

describe('every family: inspect, verify (WebGPU, CPU, bf16), shard → merge, a framework layout', () => {
  for (const [f, [scoreFunc, layout]] of Object.entries(FAMILIES)) {
    describe(f, () => {
      it('inspect names the family, its routing and every MoE layer', async () => {
        const facts = familyFacts(config(f));
        const ck = await openStore(join(FIXTURES, f));
        const r = await inspectCheckpoint(ck, join(FIXTURES, f));
        await ck.close();
        expect(r.family).toBe(facts.family);
        expect(r.routing?.scoreFunc).toBe(scoreFunc);
        expect(r.numExperts).toBe(8);
        expect(r.topK).toBe(2);
        expect(r.moeIntermediateSize).toBe(40);
        const moe = Array.from({ length: facts.numLayers }, (_, i) => i).filter((i) => facts.isMoeLayer(i));
        expect(r.moeLayers).toEqual(moe);
        expect(moe.length).toBeGreaterThan(0);
      });

      it('verify matches transformers on WebGPU and on the CPU (f32)', async () => {
        for (const cpu of [false, true]) {
          const r = await verify(join(FIXTURES, f), undefined, { reference: ref(f), cpu });
          expect(r.pass, JSON.stringify(r.layers)).toBe(true);
          expect(r.unchecked).toEqual([]);
          for (const l of r.layers) expect(l.maxRel).toBeLessThanOrEqual(1e-4);
        }
      });

      // The f32 side matches transformers at 1e-4 (above); its bf16 twin is compared with it under the f32
      // side's expert selection (a bf16 router may flip near-tied tokens: those are reported, not hidden).
      it('bf16: convert --dtype bf16, then verify against the f32 fixture at bf16 tolerance (really 16-bit)', async () => {
        const dst = out(`${f}-bf16`);
        await convert(join(FIXTURES, f), dst, { to: 'hf', dtype: 'BF16', ...fast });
        const r = await verify(join(FIXTURES, f), dst, { tokens: 64, seed: 5 });
        expect(r.pass, JSON.stringify(r.layers)).toBe(true);
        expect(r.rtol).toBe(2e-2);
        expect(Math.max(...r.layers.map((l) => l.maxRel))).toBeGreaterThan(1e-4);
      });

      it('shard --ep 2 (ETP 1 and 2) → merge is byte-identical; the sharded folder verifies', async () => {
        const src = await dump(join(FIXTURES, f));
        for (const etp of [1, 2]) {
          const s = out(`${f}-ep2-etp${etp}`);
          await shard(join(FIXTURES, f), s, { ep: 2, etp, ...fast });
          const merged = out(`${f}-merged`);
          await merge(s, merged, fast);
          expect(diff(src, await dump(merged)), `${f} ep 2 etp ${etp}`).toEqual([]);
          if (etp === 2) {
            const r = await verify(s, undefined, { reference: ref(f), cpu: true });
            expect(r.pass, JSON.stringify(r.layers)).toBe(true);
          }
        }
      });

      if (layout) {
        it(`HF → ${layout} → HF is byte-identical, and ${layout} verifies against transformers`, async () => {
          const mid = out(`${f}-${layout}`);
          await convert(join(FIXTURES, f), mid, { to: layout, ...fast });
          const r = await verify(mid, undefined, { reference: ref(f) });
          expect(r.pass, JSON.stringify(r.layers)).toBe(true);
          const back = out(`${f}-back`);
          await convert(mid, back, { to: 'hf', ...fast });
          expect(diff(await dump(join(FIXTURES, f)), await dump(back))).toEqual([]);
        });
      }
    });
  }
});

describe('Gemma-4: every part of its router and block norms is used', () => {
  // a reader that ignored one of them (router.scale, per_expert_scale, the pre/post norms) would still
  // run: each is set to ones here, and verify must then fail against transformers' outputs
  for (const t of ['router.scale', 'router.per_expert_scale', 'pre_feedforward_layernorm_2.weight', 'post_feedforward_layernorm_2.weight']) {
    it(`${t} set to ones fails verify`, async () => {
      const src = await openStore(join(FIXTURES, 'gemma4_text'));
      const dir = out(`gemma4-${t}`);
      const victim = `model.layers.1.${t}`;
      expect(src.has(victim)).toBe(true);
      const entries = [];
      for (const info of src.tensors.values()) {
        const bytes = Buffer.from(await src.read(info));
        if (info.name === victim) new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4).fill(1);
        entries.push({ name: info.name, dtype: info.dtype, shape: info.shape, source: bufferSource(bytes) });
      }
      await writeCheckpoint(dir, entries, { fsync: false });
      copyFileSync(join(FIXTURES, 'gemma4_text', 'config.json'), join(dir, 'config.json'));
      await src.close();
      const r = await verify(dir, undefined, { reference: ref('gemma4_text'), cpu: true });
      expect(r.layers.find((l) => l.layer === 0)!.pass).toBe(true);
      expect(r.layers.find((l) => l.layer === 1)!.pass).toBe(false);
    });
  }
});

/** Gemma-4 → fast-llm, then stored the way Fast-LLM saves it: weights and an optimizer shard, facts in metadata.yaml only. */
async function fastLlmCheckpoint(mlp: Record<string, unknown>, family = 'gemma4_text'): Promise<string> {
  const mid = out(`${family}-fast-llm`);
  await convert(join(FIXTURES, family), mid, { to: 'fast-llm', ...fast });
  const src = await openStore(mid);
  const dir = out('fast_llm');
  const entries = [];
  for (const info of src.tensors.values()) {
    const bytes = Buffer.from(await src.read(info));
    entries.push({ name: `${info.name}/weights`, dtype: info.dtype, shape: info.shape, source: bufferSource(bytes) });
    // an Adam state beside the router: skipped by the reader
    if (info.name.endsWith('mlp.router.weight'))
      entries.push({ name: `${info.name}/exp_avgs`, dtype: info.dtype, shape: info.shape, source: bufferSource(Buffer.alloc(bytes.length)) });
  }
  await src.close();
  await writeCheckpoint(join(dir, 'tmp'), entries, { fsync: false });
  renameSync(join(dir, 'tmp', 'model.safetensors'), join(dir, 'model_0.safetensors'));
  rmSync(join(dir, 'tmp'), { recursive: true });
  const c = config(family);
  const yaml = [
    'fast_llm_version: 0.4.0',
    'model: gpt',
    'format: fast_llm',
    'shards: [weights, exp_avgs, exp_avgs_sq]',
    'config:',
    '  base_model:',
    `    hidden_size: ${c.hidden_size}`,
    '    decoder:',
    `      num_blocks: ${c.num_hidden_layers}`,
    '      block:',
    '        mlp:',
    ...Object.entries(mlp).map(([k, v]) => `          ${k}: ${JSON.stringify(v)}`),
    'metadata: {state_index: {}}',
  ];
  writeFileSync(join(dir, 'metadata.yaml'), `${yaml.join('\n')}\n`);
  return dir;
}

describe("Fast-LLM's fast_llm checkpoint (metadata.yaml + model_0.safetensors with '<parameter>/<shard>' keys)", () => {
  const gemmaMlp = {
    type: 'moe',
    experts: 8,
    experts_per_token: 2,
    intermediate_size: 40,
    gated: true,
    activation: 'gelu',
    routing: 'aux_loss',
    router_normalization: { type: 'fixed_rms_norm', epsilon: 1e-6 },
    router_input_scale: 48 ** -0.5,
    router_scale: { enabled: true },
    router_per_expert_scale: { enabled: true },
  };

  it('reads the weights shard under the parameter names, facts from metadata.yaml; verifies against Gemma-4', async () => {
    const dir = await fastLlmCheckpoint(gemmaMlp);
    const ck = await openStore(dir);
    expect(ck.format).toBe('fast_llm');
    expect(ck.has('decoder.1.mlp.layer_1.weight')).toBe(true);
    expect(ck.names().some((n) => n.includes('/'))).toBe(false);
    const r = await inspectCheckpoint(ck, dir);
    await ck.close();
    expect([r.family, r.layout, r.numExperts, r.topK, r.moeLayers]).toEqual(['fast_llm', 'fast-llm', 8, 2, [0, 1]]);
    // top-k then softmax over the k (Fast-LLM) equals Gemma-4's softmax, top-k, renormalise
    const v = await verify(dir, undefined, { reference: ref('gemma4_text') });
    expect(v.pass, JSON.stringify(v.layers)).toBe(true);
    for (const l of v.layers) expect(l.maxRel).toBeLessThan(1e-4);
  });

  it('without the router input scale the routing differs and verify fails', async () => {
    const { router_input_scale: _, ...rest } = gemmaMlp;
    const v = await verify(await fastLlmCheckpoint(rest), undefined, { reference: ref('gemma4_text'), cpu: true });
    expect(v.pass).toBe(false);
  });

  for (const [what, change, msg] of [
    ['sinkhorn routing', { routing: 'sinkhorn' }, /sinkhorn routing is not supported/],
    ['a per-expert scale with shared experts', { shared_experts: 2 }, /router_per_expert_scale with 2 shared experts is not supported/],
    ['a dense MLP', { type: 'mlp' }, /not 'moe'/],
  ] as const) {
    it(`${what} is refused in one line`, async () => {
      await expect(openStore(await fastLlmCheckpoint({ ...gemmaMlp, ...change }))).rejects.toThrow(msg);
    });
  }
});

describe('a checkpoint Fast-LLM wrote itself (fixtures/fast_llm/mixtral: Fast-LLM 0.4.0 convert of fixtures/hf/mixtral)', () => {
  const flm = join(FIXTURES, '..', 'fast_llm', 'mixtral');
  it('reads as Mixtral (Llama attention + SiLU MoE in metadata.yaml) and verifies against transformers Mixtral', async () => {
    const ck = await openStore(flm);
    const r = await inspectCheckpoint(ck, flm);
    await ck.close();
    expect([ck.format, r.family, r.layout, r.numExperts, r.topK, r.moeLayers]).toEqual(['fast_llm', 'mixtral', 'fast-llm', 8, 2, [0, 1]]);
    const v = await verify(flm, undefined, { reference: ref('mixtral') });
    expect(v.pass, JSON.stringify(v.layers)).toBe(true);
  });
  it('--to fast-llm --format fast_llm writes the files Fast-LLM wrote, byte for byte; they convert back to HF byte for byte', async () => {
    const mine = out('mixtral-fast_llm');
    await convert(join(FIXTURES, 'mixtral'), mine, { to: 'fast-llm', format: 'fast_llm', ...fast });
    for (const f of ['model_0.safetensors', 'metadata.yaml']) expect(readFileSync(join(mine, f)).equals(readFileSync(join(flm, f))), f).toBe(true);
    // Fast-LLM's own file → HF Mixtral: its names, config and key_value split back
    const back = out('fast_llm-hf');
    await convert(flm, back, { to: 'hf', ...fast });
    expect(readFileSync(join(back, 'model.safetensors')).equals(readFileSync(join(FIXTURES, 'mixtral', 'model.safetensors')))).toBe(true);
    expect(JSON.parse(readFileSync(join(back, 'config.json'), 'utf8')).architectures).toEqual(['MixtralForCausalLM']);
  });
  it('--format fast_llm refuses what it cannot write as Fast-LLM, in one line', async () => {
    await expect(convert(join(FIXTURES, 'mixtral'), out('x'), { to: 'nemo', format: 'fast_llm', ...fast })).rejects.toThrow(/use it with --to fast-llm/);
    await expect(convert(join(FIXTURES, 'hunyuan_v1_moe'), out('x'), { to: 'fast-llm', format: 'fast_llm', ...fast })).rejects.toThrow(
      /writes Mixtral-architecture models .* this is 'hunyuan_v1_moe'/,
    );
  });
  it("moekit's --to fast-llm writes the expert tensors Fast-LLM wrote, byte for byte", async () => {
    const mine = out('mixtral-fast-llm');
    await convert(join(FIXTURES, 'mixtral'), mine, { to: 'fast-llm', ...fast });
    const [a, b] = [await openStore(flm), await openStore(mine)];
    const names = a.names().filter((n) => n.includes('.mlp.'));
    expect(names.length).toBe(6);
    for (const n of names) expect(Buffer.from(await a.read(n)).equals(Buffer.from(await b.read(n))), n).toBe(true);
    await Promise.all([a.close(), b.close()]);
  });
});

describe('Fast-LLM shared experts: the last slots of layer_1 / layer_2, score 1 (mixture_of_experts.py _add_shared_experts)', () => {
  // HunYuan-MoE routes as Fast-LLM does (softmax over the top-k logits) and adds an always-on shared MLP of the experts' size
  const hunyuanMlp = { type: 'moe', experts: 9, shared_experts: 1, experts_per_token: 2, intermediate_size: 40, gated: true, activation: 'silu' };
  it('HunYuan-MoE → fast-llm puts the shared MLP in slot 8; stored as Fast-LLM saves it, it verifies against transformers', async () => {
    const dir = await fastLlmCheckpoint(hunyuanMlp, 'hunyuan_v1_moe');
    const ck = await openStore(dir);
    const src = await openStore(join(FIXTURES, 'hunyuan_v1_moe'));
    expect(ck.info('decoder.0.mlp.layer_1.weight').shape).toEqual([9 * 80, 48]);
    expect(ck.info('decoder.0.mlp.router.weight').shape).toEqual([8, 48]);
    // slot 8 = [gate; up] of the shared MLP, and its downᵀ
    const l1 = await ck.read('decoder.0.mlp.layer_1.weight');
    const rowBytes = 48 * 4;
    expect(l1.subarray(8 * 80 * rowBytes, (8 * 80 + 40) * rowBytes).equals(await src.read('model.layers.0.mlp.shared_mlp.gate_proj.weight'))).toBe(true);
    expect(l1.subarray((8 * 80 + 40) * rowBytes).equals(await src.read('model.layers.0.mlp.shared_mlp.up_proj.weight'))).toBe(true);
    const r = await inspectCheckpoint(ck, dir);
    await Promise.all([ck.close(), src.close()]);
    expect([r.numExperts, r.topK, r.sharedExperts?.intermediateSize]).toEqual([8, 2, 40]);
    const v = await verify(dir, undefined, { reference: ref('hunyuan_v1_moe') });
    expect(v.pass, JSON.stringify(v.layers)).toBe(true);
    // and back to HF byte for byte, once the HF config is beside it
    copyFileSync(join(FIXTURES, 'hunyuan_v1_moe', 'config.json'), join(dir, 'config.json'));
    const back = out('hunyuan-back');
    await convert(dir, back, { to: 'hf', ...fast });
    expect(diff(await dump(back), await dump(join(FIXTURES, 'hunyuan_v1_moe')))).toEqual([]);
  });

  it('metadata.yaml without shared_experts: the extra slot does not fit the expert size, refused in one line', async () => {
    const { shared_experts: _, ...rest } = hunyuanMlp;
    await expect(convert(await fastLlmCheckpoint(rest, 'hunyuan_v1_moe'), out('x'), { to: 'nemo', ...fast })).rejects.toThrow(
      /intermediate size 45, config.json says 40/,
    );
  });

  it('two shared experts (DeepSeek n_shared_experts 2, one MLP of 2·I) are two slots; round trip byte-exact, same forward', async () => {
    const base = join(FIXTURES, 'deepseek_v2');
    const src = await openStore(base);
    const entries = [];
    for (const info of src.tensors.values()) {
      let bytes = Buffer.from(await src.read(info));
      let shape = info.shape;
      if (/shared_experts\.(gate|up)_proj/.test(info.name)) {
        bytes = Buffer.concat([bytes, bytes.map((b, i) => (i % 4 === 3 ? b ^ 0x80 : b))]); // the second slot: the first negated
        shape = [2 * shape[0]!, shape[1]!];
      } else if (info.name.includes('shared_experts.down_proj')) {
        const [h, w] = shape as [number, number];
        const rows = Array.from({ length: h }, (_, r) => bytes.subarray(r * w * 4, (r + 1) * w * 4));
        bytes = Buffer.concat(rows.flatMap((row) => [row, row]));
        shape = [h, 2 * w];
      }
      entries.push({ name: info.name, dtype: info.dtype, shape, source: bufferSource(bytes) });
    }
    await src.close();
    const hf = out('ds2-shared2');
    await writeCheckpoint(hf, entries, { fsync: false });
    writeFileSync(join(hf, 'config.json'), JSON.stringify({ ...config('deepseek_v2'), n_shared_experts: 2 }));
    const fl = out('ds2-shared2-fast-llm');
    await convert(hf, fl, { to: 'fast-llm', ...fast });
    const ck = await openStore(fl);
    expect(ck.info('decoder.1.mlp.layer_2.weight').shape).toEqual([10 * 40, 48]);
    await ck.close();
    const back = out('ds2-shared2-back');
    await convert(fl, back, { to: 'hf', ...fast });
    expect(diff(await dump(back), await dump(hf))).toEqual([]);
    const v = await verify(fl, hf, { cpu: true });
    expect(v.pass, JSON.stringify(v.layers)).toBe(true);
  });

  it('a shared expert not a multiple of the expert size, or with a sigmoid gate, is refused naming why', async () => {
    await expect(convert(join(FIXTURES, 'qwen2_moe'), out('q'), { to: 'fast-llm', ...fast })).rejects.toThrow(/has a sigmoid gate/);
  });
});

describe('Qwen3-VL-MoE: the Hub orientation ([E,H,2I] / [E,I,H]) and transformers-saved one ([E,2I,H] / [E,H,I]) share names', () => {
  it('the Hub form is told by its shapes, verifies against transformers, and --to hf writes the saved form byte for byte', async () => {
    const fx = join(FIXTURES, 'qwen3_vl_moe');
    const src = await openStore(fx);
    const entries = [];
    for (const info of src.tensors.values()) {
      const bytes = Buffer.from(await src.read(info));
      if (!/mlp\.experts\.(gate_up|down)_proj$/.test(info.name)) {
        entries.push({ name: info.name, dtype: info.dtype, shape: info.shape, source: bufferSource(bytes) });
        continue;
      }
      const [E, R, C] = info.shape as [number, number, number];
      const t = Buffer.alloc(bytes.length);
      for (let e = 0; e < E; e++)
        for (let r = 0; r < R; r++)
          for (let c = 0; c < C; c++) bytes.copy(t, ((e * C + c) * R + r) * 4, ((e * R + r) * C + c) * 4, ((e * R + r) * C + c) * 4 + 4);
      entries.push({ name: info.name, dtype: info.dtype, shape: [E, C, R], source: bufferSource(t) });
    }
    await src.close();
    const hub = out('qwen3-vl-hub');
    await writeCheckpoint(hub, entries, { fsync: false });
    copyFileSync(join(fx, 'config.json'), join(hub, 'config.json'));
    const ck = await openStore(hub);
    const r = await inspectCheckpoint(ck, hub);
    await ck.close();
    expect(r.layout).toBe('hf-qwen3-vl-moe-hub');
    const v = await verify(hub, undefined, { reference: ref('qwen3_vl_moe'), cpu: true });
    expect(v.pass, JSON.stringify(v.layers)).toBe(true);
    const back = out('qwen3-vl-saved');
    await convert(hub, back, { to: 'hf', ...fast });
    expect(diff(await dump(back), await dump(fx))).toEqual([]);
  });
});

/**
 * Families read from transformers 5.17's modeling files (fixtures/hf/families3-notes-*.md), checked here a second
 * way beside their own fixtures (gen_fixtures_families3_*.py, in FAMILIES above): a fixture of the family whose block
 * they share, under the config and names the notes derive, reads as the new family and computes that family's
 * transformers outputs.
 */
type Cfg = Record<string, unknown>;
interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  bytes: Buffer;
}
interface Variant {
  family: string;
  /** the verified fixture whose block it shares (and whose transformers outputs it must give) */
  from: string;
  cfg: (c: Cfg) => Cfg;
  rename?: (n: string) => string;
  /** tensors rebuilt beyond a rename (stacked, added) */
  rebuild?: (t: Entry[]) => Entry[];
  /** convert the fixture to this layout first (its names are the family's) */
  via?: string;
  /** where the family's routing facts differ from the fixture's (without changing the function on it) */
  routing?: Record<string, unknown>;
  /** the framework layout of the round trip (default te); null: none holds the block, shard --ep 2 → merge instead */
  layout?: string | null;
  /** the fixture's transformers outputs as the family changes them (default: the fixture's reference) */
  reference?: () => Promise<string>;
  /** no transformers outputs fit: the fixture in another layout, its moekit.json saying what the family changes */
  against?: () => Promise<string>;
}

/** `c` with keys renamed (old → new; new undefined: dropped) and `add` merged in. */
function rekey(c: Cfg, keys: Record<string, string | undefined>, add: Cfg = {}): Cfg {
  const out: Cfg = {};
  for (const [k, v] of Object.entries(c)) {
    if (!(k in keys)) out[k] = v;
    else if (keys[k] !== undefined) out[keys[k]!] = v;
  }
  return { ...out, ...add };
}

/** Per-expert experts.<e>.<p>_proj.weight of a layer stacked into one [E, ...] tensor per projection, named by `to`. */
function stackExperts(t: Entry[], to: (layer: string, proj: string) => string): Entry[] {
  const re = /^(.*\.layers\.\d+\.)mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$/;
  const groups = new Map<string, Entry[]>();
  const rest: Entry[] = [];
  for (const e of t) {
    const m = re.exec(e.name);
    if (!m) {
      rest.push(e);
      continue;
    }
    const key = to(m[1]!, m[3]!);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)![Number(m[2])] = e;
  }
  for (const [name, es] of groups) rest.push({ name, dtype: es[0]!.dtype, shape: [es.length, ...es[0]!.shape], bytes: Buffer.concat(es.map((e) => e.bytes)) });
  return rest;
}

const f32 = (b: Buffer) => new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
const postNormWeight = (H: number) => Buffer.from(Float32Array.from({ length: H }, (_, i) => 1 + 0.25 * Math.sin(i)).buffer);
const toLanguageModel = (n: string) => n.replace(/^model\./, 'model.language_model.');
/** the MoE block's own tensors (not a dense layer's mlp.gate_proj) */
const moeBlock = /^(model\.layers\.\d+\.)mlp\.(gate\.|experts\.|shared_experts\.|router\.|expert_bias)/;
const mixtralExperts = (n: string) =>
  n
    .replace(/(experts\.\d+\.)gate_proj\./, '$1w1.')
    .replace(/(experts\.\d+\.)up_proj\./, '$1w3.')
    .replace(/(experts\.\d+\.)down_proj\./, '$1w2.');

/** Deterministic f32 values (amplitude 0.1) for tensors a variant adds. */
const filler = (n: number, seed: number) => Buffer.from(Float32Array.from({ length: n }, (_, i) => 0.1 * Math.sin(seed + 0.37 * i * (seed + 1))).buffer);
const ERNIE_VL_E = 8;
const ERNIE_VL_VISION_I = 24;
/** ERNIE-4.5-VL's text config (under text_config, or `flat`) from ERNIE-4.5-MoE's: [text, vision] expert sizes, MoE per mlp_layer_types. */
function ernieVlConfig(c: Cfg, flat = false): Cfg {
  const text = rekey(
    c,
    { moe_layer_start_index: undefined, moe_layer_end_index: undefined, moe_layer_interval: undefined },
    { model_type: flat ? 'ernie4_5_vl_moe' : 'ernie4_5_vl_moe_text', moe_intermediate_size: [40, ERNIE_VL_VISION_I], mlp_layer_types: ['sparse', 'sparse'] },
  );
  return flat ? text : { model_type: 'ernie4_5_vl_moe', text_config: text, vision_config: { hidden_size: 16 } };
}
/**
 * ERNIE-4.5-MoE's block under ERNIE-4.5-VL's saved names (families3-notes-b.md §10): the router transposed to [H,E], the
 * bias [1,E] as row 0 of [2,E], and beside it a vision expert set of its own size: experts E..2E−1, gate.weight_1 [H,E], row 1.
 */
function ernieVision(t: Entry[]): Entry[] {
  const out: Entry[] = [];
  for (const e of t) {
    const m = /^(model\.layers\.(\d+)\.mlp\.)(gate\.weight|moe_statics\.e_score_correction_bias)$/.exec(e.name);
    if (!m) {
      out.push(e);
      continue;
    }
    const [, p, n] = m;
    const H = e.shape[1]!;
    if (m[3] === 'gate.weight') {
      const w = f32(e.bytes);
      const tr = new Float32Array(w.length);
      for (let r = 0; r < ERNIE_VL_E; r++) for (let h = 0; h < H; h++) tr[h * ERNIE_VL_E + r] = w[r * H + h]!;
      out.push({ name: e.name, dtype: 'F32', shape: [H, ERNIE_VL_E], bytes: Buffer.from(tr.buffer) });
      out.push({ name: `${p}gate.weight_1`, dtype: 'F32', shape: [H, ERNIE_VL_E], bytes: filler(H * ERNIE_VL_E, 11 + Number(n)) });
      for (let j = ERNIE_VL_E; j < 2 * ERNIE_VL_E; j++) {
        const s = 100 * Number(n) + j;
        out.push({ name: `${p}experts.${j}.gate_proj.weight`, dtype: 'F32', shape: [ERNIE_VL_VISION_I, H], bytes: filler(ERNIE_VL_VISION_I * H, s) });
        out.push({ name: `${p}experts.${j}.up_proj.weight`, dtype: 'F32', shape: [ERNIE_VL_VISION_I, H], bytes: filler(ERNIE_VL_VISION_I * H, s + 0.5) });
        out.push({ name: `${p}experts.${j}.down_proj.weight`, dtype: 'F32', shape: [H, ERNIE_VL_VISION_I], bytes: filler(H * ERNIE_VL_VISION_I, s + 0.25) });
      }
    } else {
      out.push({ name: e.name, dtype: 'F32', shape: [2, ERNIE_VL_E], bytes: Buffer.concat([e.bytes, filler(ERNIE_VL_E, 7 + Number(n))]) });
    }
  }
  return out;
}

const VARIANTS: Variant[] = [
  { family: 'axk2', from: 'deepseek_v3', cfg: (c) => ({ ...c, model_type: 'axk2' }) },
  {
    family: 'glm5_next',
    from: 'dots1',
    cfg: (c) => ({ model_type: 'glm5_next', text_config: { ...c, model_type: 'glm5_next_text' } }),
    rename: toLanguageModel,
  },
  {
    family: 'qwen4_exp',
    from: 'qwen2_moe',
    cfg: (c) => ({ model_type: 'qwen4_exp', text_config: { ...c, model_type: 'qwen4_exp_text' } }),
    rename: toLanguageModel,
  },
  { family: 'mellum', from: 'qwen3_moe', cfg: (c) => ({ ...c, model_type: 'mellum' }) },
  {
    family: 'granitemoe_swa',
    from: 'granitemoeshared',
    cfg: (c) => ({ ...c, model_type: 'granitemoe_swa' }),
    rename: (n) =>
      n
        .replace('block_sparse_moe.router.layer.weight', 'block_sparse_moe.router.weight')
        .replace('block_sparse_moe.input_linear.weight', 'block_sparse_moe.experts.gate_up_proj')
        .replace('block_sparse_moe.output_linear.weight', 'block_sparse_moe.experts.down_proj'),
  },
  {
    family: 'qwen3_omni_moe',
    from: 'qwen3_moe',
    cfg: (c) => ({
      model_type: 'qwen3_omni_moe',
      thinker_config: { model_type: 'qwen3_omni_moe_thinker', text_config: { ...c, model_type: 'qwen3_omni_moe_text' } },
    }),
    rename: (n) => `thinker.${n}`,
  },
  // DeepSeek-V2's greedy softmax router (no groups, not renormalised) is Mistral-4's at n_group 1, norm_topk_prob false
  {
    family: 'mistral4',
    from: 'deepseek_v2',
    via: 'hf-fused',
    cfg: (c) => rekey(c, { topk_method: undefined }, { model_type: 'mistral4', n_group: 1, topk_group: 1 }),
    routing: { groupScore: undefined },
  },
  {
    family: 'laguna',
    from: 'afmoe',
    cfg: (c) =>
      rekey(
        c,
        { route_scale: 'moe_routed_scaling_factor', num_shared_experts: undefined, num_dense_layers: undefined },
        { model_type: 'laguna', shared_expert_intermediate_size: 40, mlp_layer_types: ['dense', 'sparse'], moe_router_logit_softcapping: 0.0 },
      ),
    rename: (n) =>
      n
        .replace('mlp.router.gate.weight', 'mlp.gate.weight')
        .replace('mlp.expert_bias', 'mlp.experts.e_score_correction_bias')
        .replace('mlp.shared_experts.', 'mlp.shared_expert.'),
  },
  {
    family: 'hy_v3',
    from: 'afmoe',
    cfg: (c) =>
      rekey(
        c,
        { route_scale: 'router_scaling_factor', num_dense_layers: undefined },
        { model_type: 'hy_v3', mlp_layer_types: ['dense', 'sparse'], mlp_bias: false },
      ),
    rename: (n) => n.replace('mlp.shared_experts.', 'mlp.shared_mlp.'),
  },
  // the fixture's groups (n_group 4, topk_group 2) masked with −inf select as with 0.0 on its tokens (every kept biased score > 0)
  {
    family: 'kimi_linear',
    from: 'deepseek_v3',
    cfg: (c) =>
      rekey(
        c,
        {
          n_routed_experts: 'num_experts',
          num_experts_per_tok: 'num_experts_per_token',
          n_group: 'num_expert_group',
          norm_topk_prob: 'moe_renormalize',
          n_shared_experts: 'num_shared_experts',
          first_k_dense_replace: undefined,
        },
        { model_type: 'kimi_linear', mlp_layer_types: ['dense', 'sparse', 'sparse'] },
      ),
    rename: (n) => mixtralExperts(n.replace(moeBlock, '$1block_sparse_moe.$2')),
    routing: { groupMask: '-inf' },
  },
  {
    family: 'mimo_v2_flash',
    from: 'deepseek_v3',
    // no mlp_layer_types: every layer but the first is MoE; a per-layer moe_layer_freq list is accepted and not read
    cfg: (c) => rekey(c, { first_k_dense_replace: undefined }, { model_type: 'mimo_v2_flash', moe_layer_freq: [0, 1, 1] }),
    routing: { groupMask: '-inf' },
  },
  {
    family: 'step3p7',
    from: 'afmoe',
    cfg: (c) => ({
      model_type: 'step3p7',
      text_config: rekey(
        c,
        { num_experts: 'moe_num_experts', num_experts_per_tok: 'moe_top_k', route_scale: 'moe_router_scaling_factor', num_shared_experts: undefined },
        {
          model_type: 'step3p5',
          share_expert_dim: 40,
          moe_layers_enum: '1',
          // the Hub's word, which transformers replaces by silu; a clamp on the dense layer 0 is allowed
          hidden_act: 'swigluoai',
          swiglu_limits: [0, null],
          swiglu_limits_shared: [7, 0],
        },
      ),
      vision_config: { model_type: 'step3p5_vision', hidden_size: 16 },
    }),
    rename: (n) =>
      n.replace('mlp.router.gate.weight', 'moe.gate.weight').replace('mlp.expert_bias', 'moe.router_bias').replace('mlp.shared_experts.', 'share_expert.'),
    rebuild: (t) => stackExperts(t, (layer, proj) => `${layer}moe.${proj}_proj.weight`),
  },
  // MiniMax-M3 runs SwiGLU-OAI, which no fixture with its router has: it is compared with afmoe's checkpoint whose
  // moekit.json says SwiGLU-OAI (the same limit 1.5, which binds), and must not match afmoe's SiLU outputs
  {
    family: 'minimax_m3_vl',
    from: 'afmoe',
    cfg: (c) => ({
      model_type: 'minimax_m3_vl',
      text_config: rekey(
        c,
        {
          num_experts: 'num_local_experts',
          route_scale: 'routed_scaling_factor',
          intermediate_size: 'dense_intermediate_size',
          moe_intermediate_size: 'intermediate_size',
          num_shared_experts: undefined,
          num_dense_layers: undefined,
        },
        { model_type: 'minimax_m3_vl_text', shared_intermediate_size: 40, moe_layer_freq: [0, 1], swiglu_alpha: 1.702, swiglu_limit: 1.5 },
      ),
      vision_config: { hidden_size: 16 },
    }),
    rename: (n) =>
      mixtralExperts(
        n
          .replace(/^model\.layers\.(\d+)\.mlp\./, 'model.layers.$1.block_sparse_moe.')
          .replace('block_sparse_moe.router.gate.weight', 'block_sparse_moe.gate.weight')
          .replace('block_sparse_moe.expert_bias', 'block_sparse_moe.e_score_correction_bias')
          .replace(/^model\./, 'language_model.model.')
          .replace(/^lm_head\./, 'language_model.lm_head.'),
      ),
    against: async () => {
      const dir = out('afmoe-te-oai');
      await convert(join(FIXTURES, 'afmoe'), dir, { to: 'te', ...fast });
      const mk = JSON.parse(readFileSync(join(dir, 'moekit.json'), 'utf8'));
      delete mk.digest;
      writeFileSync(join(dir, 'moekit.json'), JSON.stringify({ ...mk, activation: { kind: 'swiglu_oai', alpha: 1.702, limit: 1.5 } }));
      return dir;
    },
  },
  // A.X-K1's block is DeepSeek-V3's with RMSNorm(routed + shared) · post_mlp_layernorm: the reference is the fixture's
  // transformers outputs of the MoE layers put through that norm (in f32, as AXK1RMSNorm)
  {
    family: 'axk1',
    from: 'deepseek_v3',
    cfg: (c) => ({ ...c, model_type: 'axk1' }),
    rebuild: (t) => [
      ...t,
      ...[1, 2].map((n) => ({ name: `model.layers.${n}.post_mlp_layernorm.weight`, dtype: 'F32', shape: [48], bytes: postNormWeight(48) })),
    ],
    routing: { groupMask: '-inf', normEps: 1e-6 },
    // no framework layout holds a score-correction bias and a block output norm together
    layout: null,
    reference: async () => {
      const src = await openStore(ref('deepseek_v3'));
      const w = f32(postNormWeight(48));
      const t: Entry[] = [];
      for (const info of src.tensors.values()) {
        let bytes = Buffer.from(await src.read(info));
        if (/^layers\.[12]\.output$/.test(info.name)) {
          const x = f32(bytes);
          const y = new Float32Array(x.length);
          for (let r = 0; r < x.length / 48; r++) y.set(rmsNorm(x.subarray(r * 48, (r + 1) * 48), 1e-6, w), r * 48);
          bytes = Buffer.from(y.buffer);
        }
        t.push({ name: info.name, dtype: info.dtype, shape: [...info.shape], bytes });
      }
      await src.close();
      const dir = out('axk1-reference');
      await writeCheckpoint(
        dir,
        t.map((e) => ({ name: e.name, dtype: e.dtype as never, shape: e.shape, source: bufferSource(e.bytes) })),
        { fsync: false },
      );
      return join(dir, 'model.safetensors');
    },
  },
  // ERNIE-4.5-VL's text block is ERNIE-4.5-MoE's; its vision experts (different bytes, another size) pass through
  { family: 'ernie4_5_vl_moe', from: 'ernie4_5_moe', cfg: (c) => ernieVlConfig(c), rebuild: ernieVision },
];

async function tensorsOf(dir: string): Promise<Entry[]> {
  const src = await openStore(dir);
  const t: Entry[] = [];
  for (const info of src.tensors.values()) t.push({ name: info.name, dtype: info.dtype, shape: [...info.shape], bytes: Buffer.from(await src.read(info)) });
  await src.close();
  return t;
}

async function writeVariant(tag: string, t: Entry[], cfg: Cfg): Promise<string> {
  const dir = out(`variant-${tag}`);
  await writeCheckpoint(
    dir,
    t.map((e) => ({ name: e.name, dtype: e.dtype as never, shape: e.shape, source: bufferSource(e.bytes) })),
    { fsync: false },
  );
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
  return dir;
}

async function variant(v: Variant): Promise<string> {
  let srcDir = join(FIXTURES, v.from);
  if (v.via) {
    srcDir = out(`${v.from}-${v.via}`);
    await convert(join(FIXTURES, v.from), srcDir, { to: v.via, ...fast });
  }
  let t = (await tensorsOf(srcDir)).map((e) => ({ ...e, name: v.rename ? v.rename(e.name) : e.name }));
  if (v.rebuild) t = v.rebuild(t);
  return writeVariant(v.family, t, v.cfg(config(v.from)));
}

describe(`the third batch's families, also as verified fixtures rewritten under their names: ${VARIANTS.map((v) => v.family).join(', ')} (derived facts)`, () => {
  const moeLayersOf = (c: Cfg) => {
    const f = familyFacts(c);
    return Array.from({ length: f.numLayers }, (_, i) => i).filter((i) => f.isMoeLayer(i));
  };
  for (const v of VARIANTS) {
    it(`${v.family} (as ${v.from}'s block)`, async () => {
      const dir = await variant(v);
      const ck = await openStore(dir);
      const r = await inspectCheckpoint(ck, dir);
      await ck.close();
      const want = familyFacts(config(v.from));
      expect([r.family, r.numExperts, r.topK, r.moeLayers]).toEqual([v.family, want.numExperts, want.topK, moeLayersOf(config(v.from))]);
      expect(r.routing).toEqual({ ...want.routing, ...v.routing });
      const verified = v.against
        ? await verify(dir, await v.against(), { cpu: true, tokens: 64, seed: 5 })
        : await verify(dir, undefined, { reference: v.reference ? await v.reference() : ref(v.from), cpu: true });
      // against another checkpoint only the blocks are compared: its other tensors keep the fixture's names
      const pass = v.against ? verified.unchecked.length === 0 && verified.layers.every((l) => l.pass) : verified.pass;
      expect(pass, JSON.stringify(verified.layers)).toBe(true);
      expect(verified.layers.length).toBe(familyFacts(config(v.from)).numLayers);
      // where the family changes the function, the fixture's own outputs are not matched
      if (v.reference || v.against) expect((await verify(dir, undefined, { reference: ref(v.from), cpu: true })).pass).toBe(false);
      const layout = v.layout === undefined ? 'te' : v.layout;
      const mid = out(`${v.family}-${layout ?? 'ep2'}`);
      const back = out(`${v.family}-${layout ?? 'ep2'}-back`);
      if (layout) {
        await convert(dir, mid, { to: layout, ...fast });
        await convert(mid, back, { to: 'hf', ...fast });
      } else {
        await shard(dir, mid, { ep: 2, etp: 1, ...fast });
        await merge(mid, back, fast);
      }
      expect(diff(await dump(back), await dump(dir))).toEqual([]);
    });
  }
});

describe('ERNIE-4.5-VL: the text experts are the MoE block, the vision experts, gate.weight_1 and bias row 1 pass through', () => {
  const ernieVl = () => variant(VARIANTS.find((v) => v.family === 'ernie4_5_vl_moe')!);
  const verifyText = (dir: string) => verify(dir, undefined, { reference: ref('ernie4_5_moe'), cpu: true });
  it('the text config reads the same under text_config and flat', () => {
    const wrapped = familyFacts(ernieVlConfig(config('ernie4_5_moe')));
    const flat = familyFacts(ernieVlConfig(config('ernie4_5_moe'), true));
    const plain = familyFacts(config('ernie4_5_moe'));
    for (const f of [wrapped, flat]) {
      expect([f.family, f.numExperts, f.topK, f.moeIntermediateSize, f.shared]).toEqual(['ernie4_5_vl_moe', 8, 2, 40, plain.shared]);
      expect(f.routing).toEqual(plain.routing);
    }
  });
  it('inspect reports the text experts; the vision tensors stay out of the block', async () => {
    const dir = await ernieVl();
    const ck = await openStore(dir);
    const r = await inspectCheckpoint(ck, dir);
    await ck.close();
    expect([r.layout, r.numExperts, r.moeIntermediateSize, r.expertsPerLayer, r.sharedExperts?.intermediateSize]).toEqual([
      'hf-ernie-vl',
      8,
      40,
      { 0: 8, 1: 8 },
      40,
    ]);
  });
  // flashfusemoe and fast-llm have no place for the score-correction bias; every other layout carries the block
  const REFUSED: Record<string, RegExp> = { flashfusemoe: /no place for the score-correction bias/, 'fast-llm': /no place for the score-correction bias/ };
  for (const to of TARGET_NAMES.filter((t) => t !== 'hf')) {
    it(
      REFUSED[to] ? `to ${to}: refused, no place for the score-correction bias` : `to ${to} and back: byte-exact, vision experts and bias row 1 included`,
      async () => {
        const dir = await ernieVl();
        const mid = out(`ernie-vl-${to}`);
        if (REFUSED[to]) {
          await expect(convert(dir, mid, { to, ...fast })).rejects.toThrow(REFUSED[to]);
          return;
        }
        await convert(dir, mid, { to, ...fast });
        const back = out(`ernie-vl-${to}-back`);
        await convert(mid, back, { to: 'hf', ...fast });
        expect(diff(await dump(back), await dump(dir))).toEqual([]);
        expect((await verifyText(mid)).pass).toBe(true);
      },
    );
  }
  for (const dense of ['replicate', 'rank0'] as const) {
    it(`shard --ep 2 (dense ${dense}) → merge: byte-exact`, async () => {
      const dir = await ernieVl();
      const mid = out(`ernie-vl-ep2-${dense}`);
      await shard(dir, mid, { ep: 2, etp: 1, dense, ...fast });
      const back = out(`ernie-vl-ep2-${dense}-back`);
      await merge(mid, back, fast);
      expect(diff(await dump(back), await dump(dir))).toEqual([]);
    });
  }
  it("a vision expert's bytes do not change what verify says, and are carried through a round trip", async () => {
    const dir = await ernieVl();
    const t = await tensorsOf(dir);
    const name = 'model.layers.1.mlp.experts.12.up_proj.weight';
    const v = t.find((e) => e.name === name)!;
    v.bytes = filler(v.bytes.length / 4, 99);
    const changed = await writeVariant('ernie-vl-vision-edit', t, JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')));
    const [a, b] = [await verifyText(dir), await verifyText(changed)];
    expect([a.pass, b.pass]).toEqual([true, true]);
    expect(JSON.stringify(b.layers)).toBe(JSON.stringify(a.layers));
    const mid = out('ernie-vl-vision-edit-te');
    const back = out('ernie-vl-vision-edit-back');
    await convert(changed, mid, { to: 'te', ...fast });
    await convert(mid, back, { to: 'hf', ...fast });
    expect(diff(await dump(back), await dump(changed))).toEqual([]);
    expect(diff(await dump(back), await dump(dir))).toEqual([`${name}: bytes differ`]);
  });
  it('a layout without the bias row 1 to take is refused, naming the tensor', async () => {
    // the te checkpoint's [2,E] pass-through tensor removed: writing hf-ernie-vl has no row 1
    const dir = await ernieVl();
    const mid = out('ernie-vl-te-norow');
    await convert(dir, mid, { to: 'te', ...fast });
    const t = (await tensorsOf(mid)).filter((e) => e.name !== 'model.layers.0.mlp.moe_statics.e_score_correction_bias');
    const cut = await writeVariant('ernie-vl-te-norow', t, JSON.parse(readFileSync(join(mid, 'config.json'), 'utf8')));
    copyFileSync(join(mid, 'moekit.json'), join(cut, 'moekit.json'));
    await expect(convert(cut, out('ernie-vl-te-norow-back'), { to: 'hf', ...fast })).rejects.toThrow(
      /cannot write 'model\.layers\.0\.mlp\.moe_statics\.e_score_correction_bias' .* no tensor of that name to take it from/,
    );
  });
});

describe('what a pending family cannot express is refused in one line, naming the config key', () => {
  const step3p7 = (text: Cfg) => ({
    model_type: 'step3p7',
    text_config: { ...config('afmoe'), model_type: 'step3p5', num_shared_experts: undefined, share_expert_dim: 40, moe_layers_enum: [1], ...text },
  });
  for (const [family, key, bad, good, msg] of [
    [
      'laguna',
      'moe_router_logit_softcapping',
      { ...config('afmoe'), model_type: 'laguna', moe_router_logit_softcapping: 30.0 },
      { ...config('afmoe'), model_type: 'laguna' },
      /moe_router_logit_softcapping 30 .* not supported/,
    ],
    [
      'hy_v3',
      'mlp_bias',
      { ...config('afmoe'), model_type: 'hy_v3', mlp_bias: true },
      { ...config('afmoe'), model_type: 'hy_v3' },
      /hy_v3 with mlp_bias true .* not supported/,
    ],
    // a clamp on a dense layer (0) passes; on the MoE layer (1) it is refused, for the experts and for the shared expert
    [
      'step3p7',
      'swiglu_limits',
      step3p7({ swiglu_limits: [0, 7] }),
      step3p7({ swiglu_limits: [7, 0] }),
      /step3p7 swiglu_limits\[1\] = 7 on MoE layer 1 .* not supported/,
    ],
    [
      'step3p7',
      'swiglu_limits_shared',
      step3p7({ swiglu_limits_shared: [16, 16] }),
      step3p7({ swiglu_limits_shared: [16, null] }),
      /step3p7 swiglu_limits_shared\[1\] = 16 on MoE layer 1/,
    ],
  ] as const) {
    it(`${family}: ${key}`, () => {
      expect(() => familyFacts(bad)).toThrow(msg);
      expect(familyFacts(good).family).toBe(family);
    });
  }
});

describe('multimodal checkpoints and their text model_type give the same facts', () => {
  for (const [outer, inner] of [
    ['qwen3_vl_moe', 'qwen3_vl_moe_text'],
    ['glm4v_moe', 'glm4v_moe_text'],
  ] as const) {
    it(`${outer} (text_config) = ${inner}`, () => {
      const wrapped = familyFacts(config(outer));
      const text = familyFacts({ ...(config(outer).text_config as Record<string, unknown>), model_type: inner });
      expect([wrapped.family, text.family]).toEqual([outer, outer]);
      expect([text.numExperts, text.topK, text.hiddenSize, text.moeIntermediateSize, text.numLayers]).toEqual([8, 2, 48, 40, 2]);
      expect(text.routing).toEqual(wrapped.routing);
      expect(text.shared).toEqual(wrapped.shared);
    });
  }
});

describe('multimodal wrappers read the text model from text_config', () => {
  for (const [outer, inner] of [
    ['qwen3_5_moe', 'qwen3_5_moe'],
    ['gemma4', 'gemma4_text'],
  ] as const) {
    it(`${outer} (text_config of ${inner})`, () => {
      const text = config(inner);
      const wrapped = familyFacts({ model_type: outer, text_config: text, vision_config: { hidden_size: 16 } });
      const plain = familyFacts(text);
      expect(wrapped.family).toBe(plain.family);
      expect([wrapped.numExperts, wrapped.topK, wrapped.hiddenSize, wrapped.moeIntermediateSize, wrapped.numLayers]).toEqual([8, 2, 48, 40, 2]);
      expect(wrapped.routing).toEqual(plain.routing);
      expect(wrapped.shared).toEqual(plain.shared);
    });
  }
});
