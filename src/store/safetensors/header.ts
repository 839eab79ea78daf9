import { MoekitError } from '../../errors.js';
import { type Dtype, DTYPE_SIZES, isDtype, numel } from '../dtypes.js';

const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Offsets relative to the start of the data section. */
  begin: number;
  end: number;
}

export interface ParsedHeader {
  headerLength: number;
  /** Absolute file offset where the data section starts (8 + headerLength). */
  dataStart: number;
  metadata: Record<string, string> | undefined;
  tensors: TensorEntry[];
}

/**
 * Validate a header given its JSON text and the file size. `where` names the file in errors.
 * Checks: JSON object, known dtypes, integer shapes, offsets matching dtype×shape, in range,
 * no overlaps and no gaps (the data section must be exactly covered, as safetensors requires).
 */
export function parseHeaderJson(text: string, headerLength: number, fileSize: number, where: string): ParsedHeader {
  const err = (msg: string): never => {
    throw new MoekitError('bad-input', `${where}: ${msg}`);
  };
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    return err(`header is not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) err('header is not a JSON object');
  const dataStart = 8 + headerLength;
  const dataLen = fileSize - dataStart;
  let metadata: Record<string, string> | undefined;
  const tensors: TensorEntry[] = [];
  for (const [name, v] of Object.entries(obj as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) err('__metadata__ is not an object');
      for (const [k, mv] of Object.entries(v as Record<string, unknown>)) {
        if (typeof mv !== 'string') err(`__metadata__.${k} is not a string`);
      }
      metadata = v as Record<string, string>;
      continue;
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) err(`tensor '${name}': entry is not an object`);
    const e = v as Record<string, unknown>;
    if (!isDtype(e.dtype)) err(`tensor '${name}': unknown dtype ${JSON.stringify(e.dtype)}`);
    const dtype = e.dtype as Dtype;
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      err(`tensor '${name}': shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      err(`tensor '${name}': data_offsets ${JSON.stringify(offs)} is not a pair of non-negative integers`);
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) err(`tensor '${name}': data_offsets [${begin}, ${end}] end before begin`);
    const want = numel(shape as number[]) * DTYPE_SIZES[dtype];
    if (end - begin !== want) {
      err(`tensor '${name}': data_offsets span ${end - begin} bytes but ${dtype}${JSON.stringify(shape)} needs ${want}`);
    }
    if (end > dataLen) {
      err(`tensor '${name}': data_offsets [${begin}, ${end}] run past the end of the file (data section is ${Math.max(dataLen, 0)} bytes; truncated?)`);
    }
    tensors.push({ name, dtype, shape: shape as number[], begin, end });
  }
  const sorted = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  for (const t of sorted) {
    if (t.begin < pos) err(`tensor '${t.name}': data_offsets [${t.begin}, ${t.end}] overlap the previous tensor (ends at ${pos})`);
    if (t.begin > pos) err(`gap of ${t.begin - pos} unused bytes before tensor '${t.name}' at data offset ${pos}`);
    pos = t.end;
  }
  if (pos !== dataLen) {
    err(`${dataLen - pos} trailing bytes after the last tensor (data section is ${dataLen} bytes, tensors cover ${pos})`);
  }
  return { headerLength, dataStart, metadata, tensors };
}

/** Validate the 8-byte length prefix against the file size; returns the header length. */
export function checkHeaderLength(len: bigint, fileSize: number, where: string): number {
  if (fileSize < 8) throw new MoekitError('bad-input', `${where}: file is ${fileSize} bytes, too short to be safetensors (needs an 8-byte header length)`);
  if (len > BigInt(MAX_HEADER_BYTES)) {
    throw new MoekitError('bad-input', `${where}: header length ${len} bytes is absurd (limit ${MAX_HEADER_BYTES}); not a safetensors file?`);
  }
  const n = Number(len);
  if (8 + n > fileSize) {
    throw new MoekitError('bad-input', `${where}: header length ${n} bytes is larger than the file (${fileSize} bytes); truncated or not safetensors`);
  }
  if (n < 2) throw new MoekitError('bad-input', `${where}: header length ${n} is too small for a JSON object`);
  return n;
}
