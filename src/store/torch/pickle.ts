/**
 * A restricted unpickler that never executes anything. It reads pickle protocols 0–5 into inert
 * values: globals stay names (`PyGlobal`), calls (`REDUCE`, `NEWOBJ`, `BUILD`) become records
 * (`PyObj`), and only a fixed set of torch/stdlib callables is *interpreted* — rebuilt as plain
 * data (a tensor reference, an OrderedDict, a torch.Size tuple, a path string). Nothing is ever
 * imported or called.
 *
 * Sources: CPython `Lib/pickle.py` / `pickletools.py` (opcodes and their stack effects);
 * torch `serialization.py` (`_persistent_id`: ('storage', storage_type, key, location, numel)),
 * `_utils.py` (`_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata])`, `_rebuild_tensor_v3(…, dtype, metadata)`, `_rebuild_parameter`),
 * `_weights_only_unpickler.py` (the allow-list this one follows) and Megatron-LM
 * `megatron/training/checkpointing.py` (the extra safe globals its checkpoints need: argparse
 * Namespace, enums, numpy scalars/arrays in the RNG state).
 *
 * Hostile input: every length is checked against the bytes left; big integers are capped; memo
 * and stack are bounded by the input; `strict` turns any global outside the allow-list into an
 * error instead of an inert record.
 */
import { MoekitError } from '../../errors.js';

