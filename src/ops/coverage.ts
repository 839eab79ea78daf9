/**
 * verify's account of every tensor that no forward checks: the tensors a conversion does not
 * change (attention, norms, embeddings, lm_head) must be byte-identical on both sides (sha256 in
 * worker threads); a tensor on one side only is a failure; every float tensor of each side is
 * scanned for NaN / Inf; a sharded side has every rank's sha256 checked against its manifest.
 */
import { MoekitError } from '../errors.js';
import type { TensorInfo, TensorStore } from '../store/types.js';
import { HashPool } from '../engine/hash-pool.js';
import { castFloat } from '../engine/cast.js';
import type { FloatDtype } from '../store/dtypes.js';

export interface CoverageSide {
  /** tensors no forward reads, compared byte for byte with the other side by name */
  others: { store: TensorStore; info: TensorInfo }[];
  /** every tensor of the side, scanned for NaN / Inf */
  all: { store: TensorStore; info: TensorInfo }[];
  /** a sharded side: verifies every rank's checksums (throws a MoekitError 'checksum') */
  checksums?: () => Promise<void>;
}

export interface Coverage {
  /** tensors outside the MLP blocks found byte-identical on both sides */
  identical: number;
  /** the same name, different bytes (or dtype / shape) */
  differ: { name: string; a: string; b: string }[];
  /** present on one side only */
  onlyIn: { side: 'a' | 'b'; name: string }[];
  /** float tensors holding NaN or ±Inf */
  nonFinite: { side: 'a' | 'b'; name: string; count: number }[];
  /** tensors outside the blocks that had no other side to be compared with (reference mode) */
  notCompared: number;
  /** a sharded side's checksum failure, or null */
  checksums: string | null;
}

/** NaN / Inf in a float tensor, counted chunk by chunk (bit patterns: all-ones exponent). */
async function nonFiniteCount(store: TensorStore, info: TensorInfo): Promise<number> {
  const kind = info.dtype === 'F32' ? 4 : info.dtype === 'BF16' ? 'bf16' : info.dtype === 'F16' ? 'f16' : undefined;
  if (!kind) return 0;
  let n = 0;
  for await (const c of store.chunks(info)) {
    const d = c.data;
    if (kind === 4) {
      const u = new Uint32Array(d.buffer, d.byteOffset, d.byteLength / 4);
      for (let i = 0; i < u.length; i++) if ((u[i]! & 0x7f800000) === 0x7f800000) n++;
    } else {
      const u = new Uint16Array(d.buffer, d.byteOffset, d.byteLength / 2);
      const m = kind === 'bf16' ? 0x7f80 : 0x7c00;
      for (let i = 0; i < u.length; i++) if ((u[i]! & m) === m) n++;
    }
    c.release?.();
  }
  return n;
}

const FLOATS: readonly string[] = ['F32', 'F16', 'BF16'];
const width = (d: string) => (d === 'F32' ? 4 : 2);

type Side = { store: TensorStore; info: TensorInfo };

/** Whether the narrower of two float tensors is the wider one cast to its dtype (round to nearest even), in element chunks. */
async function equalAfterCast(x: Side, y: Side): Promise<boolean> {
  const [wide, narrow] = width(x.info.dtype) >= width(y.info.dtype) ? [x, y] : [y, x];
  const n = wide.info.shape.reduce((a, b) => a * b, 1);
  const step = 1 << 22;
  for (let i = 0; i < n; i += step) {
    const m = Math.min(step, n - i);
    const w = await wide.store.read(wide.info, i * width(wide.info.dtype), (i + m) * width(wide.info.dtype));
    const v = await narrow.store.read(narrow.info, i * width(narrow.info.dtype), (i + m) * width(narrow.info.dtype));
    if (!castFloat(w, wide.info.dtype as FloatDtype, narrow.info.dtype as FloatDtype).equals(v)) return false;
  }
  return true;
}

const desc = (t: TensorInfo, sha: string) => `${t.dtype}[${t.shape}] sha256 ${sha.slice(0, 12)}…`;

/** Account for every tensor of `a` (and `b`) that the forward does not check. */
export async function coverage(a: CoverageSide, b: CoverageSide | undefined, progress: (m: string) => void): Promise<Coverage> {
  const cov: Coverage = { identical: 0, differ: [], onlyIn: [], nonFinite: [], notCompared: 0, checksums: null };
  for (const [side, s] of [
    ['a', a],
    ['b', b],
  ] as const) {
    if (!s) continue;
    progress(`scanning ${s.all.length} tensors of ${side} for NaN / Inf`);
    for (const { store, info } of s.all) {
      const count = await nonFiniteCount(store, info);
      if (count > 0) cov.nonFinite.push({ side, name: info.name, count });
    }
    if (s.checksums) {
      progress(`checking every rank's sha256 of ${side}`);
      try {
        await s.checksums();
      } catch (e) {
        if (!(e instanceof MoekitError) || e.code !== 'checksum') throw e;
        cov.checksums = e.message;
      }
    }
  }
  if (!b) {
    cov.notCompared = a.others.length;
    return cov;
  }
  const bs = new Map(b.others.map((t) => [t.info.name, t]));
  const as = new Set(a.others.map((t) => t.info.name));
  for (const t of b.others) if (!as.has(t.info.name)) cov.onlyIn.push({ side: 'b', name: t.info.name });
  progress(`comparing ${a.others.length} tensors outside the MLP blocks byte for byte`);
  const pool = new HashPool();
  try {
    await Promise.all(
      a.others.map(async (x) => {
        const y = bs.get(x.info.name);
        if (!y) {
          cov.onlyIn.push({ side: 'a', name: x.info.name });
          return;
        }
        const sameShape = JSON.stringify(x.info.shape) === JSON.stringify(y.info.shape);
        if (sameShape && x.info.dtype !== y.info.dtype && FLOATS.includes(x.info.dtype) && FLOATS.includes(y.info.dtype)) {
          // a --dtype conversion: the narrower side must be the wider one rounded to nearest even, bit for bit
          if (await equalAfterCast(x, y)) cov.identical++;
          else
            cov.differ.push({
              name: x.info.name,
              a: `${x.info.dtype}[${x.info.shape}]`,
              b: `${y.info.dtype}[${y.info.shape}], not its value rounded to ${y.info.dtype}`,
            });
          return;
        }
        const [hx, hy] = await Promise.all([pool.tensor(x.store, x.info), pool.tensor(y.store, y.info)]);
        if (hx === hy && x.info.dtype === y.info.dtype && sameShape) cov.identical++;
        else cov.differ.push({ name: x.info.name, a: desc(x.info, hx), b: desc(y.info, hy) });
      }),
    );
  } finally {
    await pool.close();
  }
  cov.differ.sort((p, q) => (p.name < q.name ? -1 : 1));
  cov.onlyIn.sort((p, q) => (p.name < q.name ? -1 : 1));
  return cov;
}

/** Whether the account found a failure. */
export const coverageFails = (c: Coverage): boolean => c.differ.length > 0 || c.onlyIn.length > 0 || c.nonFinite.length > 0 || c.checksums !== null;
