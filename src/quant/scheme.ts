/**
 * Quantized storage schemes, recognised by their tensors (config.json's `quantization_config` only
 * supplies block / group sizes), each weight group decoded to f32 in independent units:
 *   - fp8-block (DeepSeek-V3 / Qwen3 / MiniMax-M2 FP8 releases; transformers
 *     integrations/finegrained_fp8.py): `W` F8_E4M3 (or E5M2) [out, in] + `W_scale_inv` [⌈out/b0⌉,
 *     ⌈in/b1⌉] (F32/BF16, or U8 read as E8M0); w = fp8 · scale_inv[i / b0, j / b1]; partial last
 *     blocks. `*.activation_scale` / `*.input_scale` (static activation scales) are dropped.
 *     Large reads are decoded on worker threads (fp8-pool.ts), the same bytes.
 *   - mxfp4 (GPT-OSS; transformers integrations/mxfp4.py convert_moe_packed_tensors):
 *     `P_blocks` U8 [E, R, G, 16] + `P_scales` U8 [E, R, G] (E8M0) → `P` [E, G·32, R] (transposed
 *     back to HF's [E, in, out]).
 *   - int4-pack (compressed-tensors `pack-quantized`, Kimi-K2): `X.weight_packed` I32 [out, ⌈in/8⌉],
 *     `X.weight_scale` [out, ⌈in/group⌉], `X.weight_shape` [2] → `X.weight` [out, in]; symmetric only.
 *   - nvfp4 (ModelOpt `modelopt_fp4`): `X.weight` U8 [out, in/2] (E2M1 pairs), `X.weight_scale`
 *     F8_E4M3 [out, in/16], `X.weight_scale_2` F32 (global) → w = e2m1 · fp8(scale) · scale_2;
 *     `X.input_scale` dropped.
 * A unit is a row of [out, in] weights, or one expert's [in, out] slab for mxfp4.
 */
import { MoekitError } from '../errors.js';
import { castFloat, toFloat32 } from '../engine/cast.js';
import { dtypeSize, numel, type FloatDtype } from '../store/dtypes.js';
import type { TensorInfo, TensorStore } from '../store/types.js';
import { E4M3, E5M2, E8M0, unpackE2M1, unpackInt4 } from './formats.js';
import { decodeParallel, fp8Threads, isShared, MIN_PARALLEL, withShared } from './fp8-pool.js';

/** A block-FP8 weight `W`'s scale tensor is `W` + this (DeepSeek-V3's release, transformers' finegrained_fp8). */
export const FP8_SCALE_SUFFIX = '_scale_inv';

export type QuantMethod = 'fp8-block' | 'mxfp4' | 'int4-pack' | 'nvfp4';

export interface QGroup {
  method: QuantMethod;
  /** the dequantized tensor's name and shape */
  name: string;
  shape: number[];
  /** the stored tensors it is made of */
  parts: string[];
  /** elements per unit; units = numel / unit */
  unit: number;
  /** units [u0, u1) as f32 */
  decode(u0: number, u1: number): Promise<Float32Array>;
  /**
   * units [u0, u1) straight in `dtype` (the same values as decode + cast, without the f32 pass),
   * where a scheme has it; into `into` (exactly their bytes, aligned for `dtype`) when given
   */
  decodeAs?(u0: number, u1: number, dtype: FloatDtype, into?: Buffer): Promise<Buffer>;
  /** e.g. "blocks 128×128" */
  detail: string;
}

export interface QuantScheme {
  method: QuantMethod;
  groups: Map<string, QGroup>;
  /** stored tensors replaced by a group or dropped */
  hidden: Set<string>;
  /** static activation scales etc.: not part of the dequantized model */
  dropped: string[];
}

const bad = (m: string) => new MoekitError('bad-input', m);
const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;
const ceilDiv = (a: number, b: number) => Math.ceil(a / b);