export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get full(): string {
    return `${this.module}.${this.name}`;
  }
}
export class PyTuple {
  constructor(readonly items: Py[]) {}
}
export class PyDict {
  readonly entries: [Py, Py][] = [];
  /** attributes set by BUILD (OrderedDict's `_metadata`) */
  attrs?: Py;
  set(k: Py, v: Py): void {
    if (typeof k === 'string' || typeof k === 'number') {
      const i = this.entries.findIndex((e) => e[0] === k);
      if (i >= 0) {
        this.entries[i]![1] = v;
        return;
      }
    }
    this.entries.push([k, v]);
  }
  get(k: string): Py | undefined {
    for (const [a, b] of this.entries) if (a === k) return b;
    return undefined;
  }
}
export class PySet {
  constructor(readonly items: Py[]) {}
}
/** An object of any class, never constructed: the callable, its arguments, and BUILD's state. */
export class PyObj {
  state: Py = null;
  readonly listItems: Py[] = [];
  constructor(
    readonly cls: Py,
    readonly args: Py[],
  ) {}
  get className(): string {
    return this.cls instanceof PyGlobal ? this.cls.full : '?';
  }
  /** a dataclass / Namespace field: from BUILD's state dict (or the (dict, slots) pair) */
  field(name: string): Py | undefined {
    const s = this.state;
    if (s instanceof PyDict) return s.get(name);
    if (s instanceof PyTuple) for (const part of s.items) if (part instanceof PyDict && part.get(name) !== undefined) return part.get(name);
    return undefined;
  }
}
/** A torch storage named by a persistent id: entry `data/<key>` of the archive. */
export class TorchStorage {
  constructor(
    readonly dtype: string,
    readonly key: string,
    readonly location: string,
    readonly numel: number,
  ) {}
}
/** A strided tensor view into a storage (what `_rebuild_tensor_v2/_v3` would build). */
export class TorchTensor {
  constructor(
    readonly storage: TorchStorage,
    /** element dtype (the storage's, or `_rebuild_tensor_v3`'s over an untyped storage) */
    readonly dtype: string,
    /** in elements of `dtype` */
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}
/** A tensor stored in a form moekit does not read (quantized, sparse, meta, subclass). */
export class TorchOpaqueTensor {
  constructor(readonly how: string) {}
}

export type Py =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | Py[]
  | PyTuple
  | PyDict
  | PySet
  | PyGlobal
  | PyObj
  | TorchStorage
  | TorchTensor
  | TorchOpaqueTensor;

/** torch storage class → safetensors dtype name (torch `_dtype_to_storage_type_map`). */
const STORAGE_DTYPES: Record<string, string> = {
  FloatStorage: 'F32',
  DoubleStorage: 'F64',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
  Float8_e4m3fnStorage: 'F8_E4M3',
  Float8_e5m2Storage: 'F8_E5M2',
};
/** torch dtype objects (`GLOBAL torch.float32`) → safetensors dtype name */
export const TORCH_DTYPES: Record<string, string> = {
  float32: 'F32',
  float: 'F32',
  float64: 'F64',
  double: 'F64',
  float16: 'F16',
  half: 'F16',
  bfloat16: 'BF16',
  int64: 'I64',
  long: 'I64',
  int32: 'I32',
  int: 'I32',
  int16: 'I16',
  int8: 'I8',
  uint8: 'U8',
  bool: 'BOOL',
  float8_e4m3fn: 'F8_E4M3',
  float8_e5m2: 'F8_E5M2',
};

const TENSOR_REBUILDS = new Set(['_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_tensor_v3']);
const OPAQUE_REBUILDS = new Set([
  '_rebuild_qtensor',
  '_rebuild_sparse_tensor',
  '_rebuild_nested_tensor',
  '_rebuild_meta_tensor_no_storage',
  '_rebuild_wrapper_subclass',
  '_rebuild_device_tensor_from_numpy',
  '_rebuild_device_tensor_from_cpu_tensor',
]);

/** Globals a checkpoint may name without `strict` complaining (torch weights_only + Megatron's safe globals). */
function allowedGlobal(module: string, name: string): boolean {
  const full = `${module}.${name}`;
  if (module === 'torch._utils' && (TENSOR_REBUILDS.has(name) || OPAQUE_REBUILDS.has(name) || name.startsWith('_rebuild_parameter'))) return true;
  if (module === 'torch' && (name in TORCH_DTYPES || name in STORAGE_DTYPES || name === 'Size' || name === 'device' || /_format$|^strided$/.test(name)))
    return true;
  if (/^torch\.distributed\.checkpoint\.(metadata|filesystem|planner)$/.test(module)) return true;
  if (/^numpy(\._core|\.core)?\.multiarray$/.test(module) && (name === '_reconstruct' || name === 'scalar')) return true;
  if ((module === 'numpy' && (name === 'ndarray' || name === 'dtype')) || module === 'numpy.dtypes') return true;
  if (/^megatron\.core(\.|$)/.test(module) && /(Type|Backend|Mode|State|Enum)$/.test(name)) return true;
  return ALLOWED.has(full);
}
const ALLOWED = new Set([
  'collections.OrderedDict',
  'collections.defaultdict',
  'builtins.set',
  'builtins.frozenset',
  'builtins.bytearray',
  'builtins.slice',
  'builtins.complex',
  'builtins.object',
  '_codecs.encode',
  'copyreg._reconstructor',
  'torch.serialization._get_layout',
  'torch._tensor._rebuild_from_type_v2',
  'torch.nn.parameter.Parameter',
  'argparse.Namespace',
  'types.SimpleNamespace',
  'pathlib.PosixPath',
  'pathlib.WindowsPath',
  'pathlib.PurePosixPath',
  'pathlib.PureWindowsPath',
  'pathlib.Path',
]);

export interface UnpickleOptions {
  /** where the pickle came from, for error messages */
  where: string;
  /** BINPERSID / PERSID: turn a persistent id into a value (torch storages) */
  persistentLoad?: (pid: Py) => Py;
  /** refuse globals outside the allow-list instead of keeping them as inert records */
  strict?: boolean;
}

export interface Unpickled {
  value: Py;
  /** globals named outside the allow-list (kept inert) */
  foreign: Set<string>;
  protocol: number;
}

const MARK = Symbol('mark');
type Slot = Py | typeof MARK;
const MAX_LONG_BYTES = 64;

class Reader {
  pos = 0;
  constructor(
    readonly b: Uint8Array,
    readonly fail: (m: string) => never,
  ) {}
  need(n: number): void {
    if (n < 0 || this.pos + n > this.b.length) this.fail(`truncated: needs ${n} more bytes at offset ${this.pos}, ${this.b.length - this.pos} left`);
  }
  u8(): number {
    this.need(1);
    return this.b[this.pos++]!;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const s = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
  view(n: number): DataView {
    const s = this.bytes(n);
    return new DataView(s.buffer, s.byteOffset, n);
  }
  u16(): number {
    return this.view(2).getUint16(0, true);
  }
  u32(): number {
    return this.view(4).getUint32(0, true);
  }
  i32(): number {
    return this.view(4).getInt32(0, true);
  }
  u64(): number {
    const v = this.view(8).getBigUint64(0, true);
    if (v > BigInt(this.b.length)) this.fail(`length ${v} larger than the whole pickle (${this.b.length} bytes)`);
    return Number(v);
  }
  line(): string {
    const start = this.pos;
    while (this.pos < this.b.length && this.b[this.pos] !== 0x0a) this.pos++;
    if (this.pos >= this.b.length) this.fail('truncated: a text opcode has no end of line');
    const s = Buffer.from(this.b.subarray(start, this.pos)).toString('latin1');
    this.pos++;
    return s;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const asInt = (v: bigint): number | bigint => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);

/** Little-endian two's-complement integer of LONG1/LONG4. */
function decodeLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
  if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
  return asInt(v);
}

/** Python string literal of the text protocol (`S'abc'\n`): quotes stripped, common escapes decoded. */
function textString(s: string, fail: (m: string) => never): string {
  const q = s[0];
  if (!(q === "'" || q === '"') || s[s.length - 1] !== q || s.length < 2) fail('STRING opcode without quotes');
  return s
    .slice(1, -1)
    .replace(/\\(x[0-9a-fA-F]{2}|.)/g, (_, e: string) =>
      e[0] === 'x' ? String.fromCharCode(Number.parseInt(e.slice(1), 16)) : e === 'n' ? '\n' : e === 't' ? '\t' : e,
    );
}

/** The unpickler's state: the stack with its marks, the memo, and what it has seen. */
class Machine {
  readonly r: Reader;
  readonly stack: Slot[] = [];
  readonly marks: number[] = [];
  readonly memo = new Map<number, Py>();
  readonly foreign = new Set<string>();
  protocol = 0;
  done: { value: Py } | undefined;

