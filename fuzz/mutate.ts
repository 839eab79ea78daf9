/**
 * Seeded mutators for the fuzz suite: structured mutations of JSON documents (config.json,
 * moekit.json, index.json, shard manifests, safetensors headers) and byte-level mutations of files.
 * Every mutation is a pure function of the seed, so a case replays exactly.
 */

export type Rng = () => number;

/** mulberry32: a small seeded generator. */
export function rng(seed: number): Rng {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rng, n: number) => Math.floor(r() * n);

/** Values that have broken parsers before: huge, negative, fractional, wrong types, path tricks, prototype keys. */
const NASTY: readonly unknown[] = [
  0,
  -1,
  1,
  2,
  7,
  0.5,
  2 ** 31,
  2 ** 32 + 1,
  2 ** 53 + 1,
  1e12,
  1e308,
  -1e308,
  '',
  'x',
  '0',
  '1e9',
  '__proto__',
  'constructor',
  '../../etc/passwd',
  '/etc/passwd',
  'a/b',
  'F32',
  'BF16',
  'F8_E4M3',
  'I64',
  'concat',
  'interleaved',
  'te',
  'nemo',
  'hf-mixtral',
  'mixtral',
  'deepseek_v3',
  null,
  true,
  false,
  [],
  {},
  [0],
  [1, 2],
  [-1, 5],
  [2 ** 53 + 1],
  { a: 1 },
  { __proto__: { polluted: true } },
];

type Path = (string | number)[];

function paths(v: unknown, at: Path = [], out: Path[] = [], depth = 0): Path[] {
  out.push(at);
  if (depth > 6 || out.length > 4000) return out;
  if (Array.isArray(v)) for (let i = 0; i < Math.min(32, v.length); i++) paths(v[i], [...at, i], out, depth + 1);
  else if (v && typeof v === 'object') for (const k of Object.keys(v).slice(0, 64)) paths((v as Record<string, unknown>)[k], [...at, k], out, depth + 1);
  return out;
}

function get(v: unknown, p: Path): unknown {
  let x = v;
  for (const k of p) x = (x as Record<string | number, unknown>)?.[k];
  return x;
}

function set(v: unknown, p: Path, value: unknown, del = false): unknown {
  if (p.length === 0) return value;
  const parent = get(v, p.slice(0, -1)) as Record<string | number, unknown> | undefined;
  if (!parent || typeof parent !== 'object') return v;
  const k = p[p.length - 1]!;
  if (del) {
    if (Array.isArray(parent)) parent.splice(Number(k), 1);
    else delete parent[k];
  } else Object.defineProperty(parent, k, { value, enumerable: true, writable: true, configurable: true });
  return v;
}

/** A randomly chosen value, sometimes derived from the old one (off by one, scaled, emptied). */
function nastyFor(r: Rng, old: unknown): unknown {
  const c = r();
  if (typeof old === 'number' && c < 0.35) return pick(r, [old + 1, old - 1, old * 2, -old, old * 1e6, Math.floor(old / 2), old + 0.5]);
  if (typeof old === 'string' && c < 0.2) return pick(r, [old.slice(1), `${old}x`, old.toUpperCase(), old.repeat(3)]);
  if (Array.isArray(old) && c < 0.3) return pick(r, [[], [...old, ...old], old.slice(1), [...old].reverse(), old.map(() => 2 ** 40)]);
  if (c < 0.03) return 'A'.repeat(100_000);
  if (c < 0.05) return Array.from({ length: 100_000 }, (_, i) => i);
  return structuredClone(pick(r, NASTY));
}

/** One to three structured edits of a JSON value: replace, delete, rename a key, duplicate, swap. */
export function mutateJson(r: Rng, doc: unknown): unknown {
  let v = structuredClone(doc);
  const edits = 1 + int(r, 3);
  for (let e = 0; e < edits; e++) {
    const ps = paths(v);
    const p = pick(r, ps);
    const op = r();
    if (op < 0.55) v = set(v, p, nastyFor(r, get(v, p)));
    else if (op < 0.7 && p.length > 0) v = set(v, p, undefined, true);
    else if (op < 0.8 && p.length > 0) {
      const old = get(v, p);
      v = set(v, p, undefined, true);
      v = set(v, [...p.slice(0, -1), pick(r, ['__proto__', 'constructor', `${String(p[p.length - 1])}_`, '__metadata__', ''])], old);
    } else if (op < 0.9) {
      const q = pick(r, ps);
      const a = get(v, p);
      const b = get(v, q);
      v = set(set(v, p, structuredClone(b)), q, structuredClone(a));
    } else v = set(v, p, [get(v, p), get(v, p)]);
  }
  return v;
}

/** Byte-level damage: flipped bytes, a truncation, inserted garbage, or a rewritten length field. */
export function mutateBytes(r: Rng, buf: Buffer): Buffer {
  const b = Buffer.from(buf);
  const op = r();
  if (op < 0.35) {
    const n = 1 + int(r, 8);
    // mostly in the header region, where parsing happens
    for (let i = 0; i < n; i++) {
      const at = r() < 0.5 ? int(r, Math.min(b.length, 4096)) : int(r, b.length);
      b[at] = int(r, 256);
    }
    return b;
  }
  if (op < 0.6) return b.subarray(0, int(r, b.length));
  if (op < 0.8) {
    const at = int(r, b.length);
    return Buffer.concat([b.subarray(0, at), Buffer.from(Array.from({ length: 1 + int(r, 64) }, () => int(r, 256))), b.subarray(at)]);
  }
  if (b.length >= 8)
    b.writeBigUInt64LE(BigInt(pick(r, [0, 1, 7, 9, b.length, b.length - 8, 2 ** 31, 2 ** 40, Number(b.readBigUInt64LE(0)) + pick(r, [-8, -1, 1, 8])])), 0);
  return b;
}

/** A safetensors file with its header JSON edited structurally (length field kept consistent). */
export function mutateHeader(r: Rng, buf: Buffer): Buffer {
  const len = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + len).toString('utf8')) as unknown;
  let json = Buffer.from(JSON.stringify(mutateJson(r, header)));
  const pad = (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([head, json, buf.subarray(8 + len)]);
}

/** A zip (torch.save, a DCP item) damaged where its parsers look: data.pkl near the start, the central directory and end records at the end. */
export function mutateZip(r: Rng, buf: Buffer): Buffer {
  const b = Buffer.from(buf);
  const op = r();
  if (op < 0.7) {
    const tail = op >= 0.4;
    const n = 1 + int(r, 6);
    for (let i = 0; i < n; i++) {
      const span = Math.min(b.length, tail ? 2048 : 8192);
      const at = tail ? b.length - 1 - int(r, span) : int(r, span);
      b[at] = r() < 0.5 ? int(r, 256) : pick(r, [0x00, 0xff, 0x80, 0x7f, 0x28, 0x2e, 0x52, 0x63, 0x93]);
    }
    return b;
  }
  return mutateBytes(r, buf);
}
