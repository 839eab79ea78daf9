/**
 * The zip container of `torch.save` (PyTorch's `PyTorchStreamWriter`): the central directory is
 * the truth (local headers carry zero sizes and a data descriptor follows each entry), zip64
 * records are always written, entries are STORED and 64-byte aligned through an `FB` extra field.
 * The archive may sit inside a larger file (each item of a DCP `.distcp` file is one), so every
 * offset is relative to `base` and checked against `length`.
 *
 * Sources: PKWARE APPNOTE 6.3 (end of central directory, zip64 locator/record, central and local
 * headers, extra field 0x0001); torch `caffe2/serialize/inline_container.cc`;
 * `../shared/fixtures/torch/README.md` (the format as torch 2.11 writes it).
 */
import type { FileHandle } from 'node:fs/promises';
import { MoekitError } from '../../errors.js';

export interface ZipEntry {
  name: string;
  method: number;
  size: number;
  compressedSize: number;
  headerOffset: number;
}

const EOCD = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_EOCD = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
/** central directories bigger than this are not a checkpoint's (a 100k-tensor archive needs ~10 MB) */
const MAX_CENTRAL = 256 * 2 ** 20;

/** `n` bytes at `pos` (into `into` when given), or a one-line error if the file ends first. */
export async function readAt(fh: FileHandle, pos: number, n: number, what: string, into?: Buffer): Promise<Buffer> {
  const b = into ? into.subarray(0, n) : Buffer.allocUnsafe(n);
  let done = 0;
  while (done < n) {
    const { bytesRead } = await fh.read(b, done, n - done, pos + done);
    if (bytesRead === 0) throw new MoekitError('bad-input', `${what}: file ended at byte ${pos + done} (truncated?)`);
    done += bytesRead;
  }
  return b;
}

export class ZipArchive {
  private dataOffsets = new Map<string, number>();
  private constructor(
    private readonly fh: FileHandle,
    readonly where: string,
    readonly base: number,
    readonly length: number,
    readonly entries: Map<string, ZipEntry>,
  ) {}

  /** Read the central directory of the archive at [base, base + length) of the file. */
  static async open(fh: FileHandle, where: string, base: number, length: number): Promise<ZipArchive> {
    const fail = (m: string): never => {
      throw new MoekitError('bad-input', `${where}: not a readable torch.save zip (${m})`);
    };
    if (length < 22) fail(`${length} bytes, smaller than a zip's end record`);
    const tailLen = Math.min(length, 22 + 65535 + 20);
    const tail = await readAt(fh, base + length - tailLen, tailLen, where);
    let e = -1;
    for (let i = tailLen - 22; i >= 0; i--)
      if (tail.readUInt32LE(i) === EOCD && i + 22 + tail.readUInt16LE(i + 20) === tailLen) {
        e = i;
        break;
      }
    if (e < 0) fail('no end-of-central-directory record');
    let count = tail.readUInt16LE(e + 10);
    let cdSize = tail.readUInt32LE(e + 12);
    let cdOffset = tail.readUInt32LE(e + 16);
    if (e >= 20 && tail.readUInt32LE(e - 20) === ZIP64_LOCATOR) {
      const recOff = Number(tail.readBigUInt64LE(e - 20 + 8));
      if (recOff + 56 > length) fail('zip64 end record outside the archive');
      const rec = await readAt(fh, base + recOff, 56, where);
      if (rec.readUInt32LE(0) !== ZIP64_EOCD) fail('bad zip64 end record');
      count = safeNum(rec.readBigUInt64LE(32), fail);
      cdSize = safeNum(rec.readBigUInt64LE(40), fail);
      cdOffset = safeNum(rec.readBigUInt64LE(48), fail);
    }
    if (cdSize > MAX_CENTRAL) fail(`central directory of ${cdSize} bytes`);
    if (cdOffset + cdSize > length) fail('central directory outside the archive');
    if (count * 46 > cdSize) fail(`${count} entries cannot fit a ${cdSize}-byte central directory`);
    const cd = await readAt(fh, base + cdOffset, cdSize, where);
    const entries = new Map<string, ZipEntry>();
    let p = 0;
    for (let k = 0; k < count; k++) {
      if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL) fail(`central directory entry ${k} is damaged`);
      const method = cd.readUInt16LE(p + 10);
      let compressedSize = cd.readUInt32LE(p + 20);
      let size = cd.readUInt32LE(p + 24);
      const nameLen = cd.readUInt16LE(p + 28);
      const extraLen = cd.readUInt16LE(p + 30);
      const commentLen = cd.readUInt16LE(p + 32);
      let headerOffset = cd.readUInt32LE(p + 42);
      const end = p + 46 + nameLen + extraLen + commentLen;
      if (end > cd.length) fail(`central directory entry ${k} runs past the directory`);
      const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
      // zip64 extra field: 8-byte values for those of size, compressed size, offset that are 0xFFFFFFFF
      let x = p + 46 + nameLen;
      const xEnd = x + extraLen;
      while (x + 4 <= xEnd) {
        const id = cd.readUInt16LE(x);
        const n = cd.readUInt16LE(x + 2);
        if (id === 1) {
          let q = x + 4;
          const next = (): number => {
            if (q + 8 > x + 4 + n) fail(`zip64 field of '${name}' too short`);
            const v = safeNum(cd.readBigUInt64LE(q), fail);
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = next();
          if (compressedSize === 0xffffffff) compressedSize = next();
          if (headerOffset === 0xffffffff) headerOffset = next();
        }
        x += 4 + n;
      }
      if (headerOffset + 30 + compressedSize > cdOffset) fail(`entry '${name}' overlaps the central directory`);
      if (entries.has(name)) fail(`entry '${name}' appears twice`);
      entries.set(name, { name, method, size, compressedSize, headerOffset });
      p = end;
    }
    return new ZipArchive(fh, where, base, length, entries);
  }

  /** Absolute file offset of an entry's data (from its local header), checked to be stored and inside the archive. */
  async dataOffset(e: ZipEntry): Promise<number> {
    const known = this.dataOffsets.get(e.name);
    if (known !== undefined) return known;
    if (e.method !== 0)
      throw new MoekitError(
        'unsupported',
        `${this.where}: entry '${e.name}' is compressed (method ${e.method}); torch.save stores entries uncompressed, so this archive was repacked: unzip and re-zip it with -0`,
      );
    const h = await readAt(this.fh, this.base + e.headerOffset, 30, this.where);
    if (h.readUInt32LE(0) !== LOCAL) throw new MoekitError('bad-input', `${this.where}: entry '${e.name}' has no local header where the directory says`);
    const start = e.headerOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
    if (start + e.size > this.length) throw new MoekitError('bad-input', `${this.where}: entry '${e.name}' runs past the end of the archive (truncated?)`);
    const abs = this.base + start;
    this.dataOffsets.set(e.name, abs);
    return abs;
  }

  /** Read a whole (small) entry. */
  async read(e: ZipEntry, max: number): Promise<Buffer> {
    if (e.size > max) throw new MoekitError('bad-input', `${this.where}: entry '${e.name}' is ${e.size} bytes, more than the ${max} moekit reads for it`);
    return readAt(this.fh, await this.dataOffset(e), e.size, this.where);
  }
}

function safeNum(v: bigint, fail: (m: string) => never): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? fail(`value ${v} too large`) : Number(v);
}