  constructor(
    readonly data: Uint8Array,
    readonly opts: UnpickleOptions,
  ) {
    this.r = new Reader(data, this.fail);
  }
  readonly fail = (m: string): never => {
    throw new MoekitError('bad-input', `${this.opts.where}: not a pickle moekit can read (${m})`);
  };
  pop(): Py {
    const { stack, marks } = this;
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1]!)) this.fail(`stack underflow at offset ${this.r.pos - 1}`);
    return stack.pop() as Py;
  }
  top(): Py {
    const v = this.stack[this.stack.length - 1];
    if (v === undefined || v === MARK) this.fail(`no value on the stack at offset ${this.r.pos - 1}`);
    return v as Py;
  }
  /** the items pushed since the last MARK (the mark itself removed) */
  popMark(): Py[] {
    const m = this.marks.pop();
    if (m === undefined) this.fail(`no MARK at offset ${this.r.pos - 1}`);
    return this.stack.splice(m!).slice(1) as Py[];
  }
  push(v: Py): void {
    if (this.stack.length > MAX_STACK) this.fail('stack grows past any sensible depth');
    this.stack.push(v);
  }
  global(module: string, name: string): PyGlobal {
    if (!allowedGlobal(module, name)) {
      if (this.opts.strict)
        throw new MoekitError(
          'unsupported',
          `${this.opts.where}: the pickle names ${module}.${name}, which is not on moekit's allow list (--strict); without --strict it is kept as an inert record and never called`,
        );
      this.foreign.add(`${module}.${name}`);
    }
    return new PyGlobal(module, name);
  }
  get(i: number): Py {
    if (!this.memo.has(i)) this.fail(`memo key ${i} read before it was written`);
    return this.memo.get(i)!;
  }
  put(i: number): void {
    if (this.memo.size > this.data.length) this.fail('memo larger than the pickle');
    this.memo.set(i, this.top());
  }
  setItems(d: Py, items: Py[]): void {
    if (items.length % 2) this.fail('SETITEMS with an odd number of items');
    if (d instanceof PyDict) for (let i = 0; i < items.length; i += 2) d.set(items[i]!, items[i + 1]!);
    else if (d instanceof PyObj) d.listItems.push(...items);
    else this.fail('SETITEM on something that is not a dict');
  }
  append(l: Py, items: Py[]): void {
    if (Array.isArray(l)) for (const it of items) l.push(it);
    else if (l instanceof PyObj || l instanceof PySet) (l instanceof PyObj ? l.listItems : l.items).push(...items);
    else this.fail('APPEND on something that is not a list');
  }
  persistent(pid: Py): void {
    if (!this.opts.persistentLoad) this.fail('a persistent id where none is expected');
    this.push(this.opts.persistentLoad!(pid));
  }
  long(n: number): void {
    if (n < 0 || n > MAX_LONG_BYTES) this.fail(`integer of ${n} bytes`);
    this.push(decodeLong(this.r.bytes(n)));
  }
  textInt(s: string): void {
    if (!/^[-+]?\d{1,40}$/.test(s)) this.fail(`bad integer '${s.slice(0, 20)}'`);
    this.push(asInt(BigInt(s)));
  }
  str(b: Uint8Array): void {
    this.push(decodeUtf8(b, this.fail));
  }
}

