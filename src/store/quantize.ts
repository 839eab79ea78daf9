/**
 * A float checkpoint seen as a block-FP8 one (the DeepSeek-V3 release format; transformers
 * integrations/finegrained_fp8.py reads it): each selected 2-D weight `X.weight` [out, in] appears
 * as F8_E4M3 [out, in] plus `X.weight_scale_inv` F32 [⌈out/b⌉, ⌈in/b⌉], where per b×b block
 * scale_inv = amax / 448 (1 for an all-zero block) and q = E4M3(f32(w / scale_inv)) rounded to
 * nearest even, saturating. Reads are computed from the source's block rows on demand, large ones
 * on worker threads (quant/fp8-pool.ts: the same bytes, every core).
 * By default the tensors the DeepSeek-V3 release quantizes: attention, expert and shared-expert
 * (and dense MLP) projections; never routers, norms, embeddings or lm_head. config() adds
 * `quantization_config` with `modules_to_not_convert` naming every other 2-D weight's module.
 */
import { toFloat32 } from '../engine/cast.js';
import { MoekitError } from '../errors.js';
import { E4M3_MAX, toE4M3 } from '../quant/formats.js';
import { FP8_SCALE_SUFFIX } from '../quant/scheme.js';
import { encodeParallel, fp8Threads, isShared, MIN_PARALLEL, withShared } from '../quant/fp8-pool.js';
import type { FloatDtype } from './dtypes.js';
import { dtypeSize, FLOAT_DTYPES } from './dtypes.js';
import { DerivedStore } from './derived.js';
import type { TensorInfo, TensorStore } from './types.js';

/** Projections the DeepSeek-V3 FP8 release stores in FP8 (and their names in other families). */
const DEFAULT_INCLUDE =
  /\.(q_proj|k_proj|v_proj|o_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj|w1|w2|w3|c_fc|c_proj|fc1|fc2|dense_h_to_4h|dense_4h_to_h)\.weight$/;