/** Elements [e0, e1) of a scale tensor as f32 (U8 read as E8M0, F8 as E4M3); NaN scales are refused by name. */
async function scalesOf(store: TensorStore, t: TensorInfo, e0 = 0, e1 = numel(t.shape)): Promise<Float32Array> {
  const size = dtypeSize(t.dtype);
  const raw = await store.read(t, e0 * size, e1 * size);
  let s: Float32Array;
  if (t.dtype === 'U8') s = Float32Array.from(raw, (b) => E8M0[b]!);
  else if (t.dtype === 'F8_E4M3') s = Float32Array.from(raw, (b) => E4M3[b]!);
  else if (t.dtype === 'F32' || t.dtype === 'BF16' || t.dtype === 'F16') s = toFloat32(raw, t.dtype as FloatDtype);
  else throw bad(`scale tensor ${t.name} has dtype ${t.dtype}; expected F32, BF16, F16, F8_E4M3 or U8 (E8M0)`);
  const nan = s.findIndex((v) => Number.isNaN(v));
  if (nan >= 0) throw bad(`scale tensor ${t.name} holds NaN (element ${e0 + nan}); the checkpoint is corrupt`);
  return s;
}

/** What the block-FP8 decode of a weight needs: its tensors, block size and scale grid. */
interface Fp8Weight {
  store: TensorStore;
  w: TensorInfo;
  sc: TensorInfo;
  block: [number, number];
  out: number;
  inn: number;
  grid: readonly [number, number];
  lut: Float32Array;
}

/** Row r of the flattened [B·out, in] weight → its row of scales in the flattened [B·⌈out/b0⌉, ⌈in/b1⌉] grid. */
const scaleRowOf = (f: Fp8Weight, r: number) => Math.floor(r / f.out) * f.grid[0] + Math.floor((r % f.out) / f.block[0]);

/** Per scale, the 256 values code · scale in `dtype` (row-major by scale): the lookup tables of a read. */
function fp8Tables(lut: Float32Array, s: Float32Array, dtype: FloatDtype): Buffer {
  const t32 = new Float32Array(s.length * 256);
  for (let k = 0; k < s.length; k++) {
    const scale = s[k]!;
    for (let b = 0; b < 256; b++) t32[k * 256 + b] = lut[b]! * scale;
  }
  return dtype === 'F32' ? Buffer.from(t32.buffer) : castFloat(new Uint8Array(t32.buffer), 'F32', dtype);
}

/** Rows [r0, r1) decoded on the worker threads (quant/fp8-pool.ts) into dst; false when the read is small, one thread is asked for, or shared memory is short. */
async function decodeInWorkers(f: Fp8Weight, r0: number, r1: number, tab: Buffer, s0: number, dtype: FloatDtype, dst: Buffer): Promise<boolean> {
  const threads = fp8Threads();
  const n = (r1 - r0) * f.inn;
  if (threads < 2 || n < MIN_PARALLEL) return false;
  const es = dtype === 'F32' ? 4 : 2;
  const direct = isShared(dst, 4);
  const done = await withShared([n, tab.byteLength, direct ? 0 : n * es], async ([q, t, o]) => {
    const got = await f.store.read(f.w, r0 * f.inn, r1 * f.inn, q!);
    if (got.buffer !== q!.buffer || got.byteOffset !== q!.byteOffset) got.copy(q!);
    tab.copy(t!);
    const out = direct ? dst : o!;
    const geom = { rows: f.out, b0: f.block[0], b1: f.block[1], g0: f.grid[0], gc: f.grid[1] };
    await decodeParallel({ q: q!, tab: t!, out, es, n, inn: f.inn, ...geom, r0, s0 }, threads);
    if (!direct) out.copy(dst);
    return true;
  });
  return done === true;
}

