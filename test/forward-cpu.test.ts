import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { toFloat32 } from '../src/engine/cast.js';
import { layerSource } from '../src/forward/ir-loader.js';
import { compare, forwardCpu } from '../src/forward/cpu.js';
import { topk, routeToken } from '../src/forward/routing.js';
import { familyFacts } from '../src/families/index.js';

const FIX = new URL('../fixtures/hf/', import.meta.url).pathname;
const WITH_REF = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'deepseek_v3', 'gpt_oss', 'llama_dense', 'qwen3_dense', 'granitemoe', 'llama4_text', 'phimoe'];

async function refOf(name: string) {
  const ref = await openStore(join(FIX, name, 'reference.safetensors'));
  const get = async (n: string) => toFloat32(await ref.read(n), 'F32');
  return { ref, get };
}

describe('CPU reference forward vs transformers outputs', () => {
  for (const [name, refName, tol] of [
    ...WITH_REF.map((n) => [n, n, 1e-5] as const),
    ['mixtral_bf16', 'mixtral', 2e-2] as const,
    ['deepseek_v3_bf16', 'deepseek_v3', 2e-2] as const,
  ]) {
    it(`${name} matches ${refName}/reference.safetensors (rel ≤ ${tol})`, async () => {
      const ck = await openStore(join(FIX, name));
      const config = (await ck.config())!;
      const { ref, get } = await refOf(refName);
      const x = await get('input');
      const T = ref.info('input').shape[0]!;
      const layers = (await layerSource(ck, config)).layers.filter((l) => ref.has(`layers.${l}.output`));
      expect(layers.length).toBeGreaterThan(0);
      for (const l of layers) {
        const { weights, facts } = await (await layerSource(ck, config)).load(l);
        const r = forwardCpu(weights, facts, x, T);
        const c = compare(r.out, await get(`layers.${l}.output`));
        expect(c.maxRel, `${name} layer ${l}`).toBeLessThanOrEqual(tol);
        if (name === refName) expect(c.maxRel).toBeGreaterThan(0); // not a tautology: outputs come from torch
      }
      await ck.close();
      await ref.close();
    });
  }
});

describe('routing rules', () => {
  const base = familyFacts({
    model_type: 'deepseek_v3',
    n_routed_experts: 8,
    num_experts_per_tok: 2,
    n_group: 4,
    topk_group: 1,
    routed_scaling_factor: 2,
    num_hidden_layers: 1,
    hidden_size: 4,
  }).routing;
  it('top-k breaks ties toward the lower index', () => {
    expect(topk([1, 3, 3, 0], 2)).toEqual([1, 2]);
  });
  it('group-limited top-k picks only inside the best group (ranked by top-2 sum)', () => {
    // groups of 2: g0 = {0,1}, g1 = {2,3}, g2 = {4,5}, g3 = {6,7}; g2 has the best top-2 sum
    const logits = Float64Array.from([3, -3, 2, -3, 1.5, 1.4, -3, -3]);
    const { ids, weights } = routeToken(logits, base);
    expect(ids).toEqual([4, 5]);
    const s = 1 / (1 + Math.exp(-1.5));
    const t = 1 / (1 + Math.exp(-1.4));
    expect(weights[0]).toBeCloseTo((2 * s) / (s + t), 12);
  });
  it('unselected groups masked with −inf (Kimi-Linear, MiMo-V2-Flash, A.X-K1) and with 0.0 (DeepSeek-V3) choose differently when a kept biased score is negative', () => {
    // the kept group g2 = {4, 5}: choice 4 = σ(1) + 0.5 = 1.231, choice 5 = σ(0) − 0.9 = −0.4; every other expert σ(0) − 0.6 = −0.1
    const logits = Float64Array.from([0, 0, 0, 0, 1, 0, 0, 0]);
    const bias = Float32Array.from([-0.6, -0.6, -0.6, -0.6, 0.5, -0.9, -0.6, -0.6]);
    // 0.0 masking: the masked expert 0 (0.0) outranks the kept expert 5 (−0.4)
    expect(routeToken(logits, base, bias).ids).toEqual([4, 0]);
    const inf = routeToken(logits, { ...base, groupMask: '-inf' }, bias);
    expect(inf.ids).toEqual([4, 5]);
    const [s4, s5] = [1 / (1 + Math.exp(-1)), 0.5];
    expect(inf.weights[0]).toBeCloseTo((2 * s4) / (s4 + s5), 12);
    expect(inf.weights[1]).toBeCloseTo((2 * s5) / (s4 + s5), 12);
  });
});