const MAX_STACK = 1_000_000;
type Op = (m: Machine) => void;
const tuple =
  (n: number): Op =>
  (m) => {
    const items: Py[] = [];
    for (let i = 0; i < n; i++) items.unshift(m.pop());
    m.push(new PyTuple(items));
  };

/** Every opcode of protocols 0–5 (CPython pickletools), keyed by its byte. */
const OPS: Record<number, Op> = {
  128: (m) => {
    m.protocol = m.r.u8();
    if (m.protocol > 5) m.fail(`pickle protocol ${m.protocol} (moekit reads 0-5)`);
  },
  149: (m) => void m.r.u64(), // FRAME: a length hint, the opcodes inside are read as usual
  46: (m) => {
    m.done = { value: m.pop() };
  },
  40: (m) => {
    m.marks.push(m.stack.length);
    m.stack.push(MARK);
  },
  48: (m) => {
    if (m.stack[m.stack.length - 1] === MARK) {
      m.stack.pop();
      m.marks.pop();
    } else m.pop();
  },
  49: (m) => void m.popMark(),
  50: (m) => m.push(m.top()),
  78: (m) => m.push(null),
  136: (m) => m.push(true),
  137: (m) => m.push(false),
  74: (m) => m.push(m.r.i32()),
  75: (m) => m.push(m.r.u8()),
  77: (m) => m.push(m.r.u16()),
  138: (m) => m.long(m.r.u8()),
  139: (m) => m.long(m.r.i32()),
  73: (m) => {
    const s = m.r.line();
    if (s === '01' || s === '00') m.push(s === '01');
    else m.textInt(s);
  },
  76: (m) => m.textInt(m.r.line().replace(/L$/, '')),
  70: (m) => m.push(Number(m.r.line())),
  71: (m) => m.push(m.r.view(8).getFloat64(0, false)),
  88: (m) => m.str(m.r.bytes(m.r.u32())),
  140: (m) => m.str(m.r.bytes(m.r.u8())),
  141: (m) => m.str(m.r.bytes(m.r.u64())),
  86: (m) => m.push(m.r.line()),
  83: (m) => m.push(textString(m.r.line(), m.fail)),
  84: (m) => m.push(Buffer.from(m.r.bytes(m.r.i32())).toString('latin1')),
  85: (m) => m.push(Buffer.from(m.r.bytes(m.r.u8())).toString('latin1')),
  66: (m) => m.push(m.r.bytes(m.r.u32())),
  67: (m) => m.push(m.r.bytes(m.r.u8())),
  142: (m) => m.push(m.r.bytes(m.r.u64())),
  150: (m) => m.push(m.r.bytes(m.r.u64())),
  151: (m) => m.fail('out-of-band buffers (protocol 5 NEXT_BUFFER) are not stored in a checkpoint file'),
  152: () => undefined,
  41: (m) => m.push(new PyTuple([])),
  133: tuple(1),
  134: tuple(2),
  135: tuple(3),
  116: (m) => m.push(new PyTuple(m.popMark())),
  93: (m) => m.push([]),
  108: (m) => m.push(m.popMark()),
  125: (m) => m.push(new PyDict()),
  100: (m) => {
    const d = new PyDict();
    m.setItems(d, m.popMark());
    m.push(d);
  },
  143: (m) => m.push(new PySet([])),
  145: (m) => m.push(new PySet(m.popMark())),
  144: (m) => {
    const items = m.popMark();
    m.append(m.top(), items);
  },
  97: (m) => {
    const v = m.pop();
    m.append(m.top(), [v]);
  },
  101: (m) => {
    const items = m.popMark();
    m.append(m.top(), items);
  },
  115: (m) => {
    const v = m.pop();
    const k = m.pop();
    m.setItems(m.top(), [k, v]);
  },
  117: (m) => {
    const items = m.popMark();
    m.setItems(m.top(), items);
  },
  103: (m) => m.push(m.get(Number(m.r.line()))),
  104: (m) => m.push(m.get(m.r.u8())),
  106: (m) => m.push(m.get(m.r.u32())),
  112: (m) => m.put(Number(m.r.line())),
  113: (m) => m.put(m.r.u8()),
  114: (m) => m.put(m.r.u32()),
  148: (m) => m.put(m.memo.size),
  99: (m) => {
    const module = m.r.line();
    m.push(m.global(module, m.r.line()));
  },
  147: (m) => {
    const name = m.pop();
    const module = m.pop();
    if (typeof module !== 'string' || typeof name !== 'string') m.fail('STACK_GLOBAL of non-strings');
    m.push(m.global(module as string, name as string));
  },
  130: (m) => m.fail('extension-registry opcodes (EXT1/2/4) are not used by torch checkpoints'),
  131: (m) => m.fail('extension-registry opcodes (EXT1/2/4) are not used by torch checkpoints'),
  132: (m) => m.fail('extension-registry opcodes (EXT1/2/4) are not used by torch checkpoints'),
  81: (m) => m.persistent(m.pop()),
  80: (m) => m.persistent(m.r.line()),
  82: (m) => {
    const args = m.pop();
    const fn = m.pop();
    if (!(args instanceof PyTuple)) m.fail('REDUCE with arguments that are not a tuple');
    m.push(reduce(fn, (args as PyTuple).items, m.fail));
  },
  129: (m) => {
    const args = m.pop();
    const cls = m.pop();
    m.push(new PyObj(cls, args instanceof PyTuple ? args.items : []));
  },
  146: (m) => {
    m.pop(); // keyword arguments
    const args = m.pop();
    const cls = m.pop();
    m.push(new PyObj(cls, args instanceof PyTuple ? args.items : []));
  },
  105: (m) => {
    const module = m.r.line();
    const g = m.global(module, m.r.line());
    m.push(new PyObj(g, m.popMark()));
  },
  111: (m) => {
    const items = m.popMark();
    if (items.length === 0) m.fail('OBJ without a class');
    m.push(new PyObj(items[0]!, items.slice(1)));
  },
  98: (m) => {
    const state = m.pop();
    const obj = m.top();
    if (obj instanceof PyObj) obj.state = state;
    else if (obj instanceof PyDict) obj.attrs = state;
  },
};

