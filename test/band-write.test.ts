/**
 * Transposed slabs built and written in row bands by the transpose workers (src/engine/execute.ts
 * writeBands): the same bytes as whole slabs written from the main thread, the bands really taken,
 * and a failed write on a worker surfacing as the system error it is.
 */
import { afterAll, describe, expect, it, vi } from 'vitest';
import { closeSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { convert } from '../src/ops/convert.js';
import { openStore } from '../src/store/registry.js';
import { WasmWorkers } from '../src/engine/wasm-workers.js';
import { arena } from '../src/engine/arena.js';
import { writeSyntheticMixtral } from '../bench/lib.js';
import { runCli, tempDir } from './helpers.js';

const tmp = tempDir('moekit-bands-');
afterAll(() => tmp.cleanup());
const src = join(tmp.dir, 'src');
// gate_and_up slabs of nemo [H, 2I] = 3 MiB: four 768 KiB bands; down [I, H] 1.5 MiB: whole
const ready = writeSyntheticMixtral(src, { layers: 2, experts: 4, hidden: 512, inter: 1536 });

/** The checkpoint at `back` holds the tensors of `src`, by name, bit for bit. */
async function expectSameTensors(src: string, back: string): Promise<void> {
  const a = await openStore(src);
  const b = await openStore(back);
  try {
    expect([...b.tensors.keys()].sort()).toEqual([...a.tensors.keys()].sort());
    for (const t of a.tensors.values()) expect(Buffer.from(await b.read(b.tensors.get(t.name)!)).equals(Buffer.from(await a.read(t))), t.name).toBe(true);
  } finally {
    await a.close();
    await b.close();
  }
}

const files = (dir: string) =>
  readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .sort();

describe('transposed slabs written in bands by the transpose workers', () => {
  for (const to of ['nemo', 'megatron-grouped']) {
    it(`--to ${to}: the bytes of whole slabs written from the main thread`, async () => {
      await ready;
      const spy = vi.spyOn(WasmWorkers.prototype, 'writeBands');
      try {
        const banded = join(tmp.dir, `${to}-bands`);
        await convert(src, banded, { to, fsync: false });
        // the bands were taken (the test would pass trivially on the old path otherwise)
        expect(spy).toHaveBeenCalled();
        const whole = join(tmp.dir, `${to}-whole`);
        const r = runCli(['convert', src, '--to', to, '-o', whole, '--no-fsync'], { env: { MOEKIT_STREAM_BAND: '0' } });
        expect(r.code, r.stderr).toBe(0);
        expect(files(banded)).toEqual(files(whole));
        for (const f of files(whole)) expect(readFileSync(join(banded, f)).equals(readFileSync(join(whole, f))), f).toBe(true);
      } finally {
        spy.mockRestore();
      }
    });
  }

  it('without the SIMD kernels (MOEKIT_NO_SIMD=1) a pinned slab is built whole from its sources: the same bytes', async () => {
    await ready;
    const outs = ['0', '1'].map((noSimd) => {
      const o = join(tmp.dir, `nosimd-${noSimd}`);
      const env = noSimd === '1' ? { MOEKIT_NO_SIMD: '1' } : { MOEKIT_STREAM_BAND: '0' };
      const r = runCli(['convert', src, '--to', 'nemo', '-o', o, '--no-fsync'], { env });
      expect(r.code, r.stderr).toBe(0);
      return o;
    });
    for (const f of files(outs[0]!)) expect(readFileSync(join(outs[1]!, f)).equals(readFileSync(join(outs[0]!, f))), f).toBe(true);
  });

  it('nemo written in bands converts back to the source tensors, bit for bit', async () => {
    await ready;
    const nemo = join(tmp.dir, 'rt-nemo');
    await convert(src, nemo, { to: 'nemo', fsync: false });
    const back = join(tmp.dir, 'rt-hf');
    await convert(nemo, back, { to: 'hf', fsync: false });
    await expectSameTensors(src, back);
  });

  it("a worker's failed write rejects with the system error (its code kept for the exit status), not an internal one", async () => {
    const buf = arena.alloc(1 << 16)!;
    const fd = openSync(join(tmp.dir, 'closed'), 'w');
    closeSync(fd);
    try {
      const p = arena.workers().writeBands(0, fd, buf.byteOffset, [{ pos: 0, bytes: 4096, calls: [] }]);
      await expect(p).rejects.toMatchObject({ code: 'EBADF' });
      await expect(p).rejects.not.toHaveProperty('exitCode');
    } finally {
      arena.release(buf);
    }
  });
});

/** The export names of every kernel call the workers were asked to run in bands. */
function bandFns(spy: { mock: { calls: unknown[][] } }): Set<string> {
  const fns = new Set<string>();
  for (const [, , , list] of spy.mock.calls) for (const b of list as { calls: { fn: string }[] }[]) for (const c of b.calls) fns.add(c.fn);
  return fns;
}

describe('fused families (GPT-OSS interleaved, Llama4 concatenated gate_up_proj [E,H,2I]) in bands', () => {
  // gate_up_proj per expert [512, 3072] bf16 = 3 MiB: four bands
  const fams = { gpt_oss: join(tmp.dir, 'gpt-oss'), llama4: join(tmp.dir, 'llama4') };
  const made = Promise.all(
    Object.entries(fams).map(([f, dir]) => writeSyntheticMixtral(dir, { layers: 1, experts: 4, hidden: 512, inter: 1536 }, 1 << 30, f as 'gpt_oss' | 'llama4')),
  );
  // [family, target, the kernel that takes one half of the pair apart (p transposed, g rows kept; t for
  // concatenated halves), the one that puts it back (q transposed, s rows kept)]
  const cases: [keyof typeof fams, string, string, string][] = [
    ['gpt_oss', 'te', 'p16', 'q16'],
    ['gpt_oss', 'nemo', 'g16', 's16'],
    ['llama4', 'te', 't16', 't16'],
  ];
  for (const [fam, to, fn, backFn] of cases) {
    it(`${fam} --to ${to} and back: bands on the ${fn} and ${backFn} kernels, the bytes of the JS kernels on whole slabs, the source bit for bit`, async () => {
      await made;
      const spy = vi.spyOn(WasmWorkers.prototype, 'writeBands');
      const out = join(tmp.dir, `${fam}-${to}`);
      try {
        await convert(fams[fam], out, { to, fsync: false });
        expect(bandFns(spy)).toContain(fn);
      } finally {
        spy.mockRestore();
      }
      const js = join(tmp.dir, `${fam}-${to}-js`);
      const r = runCli(['convert', fams[fam], '--to', to, '-o', js, '--no-fsync'], { env: { MOEKIT_NO_SIMD: '1', MOEKIT_STREAM_BAND: '0' } });
      expect(r.code, r.stderr).toBe(0);
      expect(files(out)).toEqual(files(js));
      for (const f of files(js)) expect(readFileSync(join(out, f)).equals(readFileSync(join(js, f))), f).toBe(true);
      const back = join(tmp.dir, `${fam}-${to}-back`);
      const spyBack = vi.spyOn(WasmWorkers.prototype, 'writeBands');
      try {
        await convert(out, back, { to: 'hf', fsync: false });
        expect(bandFns(spyBack)).toContain(backFn);
      } finally {
        spyBack.mockRestore();
      }
      await expectSameTensors(fams[fam], back);
    });
  }

  it("GPT-OSS's down_proj [E,I,H] into nemo's down_projs [E,I,H] (a transpose of a transpose) is planned as byte ranges, not a strided copy", async () => {
    await made;
    const r = runCli(['convert', fams.gpt_oss, '--to', 'nemo', '-o', join(tmp.dir, 'dry'), '--dry-run', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const plan = JSON.parse(r.stdout) as { plan: { outputs: { files: { tensors: { name: string; action: string }[] }[] }[] } };
    const down = plan.plan.outputs[0]!.files.flatMap((f) => f.tensors).find((t) => t.name.endsWith('experts.down_projs'));
    expect(down?.action).toBe('restack');
  });
});
