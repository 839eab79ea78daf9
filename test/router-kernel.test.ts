/**
 * kernels/router_select.wgsl on its own: group-limited sigmoid routing with the unselected groups masked to
 * 0.0 (maskInf 0, DeepSeek-V3) and to −inf (maskInf 1, Kimi-Linear / MiMo-V2-Flash / A.X-K1) selects what the
 * CPU rule (src/forward/routing.ts routeToken) selects, on a token where the two maskings differ.
 */
import { describe, expect, it } from 'vitest';
import { getGpu } from '../src/gpu/device.js';
import { kernel } from '../src/gpu/kernels.js';
import { routeToken } from '../src/forward/routing.js';
import { makeRouting } from '../src/families/index.js';

async function select(logits: Float32Array, corr: Float32Array, E: number, K: number, maskInf: number) {
  const { device } = await getGpu();
  const T = logits.length / E;
  const buf = (data: ArrayBufferView, usage: number) => {
    const b = device.createBuffer({ size: Math.max(16, data.byteLength), usage: usage | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, data.byteLength);
    return b;
  };
  // T, E, K, KS, mode (1 sigmoid), nGroup, topkGroup, norm, hasCorr, scale (f32), maskInf, pad
  const u = new Uint32Array([T, E, K, K, 1, 4, 1, 1, 1, 0, maskInf, 0]);
  new Float32Array(u.buffer, 9 * 4, 1)[0] = 2;
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC;
  const ids = device.createBuffer({ size: T * K * 4, usage: S });
  const rw = device.createBuffer({ size: T * K * 4, usage: S });
  const k = kernel(device, 'router_select');
  const bind = device.createBindGroup({
    layout: k.layout,
    entries: [buf(u, GPUBufferUsage.UNIFORM), buf(logits, GPUBufferUsage.STORAGE), buf(corr, GPUBufferUsage.STORAGE), ids, rw].map((buffer, binding) => ({
      binding,
      resource: { buffer },
    })),
  });
  const read = device.createBuffer({ size: 2 * T * K * 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(k.pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(Math.ceil(T / 64));
  pass.end();
  enc.copyBufferToBuffer(ids, 0, read, 0, T * K * 4);
  enc.copyBufferToBuffer(rw, 0, read, T * K * 4, T * K * 4);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const bytes = read.getMappedRange().slice(0);
  read.unmap();
  return { ids: [...new Uint32Array(bytes, 0, T * K)], weights: [...new Float32Array(bytes, T * K * 4, T * K)] };
}

describe('router_select.wgsl: group masking', () => {
  // groups of 2; the kept group {4, 5} holds a negative biased score (σ(0) − 0.9), the masked experts σ(0) − 0.6
  const logits = Float32Array.from([0, 0, 0, 0, 1, 0, 0, 0]);
  const corr = Float32Array.from([-0.6, -0.6, -0.6, -0.6, 0.5, -0.9, -0.6, -0.6]);
  const r = makeRouting({ scoreFunc: 'sigmoid', topK: 2, nGroup: 4, topkGroup: 1, normTopkProb: true, routedScalingFactor: 2, correctionBias: true });
  for (const [maskInf, groupMask, want] of [
    [0, 'zero', [4, 0]],
    [1, '-inf', [4, 5]],
  ] as const) {
    it(`maskInf ${maskInf} selects ${want} as the CPU rule does with groupMask '${groupMask}'`, async () => {
      const gpu = await select(logits, corr, 8, 2, maskInf);
      const cpu = routeToken(Float64Array.from(logits), { ...r, groupMask }, corr);
      expect(cpu.ids).toEqual(want);
      expect(gpu.ids).toEqual(cpu.ids);
      for (let j = 0; j < 2; j++) expect(gpu.weights[j]).toBeCloseTo(cpu.weights[j]!, 5);
    });
  }
});
