/**
 * A float checkpoint seen as a block-FP8 one (the DeepSeek-V3 release format; transformers
 * integrations/finegrained_fp8.py reads it): each selected 2-D weight `X.weight` [out, in] appears
 * as F8_E4M3 [out, in] plus `X.weight_scale_inv` F32 [⌈out/b⌉, ⌈in/b⌉], where per b×b block
 * scale_inv = amax / 448 (1 for an all-zero block) and q = E4M3(f32(w / scale_inv)) rounded to
 * nearest even, saturating. Reads are computed from the source's block rows on demand.
 * By default the tensors the DeepSeek-V3 release quantizes: attention, expert and shared-expert
 * (and dense MLP) projections; never routers, norms, embeddings or lm_head. config() adds
 * `quantization_config` with `modules_to_not_convert` naming every other 2-D weight's module.
 */
import { toFloat32 } from '../engine/cast.js';
import { MoekitError } from '../errors.js';
import { E4M3_MAX, toE4M3 } from '../quant/formats.js';
import type { FloatDtype } from './dtypes.js';
import { FLOAT_DTYPES } from './dtypes.js';
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

/** Whether a tensor is quantized: a 2-D float weight the selection takes. */
function selected(t: TensorInfo, sel: QuantSelect): boolean {
  if (t.shape.length !== 2 || !FLOAT_DTYPES.includes(t.dtype as FloatDtype)) return false;
  if (sel.exclude?.some((g) => globRegex(g).test(t.name))) return false;
  return sel.include?.length ? sel.include.some((g) => globRegex(g).test(t.name)) : DEFAULT_INCLUDE.test(t.name);
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

  constructor(
    inner: TensorStore,
    readonly block: number,
    sel: QuantSelect = {},
  ) {
    super(inner, 'FP8');
    for (const t of inner.tensors.values()) {
      if (!selected(t, sel)) {
        this.tensors.set(t.name, t);
        if (t.shape.length === 2 && t.name.endsWith('.weight')) this.skipped.push(t.name.slice(0, -'.weight'.length));
        continue;
      }
      const [out, inn] = t.shape as [number, number];
      this.tensors.set(t.name, { name: t.name, dtype: 'F8_E4M3', shape: [out, inn], nbytes: out * inn });
      const sname = `${t.name}_scale_inv`;
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
    const es = w.src.nbytes / (w.out * w.inn);
    const f = toFloat32(await this.inner.read(w.src, r0 * w.inn * es, r1 * w.inn * es), w.src.dtype as FloatDtype);
    const nb = Math.ceil(w.inn / B);
    const s = new Float32Array((b1 - b0) * nb);
    for (let r = r0; r < r1; r++) {
      const o = (r - r0) * w.inn;
      const so = (Math.floor(r / B) - b0) * nb;
      for (let j = 0; j < w.inn; j++) {
        const a = Math.abs(f[o + j]!);
        const k = so + Math.floor(j / B);
        if (!(a <= s[k]!)) s[k] = Number.isNaN(a) ? Number.NaN : a;
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
      const rows = [Math.floor(start / w.inn), Math.ceil(stop / w.inn)];
      const { f, s, r0 } = await this.blockRows(w, Math.floor(rows[0]! / B), Math.ceil(rows[1]! / B));
      const nb = Math.ceil(w.inn / B);
      for (let i = start; i < stop; i++) {
        const r = Math.floor(i / w.inn);
        const j = i - r * w.inn;
        const sc = s[(Math.floor(r / B) - Math.floor(r0 / B)) * nb + Math.floor(j / B)]!;
        out[i - start] = toE4M3(Math.fround(f[i - r0 * w.inn]! / sc));
      }
      return out;
    }
    const tw = this.weights.get(sw!)!;
    const nb = Math.ceil(tw.inn / B);
    const e0 = Math.floor(start / 4);
    const e1 = Math.ceil(stop / 4);
    const { s } = await this.blockRows(tw, Math.floor(e0 / nb), Math.ceil(e1 / nb));
    const base = Math.floor(e0 / nb) * nb;
    const bytes = Buffer.from(s.buffer, s.byteOffset, s.byteLength);
    bytes.copy(out, 0, start - base * 4, stop - base * 4);
    return out;
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
