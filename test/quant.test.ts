import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { bufferSource, writeCheckpoint, type WriteEntry } from '../src/store/safetensors/writer.js';
import { f32BitsToBf16, f32ToBits, toFloat32 } from '../src/engine/cast.js';
import { detectScheme } from '../src/quant/scheme.js';
import { DequantStore } from '../src/store/dequant.js';
import { E4M3, toE4M3 } from '../src/quant/formats.js';
import type { Dtype } from '../src/store/dtypes.js';
import { FIXTURES, runCli, tempDir } from './helpers.js';

const t = tempDir('moekit-quant-');
const out = (n: string) => join(t.dir, n);

interface Raw {
  name: string;
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

/** Every tensor of a checkpoint, in memory (tiny fixtures only). */
async function readAll(dir: string): Promise<Raw[]> {
  const s = await openStore(dir);
  const all = await Promise.all(
    [...s.tensors.values()].map(async (i) => ({ name: i.name, dtype: i.dtype, shape: i.shape, data: new Uint8Array(await s.read(i)) })),
  );
  await s.close();
  return all;
}

/** Write tensors (and a config) as a checkpoint folder. */
async function writeAll(dir: string, tensors: Raw[], config?: Record<string, unknown>): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const entries: WriteEntry[] = tensors.map((x) => ({ name: x.name, dtype: x.dtype, shape: x.shape, source: bufferSource(x.data) }));
  await writeCheckpoint(dir, entries, { fsync: false });
  if (config) writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
}

const cfgOf = (dir: string) => JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
const bf16 = (v: number[]) => new Uint8Array(Uint16Array.from(v, (x) => f32BitsToBf16(f32ToBits(x))).buffer);

describe('element formats', () => {
  it('E4M3 decodes as torch.float8_e4m3fn and encodes round-to-nearest-even, saturating', () => {
    expect([E4M3[0x38], E4M3[0x7e], E4M3[0x01], E4M3[0x08], E4M3[0xb8]]).toEqual([1, 448, 2 ** -9, 2 ** -6, -1]);
    expect(Number.isNaN(E4M3[0x7f]!)).toBe(true);
    for (let b = 0; b < 0x7f; b++) expect(toE4M3(E4M3[b]!)).toBe(b); // every finite code round-trips
    expect(toE4M3(1.0625)).toBe(0x38); // halfway between 1 (even code 0x38) and 1.125: to even
    expect(toE4M3(1.1875)).toBe(0x3a); // halfway between 1.125 (0x39) and 1.25 (0x3a): to even
    expect(toE4M3(1000)).toBe(0x7e);
    expect(toE4M3(-1000)).toBe(0xfe);
  });
});

describe('the E4M3 encoder against a plain oracle', () => {
  // the oracle: the largest code whose value is ≤ |x|, then the nearer neighbour, ties to the even code
  const POS = E4M3.subarray(0, 127);
  const oracle = (x: number): number => {
    if (Number.isNaN(x)) return 0x7f;
    const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
    const a = Math.abs(x);
    if (a >= 448) return sign | 126;
    let lo = 0;
    for (let c = 126; c >= 0; c--)
      if (POS[c]! <= a) {
        lo = c;
        break;
      }
    if (POS[lo] === a || lo === 126) return sign | lo;
    const [d0, d1] = [a - POS[lo]!, POS[lo + 1]! - a];
    return sign | (d0 < d1 ? lo : d1 < d0 ? lo + 1 : lo % 2 === 0 ? lo : lo + 1);
  };
  it('agrees on every midpoint and on 200k random f32 around the E4M3 range', () => {
    for (let c = 0; c < 126; c++)
      for (const sgn of [1, -1]) {
        const m = Math.fround(((POS[c]! + POS[c + 1]!) / 2) * sgn);
        expect(toE4M3(m), `midpoint ${m}`).toBe(oracle(m));
      }
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    let seed = 12345;
    for (let i = 0; i < 200_000; i++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      // exponents 2^-17 .. 2^12: subnormals, normals, saturation
      u[0] = ((seed & 0x807fffff) | ((110 + (seed % 30)) << 23)) >>> 0;
      expect(toE4M3(f[0]!)).toBe(oracle(f[0]!));
    }
  });
});

