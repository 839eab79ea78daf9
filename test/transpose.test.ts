import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { arena, arenaCopy } from '../src/engine/arena.js';
import { bandSlab } from '../src/engine/band.js';
import { View, copyView, materialize } from '../src/engine/ir.js';
import { writeCheckpoint, bufferSource } from '../src/store/safetensors/writer.js';
import { stridedCopyGeneric } from '../src/engine/strided.js';
import type { SlabPlan } from '../src/engine/plan.js';
import { writeSyntheticMixtral } from '../bench/lib.js';
import { openStore } from '../src/store/registry.js';
import { runCli, tempDir, generatedKernelsDiffer } from './helpers.js';

/** Deterministic distinct-ish values. */
function fill(b: Uint8Array, seed: number): void {
  let s = seed >>> 0 || 1;
  for (let i = 0; i < b.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    b[i] = s & 0xff;
  }
}

describe('SIMD transpose kernel (kernels/transpose.wasm)', () => {
  it('the committed kernels/transpose.{wat,wasm} are what scripts/gen-transpose-kernel.mjs writes', () => {
    expect(generatedKernelsDiffer('gen-transpose-kernel.mjs', ['transpose.wat', 'transpose.wasm'])).toEqual([]);
  });

  // [unit, shape, dst strides, src strides, src offset] in units: plain transposes with ragged edges, a batch
  // with an outer dim, a strided destination (a half of nemo's fused gate_up); then halves of an
  // interleaved gate/up pair (GPT-OSS's [H, 2I], gate at even elements, up at odd): transposed (as te
  // reads them; kernels pNN) and rows kept (as nemo does; gNN), widths on and off the vector size
  const cases: [2 | 4, number[], number[], number[], number?, number?][] = [
    [2, [131, 257], [1, 131], [257, 1]],
    [4, [200, 97], [1, 200], [97, 1]],
    [2, [3, 130, 129], [130 * 129, 1, 130], [130 * 129, 129, 1]],
    [2, [300, 128], [1, 600], [128, 1]],
    [4, [64, 300], [1, 128], [300, 1]],
    [2, [129, 300], [300, 1], [2, 258], 0],
    [2, [129, 300], [300, 1], [2, 258], 1],
    [2, [128, 200], [200, 1], [2, 256], 1],
    [4, [131, 130], [130, 1], [2, 262], 1],
    [2, [300, 129], [258, 1], [258, 2], 0],
    [2, [300, 129], [258, 1], [258, 2], 1],
    [2, [200, 128], [256, 1], [256, 2], 1],
    [4, [130, 131], [131, 1], [262, 2], 1],
    [2, [2, 100, 96], [9600, 96, 1], [19200, 192, 2], 1],
    // and written into one half of a pair (GPT-OSS from nemo: sNN; from te: qNN), the other half's elements kept
    [2, [300, 129], [258, 2], [129, 1], 0, 2],
    [2, [300, 129], [258, 2], [129, 1], 0, 3],
    [4, [130, 131], [262, 2], [131, 1], 0, 3],
    [2, [129, 300], [2, 258], [300, 1], 0, 3],
    [2, [128, 200], [2, 256], [200, 1], 0, 2],
    [4, [131, 130], [2, 262], [130, 1], 0, 3],
  ];
  for (const [unit, shape, dSt, sSt, sOff = 0, dOff = 2] of cases) {
    it(`${unit * 8}-bit ${JSON.stringify(shape)} dst ${JSON.stringify(dSt)}+${dOff} src ${JSON.stringify(sSt)}+${sOff}: equal to the element-by-element reference`, async () => {
      const span = (st: number[]) => shape.reduce((a, n, k) => a + (n - 1) * st[k]!, 0) + 1;
      const sBytes = (span(sSt) + sOff) * unit;
      const dBytes = (span(dSt) + dOff) * unit;
      const src = arena.alloc(sBytes + 64)!.subarray(64 - unit * 3);
      const dst = arena.alloc(dBytes + 32)!;
      const ref = Buffer.alloc(dBytes + 32);
      fill(src, 7);
      fill(dst, 9);
      ref.set(dst);
      const T = unit === 2 ? Uint16Array : Uint32Array;
      const view = (b: Buffer) => new T(b.buffer, b.byteOffset, Math.floor(b.byteLength / unit));
      expect(await arenaCopy(dst, dOff, dSt, src, sOff, sSt, shape, unit)).toBe(true);
      stridedCopyGeneric(view(ref), dOff, dSt, view(src), sOff, sSt, shape);
      expect(Buffer.compare(dst, ref)).toBe(0);
      arena.release(dst);
    });
  }

  it('leaves what it does not handle to the JS kernels: heap buffers, contiguous runs, small blocks', async () => {
    const a = arena.alloc(1 << 20)!;
    const b = arena.alloc(1 << 20)!;
    expect(await arenaCopy(Buffer.alloc(1 << 20), 0, [1, 512], b, 0, [512, 1], [512, 512], 2)).toBe(false);
    expect(await arenaCopy(a, 0, [512, 1], b, 0, [512, 1], [512, 512], 2)).toBe(false);
    expect(await arenaCopy(a, 0, [1, 8], b, 0, [8, 1], [8, 8], 2)).toBe(false);
    arena.release(a);
    arena.release(b);
  });

  it("materialize of a transposed view from a checkpoint into a heap buffer (as verify's upload slots): the transpose, gathered in the arena", async () => {
    const tmp = tempDir('moekit-mat-');
    try {
      const [R, C] = [640, 1536]; // bf16, 1.9 MiB: the SIMD kernel's size
      const data = Buffer.alloc(R * C * 2);
      fill(data, 7);
      await writeCheckpoint(tmp.dir, [{ name: 'w', dtype: 'BF16', shape: [R, C], source: bufferSource(data) }], { fsync: false });
      const st = await openStore(tmp.dir);
      try {
        const v = View.ofTensor(st, st.info('w')).transpose(); // [C, R]
        const want = Buffer.alloc(data.length);
        for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) want.writeUInt16LE(data.readUInt16LE((r * C + c) * 2), (c * R + r) * 2);
        const into = Buffer.alloc(data.length + 64, 0xee);
        const got = await materialize(v, into);
        expect(arena.holds(into)).toBe(false);
        expect(Buffer.compare(got, want)).toBe(0);
        expect(into[data.length]).toBe(0xee); // nothing past the view's bytes
        // a row block of the transposed view, as the forwards ask for
        const rows = await materialize(v.slice(0, 100, 612), Buffer.alloc(512 * R * 2));
        expect(Buffer.compare(rows, want.subarray(100 * R * 2, 612 * R * 2))).toBe(0);
      } finally {
        await st.close();
      }
    } finally {
      tmp.cleanup();
    }
  });

  it('the arena reuses and merges freed blocks', () => {
    const x = arena.alloc(3 << 20)!;
    const y = arena.alloc(5 << 20)!;
    const at = x.byteOffset;
    arena.release(x);
    arena.release(y);
    const z = arena.alloc(8 << 20)!; // only fits where x and y were once they merge
    expect(z.byteOffset).toBe(at);
    arena.release(z);
  });
});

