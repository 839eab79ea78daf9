// Upload paths into a GPU buffer, timed on the host (issue 16: verify's writeBuffer time).
//   node scripts/device/upload-probe.mjs [GiB=2.5] [file]
// a: writeBuffer of 64 MiB chunks; b: writeBuffer of 4 MiB chunks; c: a pool of mapped MAP_WRITE
// staging buffers (64 MiB) filled by memcpy, copied on the GPU, mapped again for reuse; d: the same
// pool filled by fs reads from a file; e: fs reads into one reused host buffer; f: into fresh buffers.
import { getGpu } from '../../dist/src/gpu/device.js';
import { openSync, readSync, writeSync, closeSync, existsSync } from 'node:fs';
import { open } from 'node:fs/promises';

const GiB = Number(process.argv[2] ?? 2.5);
const file = process.argv[3] ?? '/tmp/upload-probe.bin';
const CH = 64 << 20;
const n = Math.round((GiB * 2 ** 30) / CH);
const total = n * CH;
const gpu = await getGpu();
const dev = gpu.device;
const dst = dev.createBuffer({ size: 1 << 30, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
const src = Buffer.alloc(CH, 7);
const idle = () => dev.queue.onSubmittedWorkDone();
const rate = (name, t0, extra = '') => {
  const ms = performance.now() - t0;
  console.log(`${name.padEnd(44)} ${ms.toFixed(0).padStart(6)} ms  ${(total / ms / 1e6).toFixed(2)} GB/s ${extra}`);
};
if (!existsSync(file)) {
  const fd = openSync(file, 'w');
  for (let i = 0; i < n; i++) writeSync(fd, src);
  closeSync(fd);
}
{
  // warm the page cache
  const fd = openSync(file, 'r');
  for (let i = 0; i < n; i++) readSync(fd, src, 0, CH, i * CH);
  closeSync(fd);
}
for (const rep of [1, 2]) {
  console.log(`-- round ${rep} (${(total / 2 ** 30).toFixed(2)} GiB, ${gpu.adapterName})`);
  for (const sz of [64 << 20, 4 << 20, 1 << 20]) {
    const t0 = performance.now();
    let pend = 0;
    for (let off = 0; off < total; off += sz) {
      dev.queue.writeBuffer(dst, off % (1 << 30), src, 0, sz);
      pend += sz;
      if (pend >= 128 << 20) {
        await idle();
        pend = 0;
      }
    }
    await idle();
    rate(`a/b writeBuffer ${sz >> 20} MiB`, t0);
  }
  for (const [fill, slots] of [
    ['memcpy', 2],
    ['memcpy', 4],
    ['fs read', 2],
    ['fs read', 4],
  ]) {
    const fh = await open(file, 'r');
    const pool = Array.from({ length: slots }, () =>
      dev.createBuffer({ size: CH, usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC, mappedAtCreation: true }),
    );
    const ready = pool.map(() => Promise.resolve());
    const t0 = performance.now();
    let waitMap = 0;
    for (let i = 0; i < n; i++) {
      const s = i % slots;
      const tw = performance.now();
      await ready[s];
      waitMap += performance.now() - tw;
      const view = Buffer.from(pool[s].getMappedRange());
      if (fill === 'memcpy') view.set(src);
      else {
        let got = 0;
        while (got < CH) got += (await fh.read(view, got, CH - got, i * CH + got)).bytesRead;
      }
      pool[s].unmap();
      const enc = dev.createCommandEncoder();
      enc.copyBufferToBuffer(pool[s], 0, dst, (i * CH) % (1 << 30), CH);
      dev.queue.submit([enc.finish()]);
      ready[s] = pool[s].mapAsync(GPUMapMode.WRITE);
    }
    await Promise.all(ready);
    await idle();
    rate(`c/d mapped pool ${slots}× 64 MiB, ${fill}`, t0, `(waiting for a slot ${waitMap.toFixed(0)} ms)`);
    for (const b of pool) b.destroy();
    await fh.close();
  }
  {
    // two reads in flight into two reused host buffers (as fetchUpload does), then fresh buffers
    const fh = await open(file, 'r');
    const bufs = [Buffer.allocUnsafeSlow(CH), Buffer.allocUnsafeSlow(CH)];
    const rd = (b, i) => fh.read(b, 0, CH, i * CH);
    let t0 = performance.now();
    let next = rd(bufs[0], 0);
    for (let i = 0; i < n; i++) {
      await next;
      if (i + 1 < n) next = rd(bufs[(i + 1) % 2], i + 1);
    }
    rate('e fs read, two reused host buffers', t0);
    t0 = performance.now();
    for (let i = 0; i < n; i++) await fh.read(Buffer.allocUnsafeSlow(CH), 0, CH, i * CH);
    rate('f fs read into fresh buffers', t0);
    await fh.close();
  }
}
process.exit(0);