describe('hand-built int4 (compressed-tensors) and NVFP4 vectors dequantize exactly', () => {
  it('int4 pack-quantized: nibbles LSB first, stored q + 8, group scales, cropped to weight_shape', async () => {
    // row 0: q = -8..7 (words 0x76543210, 0xfedcba98); row 1: q = 7, -8, 0 ... ; in = 14 (cropped from 16)
    const words = new Int32Array([0x76543210, 0xfedcba98 | 0, 0x0000008f, 0x00000000]);
    const dir = out('int4-hand');
    await writeAll(dir, [
      { name: 'x.weight_packed', dtype: 'I32', shape: [2, 2], data: new Uint8Array(words.buffer) },
      { name: 'x.weight_scale', dtype: 'BF16', shape: [2, 2], data: bf16([0.5, 2, 1, 4]) },
      { name: 'x.weight_shape', dtype: 'I64', shape: [2], data: new Uint8Array(new BigInt64Array([2n, 14n]).buffer) },
    ]);
    const s = await openStore(dir);
    const dq = new DequantStore(s, (await detectScheme(s))!, 'F32');
    expect(dq.info('x.weight').shape).toEqual([2, 14]);
    const got = [...toFloat32(await dq.read('x.weight'), 'F32')];
    const row0 = [-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5].map((q, j) => q * (j < 7 ? 0.5 : 2));
    const row1 = [7, 0, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8, -8].map((q, j) => q * (j < 7 ? 1 : 4));
    expect(got).toEqual([...row0, ...row1]);
    await s.close();
  });

  it('NVFP4: E2M1 pairs low nibble first × E4M3 scale per 16 × global scale; input_scale dropped', async () => {
    const w = new Uint8Array(16); // one row of 32 values
    w[0] = 0x21; // 0.5, 1
    w[1] = 0xf9; // -0.5, -6
    w[8] = 0x7c; // (second group) 2·… : low 0xc = -2, high 7 = 6
    const dir = out('nvfp4-hand');
    await writeAll(dir, [
      { name: 'y.weight', dtype: 'U8', shape: [1, 16], data: w },
      { name: 'y.weight_scale', dtype: 'F8_E4M3', shape: [1, 2], data: new Uint8Array([0x38, 0x40]) },
      { name: 'y.weight_scale_2', dtype: 'F32', shape: [], data: new Uint8Array(new Float32Array([0.25]).buffer) },
      { name: 'y.input_scale', dtype: 'F32', shape: [], data: new Uint8Array(new Float32Array([3]).buffer) },
    ]);
    const s = await openStore(dir);
    const dq = new DequantStore(s, (await detectScheme(s))!, 'F32');
    expect(dq.names()).toEqual(['y.weight']);
    const got = toFloat32(await dq.read('y.weight'), 'F32');
    const want = new Array<number>(32).fill(0);
    [want[0], want[1], want[2], want[3]] = [0.5 * 0.25, 1 * 0.25, -0.5 * 0.25, -6 * 0.25];
    [want[16], want[17]] = [-2 * 2 * 0.25, 6 * 2 * 0.25];
    expect([...got].map((v) => v + 0)).toEqual(want);
    await s.close();
  });
});