describe('row bands of an assembled slab', () => {
  const H = 48;
  const I = 40;
  const src = (seed: number, shape: number[]) => {
    const b = Buffer.alloc(shape.reduce((a, n) => a * n, 1) * 2);
    fill(b, seed);
    return View.ofBuffer(b, 'BF16', shape);
  };
  const assemble = async (s: Extract<SlabPlan, { kind: 'assemble' }>) => {
    const buf = Buffer.alloc(s.shape.reduce((a, n) => a * n, 1) * 2);
    const storage = { kind: 'memory' as const, buf };
    for (const p of s.parts) await copyView(p.src, new View(storage, p.dst.dtype, p.dst.offset, p.dst.shape, p.dst.strides));
    return buf;
  };
  const slab = (shape: number[], parts: [View, (v: View) => View][]): Extract<SlabPlan, { kind: 'assemble' }> => {
    const probe = View.ofBuffer(Buffer.alloc(0), 'BF16', shape);
    return { kind: 'assemble', dtype: 'BF16', shape, parts: parts.map(([s, loc]) => ({ src: s, dst: loc(probe) })) };
  };
  const layouts: [string, Extract<SlabPlan, { kind: 'assemble' }>][] = [
    // nemo's gate_and_up [H, 2I]: gate and up transposed side by side
    [
      'concatenated halves, transposed',
      slab(
        [H, 2 * I],
        [
          [src(1, [I, H]), (v) => v.slice(1, 0, I).T],
          [src(2, [I, H]), (v) => v.slice(1, I, 2 * I).T],
        ],
      ),
    ],
    // gpt-oss style [H, 2I] with gate and up interleaved by column
    [
      'interleaved columns, transposed',
      slab(
        [H, 2 * I],
        [
          [src(3, [I, H]), (v) => v.slice(1, 0, 2 * I, 2).T],
          [src(4, [I, H]), (v) => v.slice(1, 1, 2 * I, 2).T],
        ],
      ),
    ],
    // a fused [2I, H] with gate and up interleaved by row, and one [3, I, H] stack of experts
    [
      'interleaved rows',
      slab(
        [2 * I, H],
        [
          [src(5, [I, H]), (v) => v.slice(0, 0, 2 * I, 2)],
          [src(6, [I, H]), (v) => v.slice(0, 1, 2 * I, 2)],
        ],
      ),
    ],
    [
      'a stack of experts',
      slab(
        [3, I, H],
        [0, 1, 2].map((e) => [src(7 + e, [H, I]), (v: View) => v.select(0, e).T] as [View, (v: View) => View]),
      ),
    ],
  ];
  for (const [what, s] of layouts) {
    it(`${what}: the bands, concatenated, are the slab byte for byte`, async () => {
      const whole = await assemble(s);
      const bytes = whole.byteLength;
      for (const max of [bytes / 2, bytes / 3 + 7, 2 * H * 2, 1]) {
        const bands = bandSlab(s, max);
        expect(bands.length).toBeGreaterThan(1);
        const parts = await Promise.all(bands.map(assemble));
        expect(Buffer.compare(Buffer.concat(parts), whole), `bands of ${max} bytes`).toBe(0);
      }
      expect(bandSlab(s, bytes)).toEqual([s]);
    });
  }
});