/** Rows [r0, r1) in `dtype`: per block one 256-entry table of code → fp8 · scale in the output dtype, then one lookup per element. */
async function fp8DecodeAs(f: Fp8Weight, r0: number, r1: number, dtype: FloatDtype, into?: Buffer): Promise<Buffer> {
  const { store, w, sc, block, inn, grid, lut } = f;
  const s0 = scaleRowOf(f, r0);
  const s = await scalesOf(store, sc, s0 * grid[1], (scaleRowOf(f, r1 - 1) + 1) * grid[1]);
  const n = (r1 - r0) * inn;
  const wide = dtype === 'F32';
  const dst = into ?? Buffer.alloc(n * (wide ? 4 : 2));
  const tab = fp8Tables(lut, s, dtype);
  if (await decodeInWorkers(f, r0, r1, tab, s0, dtype, dst)) return dst;
  const q = await store.read(w, r0 * inn, r1 * inn);
  const o32 = wide ? new Float32Array(dst.buffer, dst.byteOffset, n) : undefined;
  const o16 = wide ? undefined : new Uint16Array(dst.buffer, dst.byteOffset, n);
  const t32 = wide ? new Float32Array(tab.buffer, tab.byteOffset, tab.byteLength / 4) : undefined;
  const t16 = wide ? undefined : new Uint16Array(tab.buffer, tab.byteOffset, tab.byteLength / 2);
  for (let r = r0; r < r1; ) {
    // rows [r, e) share a row of scales
    const e = Math.min(r1, Math.floor(r / f.out) * f.out + Math.min(f.out, (Math.floor((r % f.out) / block[0]) + 1) * block[0]));
    const srow = (scaleRowOf(f, r) - s0) * grid[1];
    for (let c = 0; c < grid[1]; c++) {
      const tb = (srow + c) * 256;
      const j1 = Math.min(inn, (c + 1) * block[1]);
      for (let i = r; i < e; i++) {
        const o = (i - r0) * inn;
        if (o32) for (let j = c * block[1]; j < j1; j++) o32[o + j] = t32![tb + q[o + j]!]!;
        else for (let j = c * block[1]; j < j1; j++) o16![o + j] = t16![tb + q[o + j]!]!;
      }
    }
    r = e;
  }
  return dst;
}

function fp8Group(store: TensorStore, w: TensorInfo, sc: TensorInfo, block: [number, number]): QGroup {
  // [out, in], or stacked [..., out, in] (a layout moekit re-laid out: its scales stack the same way)
  if (w.shape.length < 2) throw bad(`${w.name} is ${w.dtype} with shape ${shapeStr(w.shape)}; block FP8 weights are [out, in] (or stacked [..., out, in])`);
  const lead = w.shape.slice(0, -2);
  const [out, inn] = w.shape.slice(-2) as [number, number];
  const grid = [ceilDiv(out, block[0]), ceilDiv(inn, block[1])] as const;
  const want = [...lead, ...grid];
  if (sc.shape.length !== want.length || sc.shape.some((n, i) => n !== want[i]))
    throw bad(
      `${sc.name} has shape ${shapeStr(sc.shape)}, expected ${shapeStr(want)} for ${w.name} ${shapeStr(w.shape)} in blocks of ${block[0]}×${block[1]} (quantization_config.weight_block_size)`,
    );
  const f: Fp8Weight = { store, w, sc, block, out, inn, grid, lut: w.dtype === 'F8_E5M2' ? E5M2 : E4M3 };
  return {
    method: 'fp8-block',
    name: w.name,
    shape: [...w.shape],
    parts: [w.name, sc.name],
    unit: inn,
    detail: `${w.dtype}, blocks ${block[0]}×${block[1]}`,
    async decode(r0, r1) {
      const b = await fp8DecodeAs(f, r0, r1, 'F32');
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    },
    decodeAs: (r0, r1, dtype, into) => fp8DecodeAs(f, r0, r1, dtype, into),
  };
}

function mxfp4Group(store: TensorStore, blocks: TensorInfo, scales: TensorInfo, name: string): QGroup {
  const sh = blocks.shape;
  if (blocks.dtype !== 'U8' || scales.dtype !== 'U8' || sh.length < 3 || sh[sh.length - 1] !== 16)
    throw bad(`${blocks.name} is ${blocks.dtype} ${shapeStr(sh)}; MXFP4 blocks are U8 [..., rows, in/32, 16]`);
  const want = sh.slice(0, -1);
  if (scales.shape.length !== want.length || scales.shape.some((d, i) => d !== want[i]))
    throw bad(`${scales.name} has shape ${shapeStr(scales.shape)}, expected ${shapeStr(want)} (one E8M0 scale per 32 values of ${blocks.name})`);
  const [R, G] = sh.slice(-3, -1) as [number, number];
  const prefix = sh.slice(0, -3);
  const inn = G * 32;
  return {
    method: 'mxfp4',
    name,
    shape: [...prefix, inn, R],
    parts: [blocks.name, scales.name],
    unit: inn * R,
    detail: 'E2M1 + E8M0 per 32',
    async decode(u0, u1) {
      const f = new Float32Array((u1 - u0) * inn * R);
      const row = new Float32Array(inn);
      for (let u = u0; u < u1; u++) {
        const q = await store.read(blocks, u * R * G * 16, (u + 1) * R * G * 16);
        const s = await scalesOf(store, scales, u * R * G, (u + 1) * R * G);
        const o = (u - u0) * inn * R;
        for (let r = 0; r < R; r++) {
          unpackE2M1(q.subarray(r * G * 16, (r + 1) * G * 16), inn, row);
          for (let k = 0; k < inn; k++) f[o + k * R + r] = row[k]! * s[r * G + (k >> 5)]!;
        }
      }
      return f;
    },
  };
}