describe('moekit dequant', () => {
  for (const f of ['deepseek_v3_fp8', 'gpt_oss_mxfp4']) {
    it(`${f}: f32 output verifies against the reference; scales gone; other tensors byte-identical; config plain`, async () => {
      const dst = out(`${f}-f32`);
      const r = runCli(['dequant', join(FIXTURES, f), '--dtype', 'f32', '-o', dst, '--no-fsync', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const v = runCli(['verify', dst, '--reference', join(FIXTURES, f, 'reference.safetensors'), '--cpu']);
      expect(v.code, v.stdout).toBe(0);
      const cfg = cfgOf(dst);
      expect(cfg.quantization_config).toBeUndefined();
      expect(cfg.torch_dtype ?? cfg.dtype).toBe('float32');
      const src = await readAll(join(FIXTURES, f));
      const got = new Map((await readAll(dst)).map((x) => [x.name, x]));
      expect([...got.keys()].some((n) => /_scale_inv$|_blocks$|_scales$/.test(n))).toBe(false);
      let same = 0;
      for (const x of src) {
        if (x.dtype === 'U8' || x.dtype.startsWith('F8') || /_scale_inv$/.test(x.name)) continue;
        expect(Buffer.from(got.get(x.name)!.data).equals(Buffer.from(x.data)), x.name).toBe(true);
        same++;
      }
      expect(same).toBeGreaterThan(10);
    });

    it(`${f}: verify reads the quantized checkpoint itself (against the reference, and against its dequantized copy)`, () => {
      const v = runCli(['verify', join(FIXTURES, f), '--reference', join(FIXTURES, f, 'reference.safetensors'), '--cpu']);
      expect(v.code, v.stdout).toBe(0);
      const dst = out(`${f}-f32`);
      if (!existsSync(dst)) return;
      const w = runCli(['verify', join(FIXTURES, f), dst, '--cpu']);
      expect(w.code, w.stdout).toBe(0);
      expect(w.stdout).toMatch(/tensor\(s\) byte-identical/);
    });
  }

  it('gpt_oss_mxfp4 → bf16 is exact and converts to another layout on the way (--to te)', () => {
    const dst = out('mx-te');
    expect(runCli(['dequant', join(FIXTURES, 'gpt_oss_mxfp4'), '--to', 'te', '-o', dst, '--no-fsync']).code).toBe(0);
    const v = runCli(['verify', dst, '--reference', join(FIXTURES, 'gpt_oss_mxfp4', 'reference.safetensors'), '--cpu']);
    expect(v.code, v.stdout).toBe(0);
  });

  it('refuses a plain checkpoint, a missing scale, a misshapen scale, a block size that does not match, a NaN scale (exit 2, nothing written)', async () => {
    const src = await readAll(join(FIXTURES, 'deepseek_v3_fp8'));
    const cfg = cfgOf(join(FIXTURES, 'deepseek_v3_fp8'));
    const scale = 'model.layers.1.mlp.experts.0.up_proj.weight_scale_inv';
    const cases: [string, Raw[], Record<string, unknown>, RegExp][] = [
      ['missing', src.filter((x) => x.name !== scale), cfg, /up_proj\.weight is F8_E4M3 but has no .*_scale_inv beside it \(missing scale tensor\)/],
      ['shape', src.map((x) => (x.name === scale ? { ...x, shape: [4, 1] } : x)), cfg, /up_proj\.weight_scale_inv has shape \[4, 1\], expected \[2, 2\]/],
      [
        'block',
        src,
        { ...cfg, quantization_config: { ...(cfg.quantization_config as object), weight_block_size: [64, 64] } },
        /weight_scale_inv has shape \[2, 3\], expected \[4, 6\] .* in blocks of 64×64/,
      ],
      [
        'nan',
        src.map((x) => (x.name === scale ? { ...x, data: new Uint8Array(new Float32Array([1, Number.NaN, 1, 1]).buffer) } : x)),
        cfg,
        /up_proj\.weight_scale_inv holds NaN \(element 1\)/,
      ],
    ];
    for (const [name, tensors, c, re] of cases) {
      const dir = out(`bad-${name}`);
      await writeAll(dir, tensors, c);
      const r = runCli(['dequant', dir, '-o', out(`bad-${name}-out`), '--no-fsync']);
      expect(r.code, `${name}: ${r.stderr}`).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(re);
      expect(existsSync(out(`bad-${name}-out`))).toBe(false);
    }
    const plain = runCli(['dequant', join(FIXTURES, 'mixtral'), '-o', out('plain'), '--no-fsync']);
    expect(plain.code).toBe(2);
    expect(plain.stderr).toMatch(/holds no quantized weights/);
  });
});

describe('moekit quant --format fp8-block', () => {
  it('quant → dequant is within E4M3 precision per block; verify of the FP8 model against the source passes at rtol 0.1', async () => {
    const q = out('ds-fp8');
    expect(runCli(['quant', join(FIXTURES, 'deepseek_v3'), '--format', 'fp8-block', '--block', '16', '-o', q, '--no-fsync']).code).toBe(0);
    const cfg = cfgOf(q);
    expect(cfg.quantization_config).toMatchObject({ quant_method: 'fp8', weight_block_size: [16, 16] });
    expect((cfg.quantization_config as { modules_to_not_convert: string[] }).modules_to_not_convert).toContain('model.layers.1.mlp.gate');
    const qs = await openStore(q);
    expect(qs.info('model.layers.1.mlp.experts.0.gate_proj.weight').dtype).toBe('F8_E4M3');
    expect(qs.info('model.layers.1.mlp.gate.weight').dtype).toBe('F32'); // routers stay in float
    expect(qs.info('model.embed_tokens.weight').dtype).toBe('F32');
    await qs.close();
    // per block: |w − dequant(quant(w))| ≤ half an E4M3 ulp of w (or of the block's subnormal step)
    const dq = out('ds-fp8-dq');
    expect(runCli(['dequant', q, '--dtype', 'f32', '-o', dq, '--no-fsync']).code).toBe(0);
    const a = await openStore(join(FIXTURES, 'deepseek_v3'));
    const b = await openStore(dq);
    const name = 'model.layers.1.mlp.experts.3.down_proj.weight';
    const [w, d] = [toFloat32(await a.read(name), 'F32'), toFloat32(await b.read(name), 'F32')];
    const [rows, cols] = a.info(name).shape as [number, number];
    for (let i = 0; i < rows; i++)
      for (let j = 0; j < cols; j++) {
        let amax = 0;
        for (let r = i - (i % 16); r < Math.min(rows, i - (i % 16) + 16); r++)
          for (let c = j - (j % 16); c < Math.min(cols, j - (j % 16) + 16); c++) amax = Math.max(amax, Math.abs(w[r * cols + c]!));
        const err = Math.abs(w[i * cols + j]! - d[i * cols + j]!);
        expect(err).toBeLessThanOrEqual(1.0001 * Math.max(2 ** -4 * Math.abs(w[i * cols + j]!), (2 ** -10 * amax) / 448));
      }
    await a.close();
    await b.close();
    const v = runCli(['verify', q, join(FIXTURES, 'deepseek_v3'), '--cpu']);
    expect(v.code, v.stdout).toBe(0);
    expect(v.stdout).toMatch(/within FP8 precision/);
  });

  it('a wrong scale orientation fails verify (transposed square scale grids) or is refused (non-square)', async () => {
    const q = out('ds-fp8');
    const tensors = await readAll(q);
    const transposed = tensors.map((x) => {
      if (!x.name.endsWith('_scale_inv') || x.shape[0] !== x.shape[1] || x.shape[0] === 1) return x;
      const n = x.shape[0]!;
      const f = new Float32Array(x.data.buffer.slice(x.data.byteOffset, x.data.byteOffset + x.data.byteLength));
      const g = new Float32Array(n * n);
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) g[j * n + i] = f[i * n + j]!;
      return { ...x, data: new Uint8Array(g.buffer) };
    });
    const bad = out('ds-fp8-transposed');
    await writeAll(bad, transposed, cfgOf(q));
    const v = runCli(['verify', bad, join(FIXTURES, 'deepseek_v3'), '--cpu']);
    expect(v.code, v.stdout).toBe(1);
    const ns = tensors.find((x) => x.name.endsWith('_scale_inv') && x.shape[0] !== x.shape[1])!;
    const bad2 = out('ds-fp8-ns');
    await writeAll(
      bad2,
      tensors.map((x) => (x === ns ? { ...x, shape: [x.shape[1]!, x.shape[0]!] } : x)),
      cfgOf(q),
    );
    const w = runCli(['verify', bad2, join(FIXTURES, 'deepseek_v3'), '--cpu']);
    expect(w.code).toBe(2);
    expect(w.stderr).toMatch(/_scale_inv has shape .* expected/);
  });

  it('a weight is read from the source once: its scale tensor reuses the scales its read computed', async () => {
    const { Fp8QuantStore } = await import('../src/store/quantize.js');
    const inner = await openStore(join(FIXTURES, 'deepseek_v3'));
    const reads = new Map<string, number>();
    const read = inner.read.bind(inner);
    inner.read = (t, ...rest) => {
      const n = typeof t === 'string' ? t : t.name;
      reads.set(n, (reads.get(n) ?? 0) + 1);
      return read(t, ...rest);
    };
    const q = new Fp8QuantStore(inner, 16);
    const name = 'model.layers.1.mlp.experts.0.down_proj.weight';
    const w = await q.read(name);
    const s = await q.read(`${name}_scale_inv`);
    expect(reads.get(name)).toBe(1);
    // and the scales equal a fresh computation from the weight alone
    const fresh = new Fp8QuantStore(await openStore(join(FIXTURES, 'deepseek_v3')), 16);
    expect(Buffer.compare(await fresh.read(`${name}_scale_inv`), s)).toBe(0);
    expect(Buffer.compare(await fresh.read(name), w)).toBe(0);
    await q.close();
    await fresh.close();
  });

  it('refuses an already quantized source', () => {
    const r = runCli(['quant', join(FIXTURES, 'deepseek_v3_fp8'), '--format', 'fp8-block', '-o', out('re-q'), '--no-fsync']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/already quantized; dequantize it first/);
  });
});

describe('block-FP8 decode and encode on worker threads', () => {
  /** Run `f` with MOEKIT_QUANT_THREADS set to `n`, restoring it after. */
  async function withThreads<R>(n: number, f: () => Promise<R>): Promise<R> {
    const old = process.env.MOEKIT_QUANT_THREADS;
    process.env.MOEKIT_QUANT_THREADS = String(n);
    try {
      return await f();
    } finally {
      if (old === undefined) delete process.env.MOEKIT_QUANT_THREADS;
      else process.env.MOEKIT_QUANT_THREADS = old;
    }
  }
  let seed = 987654321;
  const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
  /** f32 values over many binades, with zeros, -0, huge values, ±inf and an all-zero block. */
  const values = (n: number, cols: number) =>
    Float32Array.from({ length: n }, (_, i) => {
      if (i % cols < 128 && i < 128 * cols) return 0;
      if (i === 300 * cols + 500 || i === 300 * cols + 501) return i % 2 ? Number.NEGATIVE_INFINITY : Number.POSITIVE_INFINITY; // a block with an infinite amax
      const r = rand();
      if (r < 0.01) return -0;
      if (r < 0.02) return (rand() - 0.5) * 1e6;
      return (rand() - 0.5) * 2 ** Math.floor(rand() * 40 - 30);
    });
  // every read covers at least MIN_PARALLEL elements, so the worker path is the one taken with 3 threads
  const ranges = (nbytes: number, unit: number) => [
    [0, nbytes],
    [unit * 5 + 7, nbytes - unit * 3 - 11],
    [unit * 130, unit * 700],
  ];
  /** The bytes of every range, read plainly, into a shared buffer, and into a shared buffer at an odd offset. */
  async function readsOf(store: { read(t: string, s?: number, e?: number, into?: Buffer): Promise<Buffer> }, name: string, nbytes: number, unit: number) {
    const got: Buffer[] = [];
    for (const [a, b] of ranges(nbytes, unit)) {
      got.push(Buffer.from(await store.read(name, a, b)));
      const sab = Buffer.from(new SharedArrayBuffer(b! - a! + 8));
      got.push(Buffer.from(await store.read(name, a, b, sab)));
      got.push(Buffer.from(await store.read(name, a, b, sab.subarray(2))));
    }
    return got;
  }

  it('quant: the same codes and scales with 1 and 3 threads (BF16, F16, F32 sources; partial blocks; odd ranges and buffers)', async () => {
    const { Fp8QuantStore } = await import('../src/store/quantize.js');
    const { MIN_PARALLEL } = await import('../src/quant/fp8-pool.js');
    const dir = out('par-q');
    const [rows, cols] = [1000, 1030];
    expect(rows * cols).toBeGreaterThan(2 * MIN_PARALLEL);
    const f = values(rows * cols, cols);
    const { castFloat } = await import('../src/engine/cast.js');
    const f32b = new Uint8Array(f.buffer);
    const tensors: Raw[] = (['BF16', 'F16', 'F32'] as const).map((dt, k) => ({
      name: `model.layers.0.mlp.experts.${k}.up_proj.weight`,
      dtype: dt,
      shape: [rows, cols],
      data: new Uint8Array(castFloat(f32b, 'F32', dt)),
    }));
    await writeAll(dir, tensors);
    for (const block of [128, 48]) {
      const runs: Buffer[][] = [];
      for (const n of [1, 3])
        runs.push(
          await withThreads(n, async () => {
            const q = new Fp8QuantStore(await openStore(dir), block);
            const got: Buffer[] = [];
            for (const x of tensors) {
              got.push(...(await readsOf(q, x.name, rows * cols, cols)));
              got.push(Buffer.from(await q.read(`${x.name}_scale_inv`)));
            }
            await q.close();
            return got;
          }),
        );
      expect(runs[1]!.length).toBe(runs[0]!.length);
      for (const [i, b] of runs[0]!.entries()) expect(b.equals(runs[1]![i]!), `block ${block}, read ${i}`).toBe(true);
    }
  });

  it('dequant: the same bf16 / f16 / f32 bytes with 1 and 3 threads (every code incl. NaN, stacked weights, partial blocks, odd ranges)', async () => {
    const dir = out('par-dq');
    const codes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
    const scales = (n: number) => new Uint8Array(Float32Array.from({ length: n }, () => rand() * 2 ** Math.floor(rand() * 20 - 10)).buffer);
    const tensors: Raw[] = [
      { name: 'a.weight', dtype: 'F8_E4M3', shape: [1000, 1030], data: codes(1000 * 1030) },
      { name: 'a.weight_scale_inv', dtype: 'F32', shape: [8, 9], data: scales(72) },
      { name: 'b.weight', dtype: 'F8_E4M3', shape: [3, 300, 520], data: codes(3 * 300 * 520) },
      { name: 'b.weight_scale_inv', dtype: 'F32', shape: [3, 3, 5], data: scales(45) },
    ];
    await writeAll(dir, tensors);
    for (const dtype of ['BF16', 'F16', 'F32'] as const) {
      const runs: Buffer[][] = [];
      for (const n of [1, 3])
        runs.push(
          await withThreads(n, async () => {
            const s = await openStore(dir);
            const dq = new DequantStore(s, (await detectScheme(s))!, dtype);
            const got: Buffer[] = [];
            for (const name of ['a.weight', 'b.weight']) {
              const info = dq.info(name);
              got.push(...(await readsOf(dq, name, info.nbytes, info.shape.at(-1)! * (dtype === 'F32' ? 4 : 2))));
            }
            await s.close();
            return got;
          }),
        );
      for (const [i, b] of runs[0]!.entries()) expect(b.equals(runs[1]![i]!), `${dtype} read ${i}`).toBe(true);
    }
  });
});

describe('convert keeps block-FP8 experts quantized: their scale blocks move with them', () => {
  const byName = (ts: Raw[]) => new Map(ts.map((x) => [x.name, x]));
  const same = (a: Raw[], b: Raw[]) => {
    const m = byName(b);
    return (
      a.length === b.length &&
      a.every((x) => {
        const y = m.get(x.name);
        return y && y.dtype === x.dtype && `${y.shape}` === `${x.shape}` && Buffer.from(y.data).equals(Buffer.from(x.data));
      })
    );
  };
  // DeepSeek-V3-shaped, I 40 and H 48 in 8×8 blocks: every cut along I falls on a block boundary
  const fp8 = () => {
    const q = out('ds-fp8-b8');
    if (!existsSync(q)) expect(runCli(['quant', join(FIXTURES, 'deepseek_v3'), '--format', 'fp8-block', '--block', '8', '-o', q, '--no-fsync']).code).toBe(0);
    return q;
  };

  for (const layout of ['te', 'nemo', 'megatron', 'hf-fused']) {
    it(`HF FP8 → ${layout} → HF is byte-identical; ${layout} verifies against the FP8 model exactly and against the f32 source within FP8 precision`, async () => {
      const q = fp8();
      const mid = out(`fp8-${layout}`);
      const c = runCli(['convert', q, '--to', layout, '-o', mid, '--no-fsync']);
      expect(c.code, c.stderr).toBe(0);
      const ts = await readAll(mid);
      const m = byName(ts);
      const weights = ts.filter((x) => x.dtype === 'F8_E4M3');
      expect(weights.length).toBeGreaterThan(0);
      for (const w of weights) {
        // every FP8 weight has its grid of 8×8 block scales beside it, stacked as the weight is
        const sc = m.get(`${w.name}_scale_inv`);
        expect(sc, w.name).toBeDefined();
        expect(sc!.shape).toEqual([...w.shape.slice(0, -2), ...w.shape.slice(-2).map((n) => Math.ceil(n / 8))]);
      }
      // no scale is left under the source's per-expert names (they moved with their weights)
      expect(ts.some((x) => /layers\.1\.mlp\.experts\.0\.(gate|up|down)_proj\.weight_scale_inv$/.test(x.name))).toBe(false);
      expect(cfgOf(mid).quantization_config).toMatchObject({ quant_method: 'fp8', weight_block_size: [8, 8] });
      const back = out(`fp8-${layout}-hf`);
      expect(runCli(['convert', mid, '--to', 'hf', '-o', back, '--no-fsync']).code).toBe(0);
      expect(same(await readAll(back), await readAll(q))).toBe(true);
      const v = runCli(['verify', mid, q, '--cpu', '--rtol', '1e-6']);
      expect(v.code, v.stdout).toBe(0);
      expect(runCli(['verify', mid, join(FIXTURES, 'deepseek_v3'), '--cpu']).code).toBe(0);
    });
  }

  it('a scale grid moved with the wrong experts fails verify: the scales are what makes the weights', async () => {
    const q = fp8();
    const nemo = out('fp8-nemo');
    if (!existsSync(nemo)) expect(runCli(['convert', q, '--to', 'nemo', '-o', nemo, '--no-fsync']).code).toBe(0);
    const name = 'model.layers.1.mlp.experts.gate_and_up_projs_scale_inv';
    const ts = await readAll(nemo);
    const bad = ts.map((x) => {
      if (x.name !== name) return x;
      // experts 0 and 1 swap their scale grids; the FP8 bytes stay where they are
      const per = x.data.length / x.shape[0]!;
      const d = new Uint8Array(x.data);
      d.set(x.data.subarray(per, 2 * per), 0);
      d.set(x.data.subarray(0, per), per);
      return { ...x, data: d };
    });
    expect(bad.find((x) => x.name === name)!.data).not.toEqual(ts.find((x) => x.name === name)!.data);
    const dir = out('fp8-nemo-swapped');
    await writeAll(dir, bad, cfgOf(nemo));
    writeFileSync(join(dir, 'moekit.json'), readFileSync(join(nemo, 'moekit.json')));
    const v = runCli(['verify', dir, q, '--cpu', '--seed', '3', '--tokens', '64']);
    expect(v.code, v.stdout).toBe(1);
  });

  it('shard --ep 2 --etp 5 --to te keeps FP8 (scale blocks sliced with their rows); merge and reshard give the FP8 model back byte for byte; verify reads the ranks', async () => {
    const q = fp8();
    const sh = out('fp8-ep2-etp5');
    const s = runCli(['shard', q, '--ep', '2', '--etp', '5', '--to', 'te', '-o', sh, '--no-fsync']);
    expect(s.code, s.stderr).toBe(0);
    const r0 = byName(await readAll(join(sh, 'ep0-etp1')));
    // ETP rank 1 of 5: rows 8..16 of each expert's I = 40, one 8-row block of scales
    expect(r0.get('decoder.layers.1.mlp.experts.linear_fc1.weight0')).toMatchObject({ dtype: 'F8_E4M3', shape: [16, 48] });
    expect(r0.get('decoder.layers.1.mlp.experts.linear_fc1.weight0_scale_inv')).toMatchObject({ dtype: 'F32', shape: [2, 6] });
    expect(r0.get('decoder.layers.1.mlp.experts.linear_fc2.weight0_scale_inv')).toMatchObject({ shape: [6, 1] });
    const m = out('fp8-ep2-etp5-merged');
    expect(runCli(['merge', sh, '-o', m, '--no-fsync']).code).toBe(0);
    expect(same(await readAll(m), await readAll(q))).toBe(true);
    const rs = out('fp8-reshard-nemo');
    expect(runCli(['reshard', sh, '--ep', '4', '--to', 'nemo', '-o', rs, '--no-fsync']).code).toBe(0);
    const m2 = out('fp8-reshard-merged');
    expect(runCli(['merge', rs, '-o', m2, '--no-fsync']).code).toBe(0);
    expect(same(await readAll(m2), await readAll(q))).toBe(true);
    const v = runCli(['verify', sh, q, '--cpu', '--rtol', '1e-6']);
    expect(v.code, v.stdout).toBe(0);
    // the real DeepSeek-V3-shaped FP8 fixture (I 192 in 128-blocks): EP alone cuts no block
    const ds = out('ds-fp8-ep2');
    expect(runCli(['shard', join(FIXTURES, 'deepseek_v3_fp8'), '--ep', '2', '-o', ds, '--no-fsync']).code).toBe(0);
    const w = runCli(['verify', ds, '--reference', join(FIXTURES, 'deepseek_v3_fp8', 'reference.safetensors'), '--cpu']);
    expect(w.code, w.stdout).toBe(0);
    const dm = out('ds-fp8-ep2-merged');
    expect(runCli(['merge', ds, '-o', dm, '--no-fsync']).code).toBe(0);
    expect(same(await readAll(dm), await readAll(join(FIXTURES, 'deepseek_v3_fp8')))).toBe(true);
    const e = runCli(['shard', join(FIXTURES, 'deepseek_v3_fp8'), '--ep', '2', '--etp', '2', '-o', out('ds-fp8-etp2')]);
    expect(e.code).toBe(2);
    expect(e.stderr).toMatch(/\(I \/ etp\) % 128 = \(192 \/ 2\) % 128 ≠ 0, so a slice would cut a 128×128 scale block; use --etp 1$/m);
  });

  it('refuses, in one line with the dequant command, what the scales cannot follow exactly', () => {
    const q = fp8();
    const cases: [string[], RegExp][] = [
      [['--to', 'nemo', '--gate-up', 'interleaved'], /gate\/up interleaved row by row would split every 8-row scale block.*moekit dequant .* --to nemo/],
      [
        ['--to', 'megatron-grouped'],
        /layout 'megatron-grouped' declares experts\.weight1 over its experts' memory reinterpreted.*moekit dequant .* --to megatron-grouped/,
      ],
      [['--to', 'te', '--dtype', 'bf16'], /--dtype casts float weights; .* is quantized \(FP8.*\): moekit dequant .* --dtype bf16 --to te/],
    ];
    for (const [args, re] of cases) {
      const dst = out(`fp8-refused-${args.join('')}`);
      const r = runCli(['convert', q, ...args, '-o', dst]);
      expect(r.code, r.stderr).not.toBe(0);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(existsSync(dst)).toBe(false);
    }
  });
});

describe('moekit plan: TP × EP sizes that can serve a checkpoint', () => {
  const fp8 = { quant_method: 'fp8', weight_block_size: [128, 128] };
  it('Qwen3-235B-A22B-FP8-shaped: TP4 works, TP8 needs EP2 (SGLang: (1536 / 8) % 128 != 0)', async () => {
    const { planShape, planTable } = await import('../src/ops/plan.js');
    const s = planShape({ num_experts: 128, moe_intermediate_size: 1536, num_attention_heads: 64, num_key_value_heads: 4, quantization_config: fp8 });
    const row = (tp: number, ep: number) => planTable(s, { tp, ep })[0]!;
    expect(row(4, 1).ok).toBe(true);
    expect(row(8, 1).errors).toEqual(['(moe_intermediate_size=1536 / moe_tp_size=8) % weight_block_size_n=128 == 0 fails']);
    expect(row(8, 2).ok).toBe(true);
    // the same shape in bf16 has no block rule
    expect(planTable(planShape({ num_experts: 128, moe_intermediate_size: 1536, num_attention_heads: 64, num_key_value_heads: 4 }), { tp: 8 })[0]!.ok).toBe(
      true,
    );
  });

  it('Qwen3-Coder-480B-FP8-shaped: TP8 needs EP2 ((2560 / 8) % 128 = 64); DeepSeek-V3-shaped: TP8 passes the block rules (2048 / 8 = 256)', async () => {
    const { planShape, planTable } = await import('../src/ops/plan.js');
    const coder = planShape({ num_experts: 160, moe_intermediate_size: 2560, num_attention_heads: 96, num_key_value_heads: 8, quantization_config: fp8 });
    expect(planTable(coder, { tp: 8, ep: 1 })[0]!.ok).toBe(false);
    expect(planTable(coder, { tp: 8, ep: 2 })[0]!.ok).toBe(true);
    const ds = planShape({
      n_routed_experts: 256,
      moe_intermediate_size: 2048,
      n_shared_experts: 1,
      intermediate_size: 18432,
      first_k_dense_replace: 3,
      num_attention_heads: 128,
      num_key_value_heads: 128,
      quantization_config: fp8,
    });
    expect(planTable(ds, { tp: 8, ep: 1 })[0]!.ok).toBe(true);
    expect(planTable(ds, { tp: 32, ep: 1 })[0]!.errors[0]).toMatch(/\(moe_intermediate_size=2048 \/ moe_tp_size=32\) % weight_block_size_n=128 == 0 fails/);
    expect(planTable(ds, { tp: 8, ep: 3 })[0]!.errors).toEqual(['ep_size=3 must divide tp_size=8']);
    expect(planTable(ds, { tp: 4, ep: 4 })[0]!.ok).toBe(true);
  });

  it('the CLI prints the table and exits 1 for a combination that does not fit', () => {
    const all = runCli(['plan', join(FIXTURES, 'deepseek_v3_fp8')]);
    expect(all.code).toBe(0);
    expect(all.stdout).toMatch(/valid: TP1 × EP1\n/);
    const two = runCli(['plan', join(FIXTURES, 'deepseek_v3_fp8'), '--tp', '2', '--json']);
    expect(two.code).toBe(1);
    expect(JSON.parse(two.stdout).rows[0].errors[0]).toBe('(moe_intermediate_size=192 / moe_tp_size=2) % weight_block_size_n=128 == 0 fails');
  });
});
