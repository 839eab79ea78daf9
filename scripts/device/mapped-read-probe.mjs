// Where verify's upload path meets its limit (issue 16: verify / read): page-cache reads of one file,
// 8 MiB each (CH_MIB="8 16" for more read sizes), D in flight (libuv threads = UV_THREADPOOL_SIZE), into
//   host:    reused host buffers (the bare read verify-bench compares with)
//   mapped:  reused mapped MAP_WRITE staging buffers, left mapped (no GPU work): the memory verify reads into
//   cycle:   the same buffers as verify uses them: read, unmap, copy to a GPU buffer, map again
//   node scripts/device/mapped-read-probe.mjs [GiB=2.5] [file]   (UV_THREADPOOL_SIZE=8 as the CLI)
process.env.UV_THREADPOOL_SIZE ??= '8';
const { getGpu } = await import('../../dist/src/gpu/device.js');
const { openSync, writeSync, closeSync, existsSync, readSync } = await import('node:fs');
const { open } = await import('node:fs/promises');
const GiB = Number(process.argv[2] ?? 2.5);
const file = process.argv[3] ?? '/tmp/mapped-read-probe.bin';
const SIZES = (process.env.CH_MIB ?? '8').split(/\s+/).map(Number);
const total = Math.round((GiB * 2 ** 30) / (64 << 20)) * (64 << 20); // whole 64 MiB, so every read size divides it
let CH = SIZES[0] << 20;
if (!existsSync(file)) {
  const b = Buffer.alloc(64 << 20, 3);
  const fd = openSync(file, 'w');
  for (let i = 0; i < total / b.length; i++) writeSync(fd, b);
  closeSync(fd);
}
{
  const b = Buffer.alloc(64 << 20);
  const fd = openSync(file, 'r');
  for (let i = 0; i < total / b.length; i++) readSync(fd, b, 0, b.length, i * b.length);
  closeSync(fd);
}
const gpu = await getGpu();
const dev = gpu.device;
const dst = dev.createBuffer({ size: 1 << 30, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
const fh = await open(file, 'r');
async function run(name, D, view, after) {
  const t0 = performance.now();
  const inflight = new Array(D);
  for (let i = 0; i < total / CH; i++) {
    const k = i % D;
    await inflight[k];
    inflight[k] = (async () => {
      const v = await view(k);
      await fh.read(v, 0, CH, i * CH);
      if (after) await after(k, i);
    })();
  }
  await Promise.all(inflight);
  const ms = performance.now() - t0;
  console.log(`${name.padEnd(28)} D ${String(D).padStart(2)}  ${ms.toFixed(0).padStart(5)} ms  ${(total / ms / 1e6).toFixed(1)} GB/s`);
}
for (const round of [1, 2])
  for (const mib of SIZES) {
    CH = mib << 20;
    console.log(
      `-- round ${round}: ${(total / 2 ** 30).toFixed(2)} GiB in ${mib} MiB reads, ${gpu.adapterName}, ${process.env.UV_THREADPOOL_SIZE} libuv threads`,
    );
    for (const D of [4, 8, 16]) {
      const host = Array.from({ length: D }, () => Buffer.allocUnsafeSlow(CH));
      await run('host buffers', D, async (k) => host[k]);
      const bufs = Array.from({ length: D }, () =>
        dev.createBuffer({ size: CH, usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC, mappedAtCreation: true }),
      );
      const views = bufs.map((b) => Buffer.from(b.getMappedRange()));
      await run('mapped, left mapped', D, async (k) => views[k]);
      const ready = bufs.map(() => Promise.resolve());
      const cur = views.slice();
      await run(
        'mapped, copy + remap',
        D,
        async (k) => {
          await ready[k];
          return cur[k];
        },
        async (k, i) => {
          bufs[k].unmap();
          const enc = dev.createCommandEncoder();
          enc.copyBufferToBuffer(bufs[k], 0, dst, (i * CH) % (1 << 30), CH);
          dev.queue.submit([enc.finish()]);
          ready[k] = bufs[k].mapAsync(GPUMapMode.WRITE).then(() => {
            cur[k] = Buffer.from(bufs[k].getMappedRange());
          });
        },
      );
      await Promise.all(ready);
      for (const b of bufs) b.destroy();
    }
  }
await fh.close();
process.exit(0);