function nvfp4Group(store: TensorStore, w: TensorInfo, sc: TensorInfo, sc2: TensorInfo): QGroup {
  if (w.shape.length !== 2) throw bad(`${w.name} is U8 ${shapeStr(w.shape)}; NVFP4 weights are [out, in/2]`);
  const [out, half] = w.shape as [number, number];
  const inn = half * 2;
  if (sc.dtype !== 'F8_E4M3' || sc.shape.length !== 2 || sc.shape[0] !== out || sc.shape[1] !== ceilDiv(inn, 16))
    throw bad(`${sc.name} is ${sc.dtype} ${shapeStr(sc.shape)}, expected F8_E4M3 [${out}, ${ceilDiv(inn, 16)}] (one scale per 16 values of ${w.name})`);
  if (numel(sc2.shape) !== 1) throw bad(`${sc2.name} has shape ${shapeStr(sc2.shape)}; the NVFP4 global scale is one value`);
  const G = ceilDiv(inn, 16);
  let global: Promise<number> | undefined; // the one global scale, read once
  return {
    method: 'nvfp4',
    name: w.name,
    shape: [out, inn],
    parts: [w.name, sc.name, sc2.name],
    unit: inn,
    detail: 'E2M1 + E4M3 per 16 + F32 global',
    async decode(r0, r1) {
      const g = await (global ??= scalesOf(store, sc2).then((v) => v[0]!));
      const q = await store.read(w, r0 * half, r1 * half);
      const s = await scalesOf(store, sc, r0 * G, r1 * G);
      const f = new Float32Array((r1 - r0) * inn);
      for (let r = 0; r < r1 - r0; r++) {
        unpackE2M1(q.subarray(r * half, (r + 1) * half), inn, f, r * inn);
        for (let j = 0; j < inn; j++) f[r * inn + j] = f[r * inn + j]! * s[r * G + (j >> 4)]! * g;
      }
      return f;
    },
  };
}

async function int4Group(store: TensorStore, base: string, packed: TensorInfo, sc: TensorInfo, shapeT: TensorInfo): Promise<QGroup> {
  if (store.has(`${base}.weight_zero_point`))
    throw new MoekitError('unsupported', `${base}.weight_zero_point: asymmetric int4 (a zero point) is not supported yet; only symmetric pack-quantized`);
  const raw = await store.read(shapeT);
  const dims = shapeT.dtype === 'I64' ? [...new BigInt64Array(raw.buffer, raw.byteOffset, 2)].map(Number) : [...new Int32Array(raw.buffer, raw.byteOffset, 2)];
  const [out, inn] = dims as [number, number];
  if (packed.dtype !== 'I32' || packed.shape[0] !== out || packed.shape[1] !== ceilDiv(inn, 8))
    throw bad(`${packed.name} is ${packed.dtype} ${shapeStr(packed.shape)}, expected I32 [${out}, ${ceilDiv(inn, 8)}] for weight_shape [${out}, ${inn}]`);
  const G = sc.shape[1] ?? 0;
  const group = G > 0 ? ceilDiv(inn, G) : 0;
  if (sc.shape.length !== 2 || sc.shape[0] !== out || group === 0 || ceilDiv(inn, group) !== G)
    throw bad(`${sc.name} has shape ${shapeStr(sc.shape)}; expected [${out}, in/group] for weight_shape [${out}, ${inn}]`);
  const words = packed.shape[1]!;
  return {
    method: 'int4-pack',
    name: `${base}.weight`,
    shape: [out, inn],
    parts: [packed.name, sc.name, shapeT.name],
    unit: inn,
    detail: `int4 symmetric, group ${group}`,
    async decode(r0, r1) {
      const p = await store.read(packed, r0 * words * 4, r1 * words * 4);
      const w32 = new Int32Array(p.buffer.slice(p.byteOffset, p.byteOffset + p.byteLength));
      const s = await scalesOf(store, sc, r0 * G, r1 * G);
      const f = new Float32Array((r1 - r0) * inn);
      for (let r = 0; r < r1 - r0; r++) {
        unpackInt4(w32.subarray(r * words, (r + 1) * words), inn, f, r * inn);
        for (let j = 0; j < inn; j++) f[r * inn + j] = f[r * inn + j]! * s[r * G + Math.floor(j / group)]!;
      }
      return f;
    },
  };
}

