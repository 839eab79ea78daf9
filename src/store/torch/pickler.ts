/**
 * moekit's own pickler: the few value kinds torch checkpoints need (ints, floats, strings,
 * tuples, lists, dicts, globals, REDUCE / NEWOBJ + BUILD records, persistent ids for storages),
 * written with protocol-2 opcodes that every Python 3 unpickler and torch's `weights_only`
 * unpickler read. No memo is written (nothing is shared), so the output depends only on the value.
 *
 * Sources: CPython `Lib/pickle.py` (`_Pickler` opcodes: PROTO, GLOBAL, BININT*, LONG1, BINFLOAT,
 * BINUNICODE, EMPTY_TUPLE/TUPLE1-3/TUPLE, EMPTY_LIST/APPENDS, EMPTY_DICT/SETITEMS, REDUCE, NEWOBJ,
 * BUILD, BINPERSID); torch `serialization.py` (`_save`: data.pkl with protocol 2).
 */

export type PyOut =
  | null
  | boolean
  | number
  | string
  | PyOut[]
  | { t: 'tuple'; items: PyOut[] }
  | { t: 'dict'; entries: [PyOut, PyOut][] }
  | { t: 'odict'; entries: [PyOut, PyOut][] }
  | { t: 'float'; v: number }
  | { t: 'global'; module: string; name: string }
  | { t: 'reduce'; fn: PyOut; args: PyOut[] }
  | { t: 'obj'; cls: PyOut; state: PyOut }
  | { t: 'pid'; id: PyOut };

/** Builders for the structured values. */
export const py = {
  tuple: (...items: PyOut[]): PyOut => ({ t: 'tuple', items }),
  dict: (entries: [PyOut, PyOut][]): PyOut => ({ t: 'dict', entries }),
  /** collections.OrderedDict (what module.state_dict() pickles as) */
  odict: (entries: [PyOut, PyOut][]): PyOut => ({ t: 'odict', entries }),
  /** a dict from a plain object's own keys, in order */
  obj: (o: Record<string, PyOut>): PyOut => ({ t: 'dict', entries: Object.entries(o) }),
  float: (v: number): PyOut => ({ t: 'float', v }),
  global: (module: string, name: string): PyOut => ({ t: 'global', module, name }),
  reduce: (fn: PyOut, ...args: PyOut[]): PyOut => ({ t: 'reduce', fn, args }),
  /** `cls.__new__(cls)` then BUILD with `state` (what dataclasses and argparse.Namespace pickle as); null: no BUILD */
  newobj: (cls: PyOut, state: PyOut): PyOut => ({ t: 'obj', cls, state }),
  pid: (id: PyOut): PyOut => ({ t: 'pid', id }),
};

class Out {
  private chunks: Buffer[] = [];
  byte(...b: number[]): void {
    this.chunks.push(Buffer.from(b));
  }
  buf(b: Buffer): void {
    this.chunks.push(b);
  }
  done(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

function int(o: Out, v: number): void {
  if (v >= 0 && v < 256) o.byte(0x4b, v);
  else if (v >= 0 && v < 65536) o.byte(0x4d, v & 0xff, v >> 8);
  else if (v >= -(2 ** 31) && v < 2 ** 31) {
    const b = Buffer.alloc(5);
    b[0] = 0x4a;
    b.writeInt32LE(v, 1);
    o.buf(b);
  } else {
    // LONG1: little-endian two's complement, as short as it can be
    let x = BigInt(v);
    const bytes: number[] = [];
    do {
      bytes.push(Number(x & 0xffn));
      x >>= 8n;
    } while (!((x === 0n && !(bytes[bytes.length - 1]! & 0x80)) || (x === -1n && bytes[bytes.length - 1]! & 0x80)));
    o.byte(0x8a, bytes.length, ...bytes);
  }
}

function str(o: Out, s: string): void {
  const b = Buffer.from(s, 'utf8');
  const h = Buffer.alloc(5);
  h[0] = 0x58; // BINUNICODE
  h.writeUInt32LE(b.length, 1);
  o.buf(h);
  o.buf(b);
}

function seq(o: Out, open: number, items: PyOut[], close: number): void {
  o.byte(open);
  if (items.length === 0) return;
  o.byte(0x28); // MARK
  for (const x of items) write(o, x);
  o.byte(close);
}

function structured(o: Out, v: Exclude<PyOut, null | boolean | number | string | PyOut[]>): void {
  switch (v.t) {
    case 'tuple':
      if (v.items.length === 0) o.byte(0x29);
      else if (v.items.length > 3) {
        o.byte(0x28);
        for (const x of v.items) write(o, x);
        o.byte(0x74);
      } else {
        for (const x of v.items) write(o, x);
        o.byte([0x85, 0x86, 0x87][v.items.length - 1]!);
      }
      break;
    case 'dict':
      seq(o, 0x7d, v.entries.flat(), 0x75);
      break;
    case 'odict': {
      write(o, py.global('collections', 'OrderedDict'));
      o.byte(0x29, 0x52); // EMPTY_TUPLE, REDUCE
      const items = v.entries.flat();
      if (items.length) {
        o.byte(0x28);
        for (const x of items) write(o, x);
        o.byte(0x75);
      }
      break;
    }
    case 'float': {
      const b = Buffer.alloc(9);
      b[0] = 0x47; // BINFLOAT, big-endian
      b.writeDoubleBE(v.v, 1);
      o.buf(b);
      break;
    }
    case 'global':
      o.buf(Buffer.from(`c${v.module}\n${v.name}\n`, 'utf8'));
      break;
    case 'reduce':
      write(o, v.fn);
      write(o, py.tuple(...v.args));
      o.byte(0x52);
      break;
    case 'obj':
      write(o, v.cls);
      o.byte(0x29, 0x81); // EMPTY_TUPLE, NEWOBJ
      if (v.state !== null) {
        write(o, v.state);
        o.byte(0x62); // BUILD
      }
      break;
    case 'pid':
      write(o, v.id);
      o.byte(0x51); // BINPERSID
      break;
  }
}

function write(o: Out, v: PyOut): void {
  if (v === null) o.byte(0x4e);
  else if (v === true) o.byte(0x88);
  else if (v === false) o.byte(0x89);
  else if (typeof v === 'number') {
    if (Number.isInteger(v)) int(o, v);
    else structured(o, { t: 'float', v });
  } else if (typeof v === 'string') str(o, v);
  else if (Array.isArray(v)) seq(o, 0x5d, v, 0x65);
  else structured(o, v);
}

/** The pickle of `v` (protocol 2 header; `protocol` only changes the header). */
export function pickle(v: PyOut, protocol = 2): Buffer {
  const o = new Out();
  o.byte(0x80, protocol);
  write(o, v);
  o.byte(0x2e);
  return o.done();
}
