/**
 * Loads the WGSL kernels of <package root>/kernels (or $MOEKIT_KERNEL_DIR; kernels/common.wgsl is prepended to each) and
 * caches compute pipelines by kernel name and override constants. Layouts are explicit (not
 * 'auto') so a binding an override constant makes unused (e.g. the gate of a non-gated MLP)
 * still has a slot.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MoekitError } from '../errors.js';

/** Binding kinds in order from @binding(0): u = uniform, r = read-only storage, w = read-write storage. */
const KERNEL_BINDINGS = {
  router_logits: 'urrrw',
  router_select: 'urrww',
  gather: 'urw',
  expert_up: 'urrrrrrw',
  expert_down: 'urrrrrw',
  expert_up_gpu: 'urrrrrrw',
  expert_down_gpu: 'urrrrrw',
  expert_up_stream: 'urrrrrrw',
  expert_down_stream: 'urrrrrw',
  combine: 'urrw',
} as const;
export type KernelName = keyof typeof KERNEL_BINDINGS;

/** <package root>/kernels (also holds the CPU forward's WebAssembly kernel). */
export function kernelsDir(code: 'gpu' | 'internal' = 'gpu'): string {
  // src/gpu/*.ts under vitest, dist/src/gpu/*.js when built: walk up to the package root.
  let d = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(d, 'kernels', 'common.wgsl')) && existsSync(join(d, 'package.json'))) return join(d, 'kernels');
    d = dirname(d);
  }
  throw new MoekitError(code, 'cannot find the kernels/ folder of the moekit package (broken install?)');
}

const sources = new Map<string, string>();
function source(name: string): string {
  let s = sources.get(name);
  if (s === undefined) {
    // MOEKIT_KERNEL_DIR: WGSL sources to use instead of the package's (kernel development on a GPU
    // machine without a rebuild: scripts/device/kernel-ablate.sh)
    const dir = process.env.MOEKIT_KERNEL_DIR || kernelsDir();
    s = readFileSync(join(dir, 'common.wgsl'), 'utf8') + '\n' + readFileSync(join(dir, `${name}.wgsl`), 'utf8');
    sources.set(name, s);
  }
  return s;
}

interface Kernel {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
}
const cache = new WeakMap<GPUDevice, Map<string, Kernel>>();

export function kernel(device: GPUDevice, name: KernelName, constants: Record<string, number> = {}): Kernel {
  let m = cache.get(device);
  if (!m) cache.set(device, (m = new Map()));
  const key = name + JSON.stringify(constants);
  let k = m.get(key);
  if (!k) {
    const entries: GPUBindGroupLayoutEntry[] = [...KERNEL_BINDINGS[name]].map((c, binding) => ({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: c === 'u' ? 'uniform' : c === 'r' ? 'read-only-storage' : 'storage' },
    }));
    const layout = device.createBindGroupLayout({ entries, label: name });
    const module = device.createShaderModule({ code: source(name), label: name });
    const pipeline = device.createComputePipeline({
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: 'main', constants },
      label: key,
    });
    m.set(key, (k = { pipeline, layout }));
  }
  return k;
}
