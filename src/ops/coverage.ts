/**
 * verify's account of every tensor that no forward checks: the tensors a conversion does not
 * change (attention, norms, embeddings, lm_head) must be byte-identical on both sides (sha256 in
 * worker threads); a tensor on one side only is a failure; every float tensor of each side is
 * scanned for NaN / Inf; a sharded side has every rank's sha256 checked against its manifest.
 */
import { MoekitError } from '../errors.js';
import type { TensorInfo, TensorStore } from '../store/types.js';
import pLimit from 'p-limit';
import { HashPool } from '../engine/hash-pool.js';
import { castFloat, toFloat32 } from '../engine/cast.js';
import { numel, type FloatDtype } from '../store/dtypes.js';

export interface CoverageSide {
  /** tensors no forward reads, compared byte for byte with the other side by name */
  others: { store: TensorStore; info: TensorInfo }[];
  /** every tensor of the side, scanned for NaN / Inf */
  all: { store: TensorStore; info: TensorInfo }[];
  /** a sharded side: verifies every rank's checksums (throws a MoekitError 'checksum') */
  checksums?: () => Promise<void>;
  /** tensors this side holds in block FP8 (read dequantized): compared within E4M3 precision, not bytes */
  lossy?: Set<string>;
}

export interface Coverage {
  /** tensors outside the MLP blocks found byte-identical on both sides */
  identical: number;
  /** tensors one side holds in block FP8, equal to the other side within E4M3 precision */
  withinFp8: number;
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

/**
 * One read of every tensor of a side: NaN / Inf counted, and the sha256 of the tensors in `hash`
 * computed from the same bytes, by the pool's workers several tensors at a time (in place from the
 * files where the store has them), so nothing is read twice and the scan is not one thread's.
 */
async function scanSide(s: CoverageSide, side: 'a' | 'b', hash: Set<TensorInfo>, pool: HashPool, cov: Coverage): Promise<Map<TensorInfo, string>> {
  const sha = new Map<TensorInfo, string>();
  const todo = s.all.filter(({ info }) => hash.has(info) || FLOATS.includes(info.dtype));
  // tensors in files: two per worker queued; others are read here (pooled chunks), one at a time
  const [inFiles, read] = [pLimit(2 * pool.size), pLimit(1)];
  const found = await Promise.all(
    todo.map(({ store, info }) =>
      (info.file !== undefined ? inFiles : read)(() => pool.scan(store, info, { hash: hash.has(info), nonFinite: FLOATS.includes(info.dtype) })),
    ),
  );
  for (const [i, { info }] of todo.entries()) {
    const r = found[i]!;
    if (r.nonFinite > 0) cov.nonFinite.push({ side, name: info.name, count: r.nonFinite });
    if (r.sha256 !== undefined) sha.set(info, r.sha256);
  }
  return sha;
}

const FLOATS: readonly string[] = ['F32', 'F16', 'BF16'];
const width = (d: string) => (d === 'F32' ? 4 : 2);

type Side = { store: TensorStore; info: TensorInfo };

/** The two sides' bytes in matching element chunks (same shape, any float dtypes), so memory stays bounded. */
async function* pairedChunks(x: Side, y: Side): AsyncGenerator<[Buffer, Buffer]> {
  const n = numel(x.info.shape);
  const [wx, wy] = [width(x.info.dtype), width(y.info.dtype)];
  const step = 1 << 22;
  for (let i = 0; i < n; i += step) {
    const e = Math.min(n, i + step);
    yield [await x.store.read(x.info, i * wx, e * wx), await y.store.read(y.info, i * wy, e * wy)];
  }
}

/** Whether the narrower of two float tensors is the wider one cast to its dtype (round to nearest even), in element chunks. */
async function equalAfterCast(x: Side, y: Side): Promise<boolean> {
  const [wide, narrow] = width(x.info.dtype) >= width(y.info.dtype) ? [x, y] : [y, x];
  for await (const [w, v] of pairedChunks(wide, narrow))
    if (!castFloat(w, wide.info.dtype as FloatDtype, narrow.info.dtype as FloatDtype).equals(v)) return false;
  return true;
}

/**
 * Whether two float tensors agree within what block-FP8 E4M3 storage loses: per element
 * |x − y| ≤ 2⁻⁴·max(|x|, |y|) (half an ulp of 3 mantissa bits) + 2⁻¹⁰·amax/448 (half the smallest
 * subnormal step at the largest block scale), with 0.1% slack for the f32 products. Two streamed
 * passes: amax, then the comparison.
 */
async function withinFp8(x: Side, y: Side): Promise<boolean> {
  const floats = (b: Buffer, s: Side) => toFloat32(b, s.info.dtype as FloatDtype);
  let amax = 0;
  for await (const [bx, by] of pairedChunks(x, y))
    for (const v of [floats(bx, x), floats(by, y)]) for (let i = 0; i < v.length; i++) amax = Math.max(amax, Math.abs(v[i]!));
  const floor = (2 ** -10 * amax) / 448;
  for await (const [bx, by] of pairedChunks(x, y)) {
    const [a, b] = [floats(bx, x), floats(by, y)];
    for (let i = 0; i < a.length; i++) {
      const d = Math.abs(a[i]! - b[i]!);
      if (!(d <= 1.001 * (2 ** -4 * Math.max(Math.abs(a[i]!), Math.abs(b[i]!)) + floor))) return false;
    }
  }
  return true;
}

const desc = (t: TensorInfo, sha: string | undefined) => `${t.dtype}[${t.shape}]${sha ? ` sha256 ${sha.slice(0, 12)}…` : ''}`;

/** Account for every tensor of `a` (and `b`) that the forward does not check. */
export async function coverage(a: CoverageSide, b: CoverageSide | undefined, progress: (m: string) => void): Promise<Coverage> {
  const cov: Coverage = { identical: 0, withinFp8: 0, differ: [], onlyIn: [], nonFinite: [], notCompared: 0, checksums: null };
  // the tensors outside the blocks with the same name, dtype and shape on both sides are compared by sha256
  const bs = new Map((b?.others ?? []).map((t) => [t.info.name, t]));
  const pairs = a.others.flatMap((x) => {
    const y = bs.get(x.info.name);
    return y ? [{ x, y }] : [];
  });
  const sameShape = (p: (typeof pairs)[number]) => JSON.stringify(p.x.info.shape) === JSON.stringify(p.y.info.shape);
  const byHash = pairs.filter((p) => p.x.info.dtype === p.y.info.dtype && sameShape(p));
  const pool = new HashPool();
  const sha = new Map<TensorInfo, string>();
  try {
    for (const [side, s, mine] of [
      ['a', a, new Set(byHash.map((p) => p.x.info))],
      ['b', b, new Set(byHash.map((p) => p.y.info))],
    ] as const) {
      if (!s) continue;
      progress(`scanning ${s.all.length} tensors of ${side} for NaN / Inf${b ? ' (and hashing those outside the blocks)' : ''}`);
      for (const [k, v] of await scanSide(s, side, mine, pool, cov)) sha.set(k, v);
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
  } finally {
    await pool.close();
  }
  if (!b) {
    cov.notCompared = a.others.length;
    return cov;
  }
  const as = new Set(a.others.map((t) => t.info.name));
  for (const t of b.others) if (!as.has(t.info.name)) cov.onlyIn.push({ side: 'b', name: t.info.name });
  for (const t of a.others) if (!bs.has(t.info.name)) cov.onlyIn.push({ side: 'a', name: t.info.name });
  progress(`comparing ${pairs.length} tensors outside the MLP blocks`);
  for (const p of pairs) {
    const { x, y } = p;
    if (sameShape(p) && x.info.dtype !== y.info.dtype && FLOATS.includes(x.info.dtype) && FLOATS.includes(y.info.dtype)) {
      // a --dtype conversion: the narrower side must be the wider one rounded to nearest even, bit for bit
      if (await equalAfterCast(x, y)) cov.identical++;
      else
        cov.differ.push({
          name: x.info.name,
          a: `${x.info.dtype}[${x.info.shape}]`,
          b: `${y.info.dtype}[${y.info.shape}], not its value rounded to ${y.info.dtype}`,
        });
      continue;
    }
    const hx = sha.get(x.info);
    const hy = sha.get(y.info);
    if (hx !== undefined && hx === hy) cov.identical++;
    else if (
      (a.lossy?.has(x.info.name) || b.lossy?.has(y.info.name)) &&
      sameShape(p) &&
      FLOATS.includes(x.info.dtype) &&
      FLOATS.includes(y.info.dtype) &&
      (await withinFp8(x, y))
    )
      cov.withinFp8++;
    else cov.differ.push({ name: x.info.name, a: desc(x.info, hx), b: desc(y.info, hy) });
  }
  cov.differ.sort((p, q) => (p.name < q.name ? -1 : 1));
  cov.onlyIn.sort((p, q) => (p.name < q.name ? -1 : 1));
  return cov;
}

/** Whether the account found a failure. */
export const coverageFails = (c: Coverage): boolean => c.differ.length > 0 || c.onlyIn.length > 0 || c.nonFinite.length > 0 || c.checksums !== null;
