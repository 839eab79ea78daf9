// The read bandwidth a WGSL kernel reaches on this adapter (issue 16: how far the expert kernels are from
// what WebGPU itself can stream). Each variant reads every word of a 1 GiB storage buffer once per
// dispatch (grid-stride loop, the words XORed together, one u32 written per invocation so nothing is
// optimised away); 16 dispatches in one submission, the median of 5 submissions, wall time on the
// host (the dispatches are long enough that submission overhead is noise).
//   node scripts/device/hbm-probe.mjs [workgroups = 1024]   (after scripts/device/pack-dist.sh; carry [".device", "dist"])
// Rows: load width (vec2<u32> 8 B, vec4<u32> 16 B) × independent loads in flight per iteration (1, 4),
// and the result scaled to the Mixtral-8x7B layer's 2.63 GiB (the expert kernels' bytes).
import { getGpu } from '../../dist/src/gpu/device.js';

const groups = Number(process.argv[2] ?? 1024);
const gpu = await getGpu();
const dev = gpu.device;
const SIZE = Math.min(1 << 30, Math.floor(gpu.maxBinding / 16) * 16); // lavapipe binds at most 128 MiB
const src = dev.createBuffer({ size: SIZE, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
const out = dev.createBuffer({ size: groups * 256 * 4, usage: GPUBufferUsage.STORAGE });
const layer = 2.63 * 2 ** 30;

function shader(vec, unroll) {
  const T = vec === 2 ? 'vec2<u32>' : 'vec4<u32>';
  const loads = Array.from({ length: unroll }, (_, k) => `let w${k} = src[i + ${k}u * stride];`).join('\n      ');
  const xors = Array.from({ length: unroll }, (_, k) => `a ^= w${k};`).join(' ');
  return `
@group(0) @binding(0) var<storage, read> src: array<${T}>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  let stride = nw.x * 256u;
  let n = arrayLength(&src);
  var a = ${T}();
  var i = gid.x;
  for (; i + ${unroll - 1}u * stride < n; i += ${unroll}u * stride) {
      ${loads}
      ${xors}
  }
  for (; i < n; i += stride) { a ^= src[i]; }
  var s = 0u;
  for (var k = 0u; k < ${vec}u; k++) { s ^= a[k]; }
  out[gid.x] = s;
}`;
}

console.log(`${gpu.adapterName}: ${groups} workgroups of 256, ${SIZE >> 20} MiB read per dispatch`);
for (const [vec, unroll] of [
  [2, 1],
  [2, 4],
  [4, 1],
  [4, 4],
]) {
  dev.pushErrorScope('validation');
  const module = dev.createShaderModule({ code: shader(vec, unroll) });
  const pipe = dev.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  const bind = dev.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: src } },
      { binding: 1, resource: { buffer: out } },
    ],
  });
  const err = await dev.popErrorScope();
  if (err) throw new Error(err.message.split('\n')[0]);
  const times = [];
  for (let rep = 0; rep < 6; rep++) {
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bind);
    for (let d = 0; d < 16; d++) pass.dispatchWorkgroups(groups);
    pass.end();
    const t0 = performance.now();
    dev.queue.submit([enc.finish()]);
    await dev.queue.onSubmittedWorkDone();
    if (rep > 0) times.push((performance.now() - t0) / 16);
  }
  times.sort((a, b) => a - b);
  const ms = times[times.length >> 1];
  const gbs = SIZE / ms / 1e6;
  console.log(
    `${`${vec * 4}-byte loads, ${unroll} in flight`.padEnd(28)} ${ms.toFixed(3)} ms  ${gbs.toFixed(0)} GB/s  the layer's 2.63 GiB: ${((layer / SIZE) * ms).toFixed(2)} ms`,
  );
}
