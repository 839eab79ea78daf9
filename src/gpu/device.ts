/**
 * The process-wide WebGPU device (Dawn via the `webgpu` package). The object returned by
 * create() must stay alive for the whole process, or Dawn aborts/hangs when V8 collects it while
 * a device exists (platform-notes.md), so it lives in a module-level holder that is never cleared.
 */
import { MoekitError } from '../errors.js';

export interface Gpu {
  device: GPUDevice;
  adapterName: string;
  /** bytes one storage binding may cover: min(maxStorageBufferBindingSize, maxBufferSize) */
  maxBinding: number;
  limits: GPUSupportedLimits;
  /** timestamp-query is enabled (kernel timing) */
  timestamps: boolean;
  /** a software / fallback adapter (lavapipe): selects the register-blocked kernel variants */
  fallback: boolean;
}

const holder: { gpu?: unknown; ready?: Promise<Gpu> } = {};

const NO_ADAPTER =
  'no WebGPU adapter found; on Debian install a Vulkan driver (apt-get install -t bookworm-backports mesa-vulkan-drivers), ' +
  'set XDG_RUNTIME_DIR (e.g. /tmp), or run with --cpu';

async function init(): Promise<Gpu> {
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';
  let mod: typeof import('webgpu');
  try {
    mod = await import('webgpu');
  } catch (e) {
    throw new MoekitError('gpu', `cannot load the 'webgpu' package (${(e as Error).message.split('\n')[0]}); run with --cpu`);
  }
  Object.assign(globalThis, mod.globals);
  // MOEKIT_DAWN_FLAGS: Dawn options for create(), space-separated (e.g. enable-dawn-features=…), for experiments
  const gpu = mod.create((process.env.MOEKIT_DAWN_FLAGS ?? '').split(/\s+/).filter(Boolean));
  holder.gpu = gpu;
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new MoekitError('gpu', NO_ADAPTER);
  const l = adapter.limits;
  const requiredLimits: Record<string, number> = {};
  for (const k of [
    'maxStorageBufferBindingSize',
    'maxBufferSize',
    'maxStorageBuffersPerShaderStage',
    'maxComputeWorkgroupsPerDimension',
    'maxComputeInvocationsPerWorkgroup',
    'maxComputeWorkgroupSizeX',
    'maxComputeWorkgroupSizeY',
    'maxComputeWorkgroupStorageSize',
  ] as const) {
    requiredLimits[k] = l[k];
  }
  const timestamps = adapter.features.has('timestamp-query');
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures: timestamps ? ['timestamp-query'] : [] });
  device.addEventListener('uncapturederror', (ev) => {
    process.stderr.write(`moekit: WebGPU error: ${(ev as GPUUncapturedErrorEvent).error.message}\n`);
  });
  const info = adapter.info;
  const adapterName = [
    info.description || info.device || 'unknown adapter',
    info.vendor && `(${info.vendor}${info.architecture ? ' ' + info.architecture : ''})`,
  ]
    .filter(Boolean)
    .join(' ');
  return {
    device,
    adapterName,
    maxBinding: Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize),
    limits: device.limits,
    timestamps,
    fallback:
      !!(info as { isFallbackAdapter?: boolean }).isFallbackAdapter ||
      (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true ||
      /llvmpipe|lavapipe|swiftshader/i.test(adapterName),
  };
}

let waits = 0;
let immediate: typeof setImmediate | undefined;
const spaced = ((f: (...a: unknown[]) => void, ...a: unknown[]) => setTimeout(f, 1, ...a)) as unknown as typeof setImmediate;

/**
 * Wait for GPU work started by `start` (a mapAsync, onSubmittedWorkDone). Dawn's Node binding
 * polls for finished work through setImmediate for as long as one of its promises is pending, a
 * busy loop on the main thread. On a CPU adapter (lavapipe) the kernels run on the same cores, so
 * while such a wait is pending the polls go through setTimeout (1 ms apart): verify of a 2.13 GiB
 * nemo conversion against its source on 2 cores, user CPU 34 → 22 s, wall 21 → 19 s. On a real GPU
 * the polls stay immediate: the waits are short and 1 ms would be a third of a layer's kernels.
 */
export async function gpuWait<T>(gpu: Gpu, start: () => Promise<T>): Promise<T> {
  if (!gpu.fallback) return start();
  if (waits++ === 0) {
    immediate = globalThis.setImmediate;
    globalThis.setImmediate = spaced;
  }
  try {
    return await start();
  } finally {
    if (--waits === 0) globalThis.setImmediate = immediate!;
  }
}

/** The shared device; created on first use. Throws a one-line MoekitError when there is no adapter. */
export function getGpu(): Promise<Gpu> {
  if (!holder.ready) {
    holder.ready = init();
    holder.ready.catch(() => (holder.ready = undefined));
  }
  return holder.ready;
}