/** Read a pickle into inert values; nothing named in it is imported or called. */
export function unpickle(data: Uint8Array, opts: UnpickleOptions): Unpickled {
  const m = new Machine(data, opts);
  while (!m.done) {
    const op = m.r.u8();
    const f = OPS[op];
    if (!f) m.fail(`unknown opcode 0x${op.toString(16).padStart(2, '0')} at offset ${m.r.pos - 1}`);
    f!(m);
  }
  return { value: m.done.value, foreign: m.foreign, protocol: m.protocol };
}

function decodeUtf8(b: Uint8Array, fail: (m: string) => never): string {
  try {
    return utf8.decode(b);
  } catch {
    return fail('a string that is not valid UTF-8');
  }
}

const ints = (v: Py, what: string, fail: (m: string) => never): number[] => {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : fail(`${what} is not a tuple`);
  return (items as Py[]).map((x) => (typeof x === 'number' && Number.isInteger(x) && x >= 0 ? x : fail(`${what} holds ${String(x)}`)));
};

/** What REDUCE(fn, args) stands for: interpreted for the few callables torch checkpoints rely on, an inert record otherwise. */
function reduce(fn: Py, args: Py[], fail: (m: string) => never): Py {
  if (!(fn instanceof PyGlobal)) return new PyObj(fn, args);
  const { module, name } = fn;
  if (module === 'torch._utils' && TENSOR_REBUILDS.has(name)) {
    const [storage, offset, size, stride] = args;
    if (!(storage instanceof TorchStorage)) return new TorchOpaqueTensor(`${name} of a storage that is not a file entry`);
    if (typeof offset !== 'number' || !Number.isInteger(offset) || offset < 0) fail(`${name}: bad storage offset`);
    const shape = ints(size!, 'tensor size', fail);
    const st = ints(stride!, 'tensor stride', fail);
    if (shape.length !== st.length) fail(`${name}: size and stride of different lengths`);
    let dtype = storage.dtype;
    const d = args[6];
    if (name === '_rebuild_tensor_v3' && d instanceof PyGlobal && d.module === 'torch') {
      dtype = TORCH_DTYPES[d.name] ?? fail(`${name}: tensors of dtype torch.${d.name} are not read by moekit`);
      if (storage.dtype !== 'U8' && storage.dtype !== dtype) fail(`${name}: a ${dtype} tensor over a ${storage.dtype} storage`);
    }
    return new TorchTensor(storage, dtype, offset as number, shape, st);
  }
  if (module === 'torch._utils' && name.startsWith('_rebuild_parameter')) return args[0] ?? null;
  if (module === 'torch._utils' && OPAQUE_REBUILDS.has(name)) return new TorchOpaqueTensor(name);
  if (module === 'torch._tensor' && name === '_rebuild_from_type_v2') {
    const [inner, , innerArgs] = args;
    return innerArgs instanceof PyTuple ? reduce(inner ?? null, innerArgs.items, fail) : new TorchOpaqueTensor(name);
  }
  if (module === 'collections' && (name === 'OrderedDict' || name === 'defaultdict')) {
    const d = new PyDict();
    const init = name === 'OrderedDict' ? args[0] : undefined;
    if (Array.isArray(init)) for (const kv of init) if (kv instanceof PyTuple && kv.items.length === 2) d.set(kv.items[0]!, kv.items[1]!);
    return d;
  }
  if (module === 'torch' && name === 'Size') return new PyTuple(args[0] instanceof PyTuple ? args[0].items : Array.isArray(args[0]) ? args[0] : []);
  if (module === 'torch.serialization' && name === '_get_layout') return typeof args[0] === 'string' ? args[0] : null;
  if (module === 'pathlib') return args.filter((a) => typeof a === 'string').join('/');
  if (module === '_codecs' && name === 'encode' && typeof args[0] === 'string')
    return Buffer.from(args[0], args[1] === 'latin1' || args[1] === 'latin-1' ? 'latin1' : 'utf8');
  if (module === 'builtins' && (name === 'set' || name === 'frozenset')) return new PySet(Array.isArray(args[0]) ? [...args[0]] : []);
  if (module === 'builtins' && name === 'bytearray') return args[0] instanceof Uint8Array ? args[0] : new Uint8Array(0);
  return new PyObj(fn, args);
}