/** A shell-style glob (`*` any run of characters, `?` one) as an anchored regex. */
function globRegex(glob: string): RegExp {
  const esc = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${esc}$`);
}

export interface QuantSelect {
  include?: string[];
  exclude?: string[];
}

/** Whether a tensor is quantized: a 2-D float weight the selection takes (globs compiled once). */
function selector(sel: QuantSelect): (t: TensorInfo) => boolean {
  const include = sel.include?.length ? sel.include.map(globRegex) : [DEFAULT_INCLUDE];
  const exclude = (sel.exclude ?? []).map(globRegex);
  return (t) =>
    t.shape.length === 2 && FLOAT_DTYPES.includes(t.dtype as FloatDtype) && !exclude.some((r) => r.test(t.name)) && include.some((r) => r.test(t.name));
}

interface Target {
  src: TensorInfo;
  out: number;
  inn: number;
}

export class Fp8QuantStore extends DerivedStore {
  /** weight name → source; scale name → its weight's name */
  private readonly weights = new Map<string, Target>();
  private readonly scales = new Map<string, string>();
  private readonly skipped: string[] = [];
  /** scale_inv of the block rows a weight read computed, kept until that weight's scale tensor is read */
  private readonly scaleRows = new Map<string, { s: Float32Array; have: Uint8Array }>();

  constructor(
    inner: TensorStore,
    readonly block: number,
    sel: QuantSelect = {},
  ) {
    super(inner, 'FP8');
    const selected = selector(sel);
    for (const t of inner.tensors.values()) {
      if (!selected(t)) {
        this.tensors.set(t.name, t);
        if (t.shape.length === 2 && t.name.endsWith('.weight')) this.skipped.push(t.name.slice(0, -'.weight'.length));
        continue;
      }
      const [out, inn] = t.shape as [number, number];
      this.tensors.set(t.name, { name: t.name, dtype: 'F8_E4M3', shape: [out, inn], nbytes: out * inn });
      const sname = t.name + FP8_SCALE_SUFFIX;
      const sshape = [Math.ceil(out / block), Math.ceil(inn / block)];
      this.tensors.set(sname, { name: sname, dtype: 'F32', shape: sshape, nbytes: sshape[0]! * sshape[1]! * 4 });
      this.weights.set(t.name, { src: t, out, inn });
      this.scales.set(sname, t.name);
    }
    if (this.weights.size === 0)
      throw new MoekitError('bad-input', `${inner.dir}: no tensor matches the quantization selection (2-D float weights; see --include)`);
  }

  /** weights quantized */
  get quantized(): number {
    return this.weights.size;
  }

  /** Block rows [b0, b1) of a weight: its f32 values and the scale_inv of each block. */
  private async blockRows(w: Target, b0: number, b1: number): Promise<{ f: Float32Array; s: Float32Array; r0: number }> {
    const B = this.block;
    const r0 = b0 * B;
    const r1 = Math.min(w.out, b1 * B);
    const es = dtypeSize(w.src.dtype);
    const f = toFloat32(await this.inner.read(w.src, r0 * w.inn * es, r1 * w.inn * es), w.src.dtype as FloatDtype);
    const nb = Math.ceil(w.inn / B);
    const s = new Float32Array((b1 - b0) * nb);
    for (let r = r0; r < r1; r++) {
      const o = (r - r0) * w.inn;
      const so = (Math.floor(r / B) - b0) * nb;
      for (let c = 0; c < nb; c++) {
        let m = s[so + c]!;
        const end = o + Math.min(w.inn, (c + 1) * B);
        for (let i = o + c * B; i < end; i++) {
          const a = Math.abs(f[i]!);
          if (!(a <= m)) m = Number.isNaN(a) || Number.isNaN(m) ? Number.NaN : a;
        }
        s[so + c] = m;
      }
    }
    for (let k = 0; k < s.length; k++) {
      if (Number.isNaN(s[k]!)) throw new MoekitError('bad-input', `${w.src.name} holds NaN; it cannot be quantized`);
      s[k] = s[k] === 0 ? 1 : Math.fround(s[k]! / E4M3_MAX);
    }
    return { f, s, r0 };
  }

  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const info = typeof t === 'string' ? this.info(t) : t;
    const stop = end ?? info.nbytes;
    const w = this.weights.get(info.name);
    const sw = this.scales.get(info.name);
    if (!w && !sw) return this.inner.read(info, start, end, into);
    const out = into ? into.subarray(0, stop - start) : Buffer.alloc(stop - start);
    const B = this.block;
    if (w) {
      const b0 = Math.floor(Math.floor(start / w.inn) / B);
      const b1 = Math.ceil(Math.ceil(stop / w.inn) / B);
      const kept = await this.readParallel(w, b0, b1, start, out);
      if (kept) {
        this.keepScales(w, b0, kept);
        return out;
      }
      const { f, s, r0 } = await this.blockRows(w, b0, b1);
      this.keepScales(w, b0, s);
      const nb = Math.ceil(w.inn / B);
      const inn = w.inn;
      // row by row, block by block: q = E4M3(f32(w / scale_inv)) (toE4M3 rounds its argument to f32 first)
      for (let r = Math.floor(start / inn); r * inn < stop; r++) {
        const so = (Math.floor(r / B) - b0) * nb;
        const j0 = Math.max(0, start - r * inn);
        const j1 = Math.min(inn, stop - r * inn);
        const fo = (r - r0) * inn;
        const oo = r * inn - start;
        for (let c = Math.floor(j0 / B); c * B < j1; c++) {
          const sc = s[so + c]!;
          const jb = Math.min(j1, (c + 1) * B);
          for (let j = Math.max(j0, c * B); j < jb; j++) out[oo + j] = toE4M3(f[fo + j]! / sc);
        }
      }
      return out;
    }
    const tw = this.weights.get(sw!)!;
    const nb = Math.ceil(tw.inn / B);
    const b0 = Math.floor(Math.floor(start / 4) / nb);
    const b1 = Math.ceil(Math.ceil(stop / 4) / nb);
    const kept = this.scaleRows.get(tw.src.name);
    const s = kept?.have.subarray(b0, b1).every((h) => h === 1) ? kept.s.subarray(b0 * nb, b1 * nb) : (await this.blockRows(tw, b0, b1)).s;
    if (stop === info.nbytes) this.scaleRows.delete(tw.src.name);
    Buffer.from(s.buffer, s.byteOffset, s.byteLength).copy(out, 0, start - b0 * nb * 4, stop - b0 * nb * 4);
    return out;
  }

  /**
   * Codes [start, start + out.length) of a weight, from its block rows [b0, b1), on the worker threads
   * (quant/fp8-pool.ts, the same bytes as the loop in `read`): the scale_inv of those block rows, or
   * undefined when the read is small, one thread is asked for, or shared memory is short (`read`
   * then computes them itself).
   */
  private async readParallel(w: Target, b0: number, b1: number, start: number, out: Buffer): Promise<Float32Array | undefined> {
    const threads = fp8Threads();
    const r0 = b0 * this.block;
    const rows = Math.min(w.out, b1 * this.block) - r0;
    if (threads < 2 || rows * w.inn < MIN_PARALLEL) return undefined;
    const dtype = w.src.dtype as 'BF16' | 'F16' | 'F32';
    const es = dtypeSize(dtype);
    const nb = Math.ceil(w.inn / this.block);
    const direct = isShared(out, 1);
    const sizes = [rows * w.inn * es, (b1 - b0) * nb * 4, direct ? 0 : out.byteLength];
    return withShared(sizes, async ([src, s, qs]) => {
      const got = await this.inner.read(w.src, r0 * w.inn * es, (r0 + rows) * w.inn * es, src!);
      if (got.buffer !== src!.buffer || got.byteOffset !== src!.byteOffset) got.copy(src!);
      const q = direct ? out : qs!;
      const nan = await encodeParallel({ src: src!, dtype, rows, inn: w.inn, B: this.block, s: s!, q, q0: start - r0 * w.inn }, threads);
      if (nan) throw new MoekitError('bad-input', `${w.src.name} holds NaN; it cannot be quantized`);
      if (!direct) q.copy(out);
      return new Float32Array(s!.buffer, s!.byteOffset, s!.byteLength / 4).slice();
    });
  }

  /** Keep the scales a weight read computed for block rows from b0, so its scale tensor need not read the weight again. */
  private keepScales(w: Target, b0: number, s: Float32Array): void {
    const rows = Math.ceil(w.out / this.block);
    let k = this.scaleRows.get(w.src.name);
    if (!k) this.scaleRows.set(w.src.name, (k = { s: new Float32Array(rows * Math.ceil(w.inn / this.block)), have: new Uint8Array(rows) }));
    k.s.set(s, b0 * Math.ceil(w.inn / this.block));
    k.have.fill(1, b0, b0 + s.length / Math.ceil(w.inn / this.block));
  }

  override async config(): Promise<Record<string, unknown> | undefined> {
    const c = await this.inner.config();
    if (!c) return c;
    return {
      ...c,
      quantization_config: {
        quant_method: 'fp8',
        fmt: 'e4m3',
        activation_scheme: 'dynamic',
        weight_block_size: [this.block, this.block],
        modules_to_not_convert: this.skipped,
      },
    };
  }
}