describe('transposing conversions on the SIMD kernels, in pieces and bands', () => {
  it('nemo and megatron-grouped outputs are byte-identical with the JS kernels, with and without a tight --max-memory, and round-trip', async () => {
    const t = tempDir();
    try {
      // 17.8 MB expert matrices: sources read in pieces (16 MiB), slabs of 36 MB banded under 230 MB
      const src = join(t.dir, 'src');
      await writeSyntheticMixtral(src, { layers: 1, experts: 2, hidden: 1024, inter: 8704 });
      for (const to of ['nemo', 'megatron-grouped']) {
        const run = (name: string, extra: string[], env?: Record<string, string>) => {
          const r = runCli(['convert', src, '--to', to, '--no-fsync', '-q', '-o', join(t.dir, name), ...extra], { env });
          expect(r.code, r.stderr).toBe(0);
          return readFileSync(join(t.dir, name, 'model.safetensors'));
        };
        const js = run(`${to}-js`, [], { MOEKIT_NO_SIMD: '1' });
        expect(run(`${to}-simd`, []).equals(js)).toBe(true);
        expect(run(`${to}-banded`, ['--max-memory', '230MB'], { MOEKIT_THREADS: '2' }).equals(js)).toBe(true);
        // no room to reserve the arena's 3 GiB of address space: heap buffers and the JS kernels, same bytes
        const capped = runCli(['convert', src, '--to', to, '--no-fsync', '-q', '-o', join(t.dir, `${to}-ulimit`)], { ulimitKb: 2_500_000 });
        expect(capped.code, capped.stderr).toBe(0);
        expect(readFileSync(join(t.dir, `${to}-ulimit`, 'model.safetensors')).equals(js)).toBe(true);
        const back = runCli(['convert', join(t.dir, `${to}-simd`), '--to', 'hf', '--no-fsync', '-q', '-o', join(t.dir, `${to}-back`)]);
        expect(back.code, back.stderr).toBe(0);
        const [a, b] = await Promise.all([openStore(src), openStore(join(t.dir, `${to}-back`))]);
        expect(b.names().sort()).toEqual(a.names().sort());
        for (const n of a.names()) expect((await b.read(n)).equals(await a.read(n)), n).toBe(true);
        await Promise.all([a.close(), b.close()]);
      }
    } finally {
      t.cleanup();
    }
  }, 120_000);
});