/** torch's persistent id for a storage: ('storage', storage_type, key, location, numel). */
export function torchPersistentLoad(where: string): (pid: Py) => Py {
  const storages = new Map<string, TorchStorage>();
  return (pid) => {
    const fail = (m: string): never => {
      throw new MoekitError('bad-input', `${where}: ${m}`);
    };
    if (!(pid instanceof PyTuple) || pid.items[0] !== 'storage' || pid.items.length < 5) return fail('a persistent id that is not a torch storage');
    const [, type, key, location, numel] = pid.items;
    if (!(type instanceof PyGlobal) || type.module !== 'torch') return fail('a storage of unknown type');
    if (typeof key !== 'string' || !/^\d{1,9}$/.test(key)) return fail(`a storage key '${String(key).slice(0, 30)}' that is not a number`);
    if (typeof numel !== 'number' || !Number.isInteger(numel) || numel < 0) return fail('a storage with a bad element count');
    let dtype = STORAGE_DTYPES[type.name];
    if (type.name === 'UntypedStorage') dtype = 'U8';
    if (!dtype)
      throw new MoekitError('unsupported', `${where}: tensors of storage type torch.${type.name} (moekit reads ${Object.keys(STORAGE_DTYPES).join(', ')})`);
    const prev = storages.get(key);
    if (prev) return prev;
    const s = new TorchStorage(dtype, key, typeof location === 'string' ? location : '?', numel);
    storages.set(key, s);
    return s;
  };
}