function blockSize(config: Record<string, unknown> | undefined): [number, number] {
  const qc = config?.quantization_config as Record<string, unknown> | undefined;
  const b = qc?.weight_block_size;
  if (b === undefined || b === null) return [128, 128];
  if (!Array.isArray(b) || b.length !== 2 || !b.every((x) => Number.isInteger(x) && x > 0))
    throw bad(`quantization_config.weight_block_size is ${JSON.stringify(b)}; expected two positive integers like [128, 128]`);
  return [b[0], b[1]];
}

/** The checkpoint's quantization scheme, from its tensors; undefined for a plain float checkpoint. */
export async function detectScheme(store: TensorStore, config?: Record<string, unknown>): Promise<QuantScheme | undefined> {
  const groups = new Map<string, QGroup>();
  const dropped: string[] = [];
  const methods = new Set<QuantMethod>();
  const add = (g: QGroup) => {
    groups.set(g.name, g);
    methods.add(g.method);
  };
  for (const t of store.tensors.values()) {
    const n = t.name;
    if (n.endsWith(FP8_SCALE_SUFFIX)) {
      const w = store.tensors.get(n.slice(0, -FP8_SCALE_SUFFIX.length));
      if (!w) throw bad(`${n} has no weight tensor ${n.slice(0, -FP8_SCALE_SUFFIX.length)} beside it`);
      add(fp8Group(store, w, t, blockSize(config)));
    } else if (n.endsWith('_blocks')) {
      const base = n.slice(0, -'_blocks'.length);
      const sc = store.tensors.get(`${base}_scales`);
      if (!sc) throw bad(`${n} has no scale tensor ${base}_scales beside it`);
      add(mxfp4Group(store, t, sc, base));
    } else if (n.endsWith('.weight_packed')) {
      const base = n.slice(0, -'.weight_packed'.length);
      const sc = store.tensors.get(`${base}.weight_scale`);
      const shp = store.tensors.get(`${base}.weight_shape`);
      if (!sc || !shp) throw bad(`${n} lacks ${!sc ? `${base}.weight_scale` : `${base}.weight_shape`} beside it`);
      add(await int4Group(store, base, t, sc, shp));
    } else if (n.endsWith('.weight_scale_2')) {
      const base = n.slice(0, -'.weight_scale_2'.length);
      const w = store.tensors.get(`${base}.weight`);
      const sc = store.tensors.get(`${base}.weight_scale`);
      if (!w || !sc || w.dtype !== 'U8') throw bad(`${n}: NVFP4 needs ${base}.weight (U8) and ${base}.weight_scale beside it`);
      add(nvfp4Group(store, w, sc, t));
    } else if (/\.(input_scale|activation_scale)$/.test(n) && t.nbytes <= 64) dropped.push(n);
  }
  if (groups.size === 0) {
    const f8 = [...store.tensors.values()].find((t) => t.dtype.startsWith('F8_'));
    if (f8) throw bad(`${f8.name} is ${f8.dtype} but has no ${f8.name}_scale_inv beside it (missing scale tensor)`);
    return undefined;
  }
  const hidden = new Set<string>(dropped);
  for (const g of groups.values()) for (const p of g.parts) hidden.add(p);
  for (const t of store.tensors.values())
    if (t.dtype.startsWith('F8_') && !hidden.has(t.name)) throw bad(`${t.name} is ${t.dtype} but has no ${t.name}_scale_inv beside it (missing scale tensor)`);
  if (methods.size > 1)
    throw new MoekitError('unsupported', `the checkpoint mixes quantization schemes (${[...methods].join(', ')}); moekit reads one at a time`);
  return { method: [...methods][0]!, groups, hidden, dropped };
}
