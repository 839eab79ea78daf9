/**
 * Writes the zip container of `torch.save` the way torch 2.x does (`PyTorchStreamWriter`): every
 * entry STORED, its data 64-byte aligned (relative to the archive's start) through an `FB` extra
 * field, a data descriptor after it (CRC-32 and sizes known once it has streamed), and zip64 end
 * records always. Entries stream from async chunks, so an archive of any size needs no more
 * memory than one chunk.
 *
 * Sources: PKWARE APPNOTE 6.3; torch `caffe2/serialize/inline_container.cc` (alignment 64, the
 * `FB` padding field, zip64); `../shared/fixtures/torch/README.md` (the bytes torch 2.11 writes).
 */
import { crc32 as zcrc32 } from 'node:zlib';

/** Where the archive's bytes go, in order; `pos` counts bytes written since the archive began. */
export interface Sink {
  pos: number;
  write(b: Uint8Array): Promise<void>;
}

const ALIGN = 64;
const U32 = 0xffffffff;

interface Written {
  name: Buffer;
  offset: number;
  size: number;
  crc: number;
}

export class ZipWriter {
  private entries: Written[] = [];
  private readonly start: number;
  constructor(private readonly sink: Sink) {
    this.start = sink.pos;
  }
  private get pos(): number {
    return this.sink.pos - this.start;
  }

  /** Add one entry whose bytes come from `data` (a buffer or async chunks). */
  async add(name: string, data: Uint8Array | AsyncIterable<Uint8Array>): Promise<void> {
    const nameB = Buffer.from(name, 'utf8');
    const offset = this.pos;
    // local header with zero CRC and sizes (flag 0x08: they follow in the data descriptor)
    const fixed = 30 + nameB.length + 4;
    const pad = (ALIGN - ((offset + fixed) % ALIGN)) % ALIGN;
    const h = Buffer.alloc(fixed + pad);
    h.writeUInt32LE(0x04034b50, 0);
    h.writeUInt16LE(45, 4);
    h.writeUInt16LE(0x0808, 6);
    h.writeUInt16LE(nameB.length, 26);
    h.writeUInt16LE(4 + pad, 28);
    nameB.copy(h, 30);
    h.writeUInt16LE(0x4246, 30 + nameB.length); // 'FB': padding so the data starts aligned
    h.writeUInt16LE(pad, 32 + nameB.length);
    h.fill(0x5a, fixed); // 'Z'
    await this.sink.write(h);
    let crc = 0;
    let size = 0;
    const put = async (c: Uint8Array) => {
      crc = zcrc32(c, crc);
      size += c.length;
      await this.sink.write(c);
    };
    if (data instanceof Uint8Array) await put(data);
    else for await (const c of data) await put(c);
    const big = size >= U32;
    const dd = Buffer.alloc(big ? 24 : 16);
    dd.writeUInt32LE(0x08074b50, 0);
    dd.writeUInt32LE(crc >>> 0, 4);
    if (big) {
      dd.writeBigUInt64LE(BigInt(size), 8);
      dd.writeBigUInt64LE(BigInt(size), 16);
    } else {
      dd.writeUInt32LE(size, 8);
      dd.writeUInt32LE(size, 12);
    }
    await this.sink.write(dd);
    this.entries.push({ name: nameB, offset, size, crc: crc >>> 0 });
  }

  /** Write the central directory and end records; returns the archive's length. */
  async finish(): Promise<number> {
    const cdStart = this.pos;
    for (const e of this.entries) {
      const z64: bigint[] = [];
      if (e.size >= U32) z64.push(BigInt(e.size), BigInt(e.size));
      if (e.offset >= U32) z64.push(BigInt(e.offset));
      const extra = z64.length ? 4 + 8 * z64.length : 0;
      const c = Buffer.alloc(46 + e.name.length + extra);
      c.writeUInt32LE(0x02014b50, 0);
      c.writeUInt16LE(0x031e, 4);
      c.writeUInt16LE(45, 6);
      c.writeUInt16LE(0x0808, 8);
      c.writeUInt32LE(e.crc, 16);
      c.writeUInt32LE(Math.min(e.size, U32), 20);
      c.writeUInt32LE(Math.min(e.size, U32), 24);
      c.writeUInt16LE(e.name.length, 28);
      c.writeUInt16LE(extra, 30);
      c.writeUInt32LE(Math.min(e.offset, U32), 42);
      e.name.copy(c, 46);
      if (extra) {
        c.writeUInt16LE(1, 46 + e.name.length);
        c.writeUInt16LE(8 * z64.length, 48 + e.name.length);
        for (let i = 0; i < z64.length; i++) c.writeBigUInt64LE(z64[i]!, 50 + e.name.length + 8 * i);
      }
      await this.sink.write(c);
    }
    const cdSize = this.pos - cdStart;
    const n = this.entries.length;
    const z = Buffer.alloc(56 + 20 + 22);
    z.writeUInt32LE(0x06064b50, 0); // zip64 end of central directory record
    z.writeBigUInt64LE(44n, 4);
    z.writeUInt16LE(0x031e, 12);
    z.writeUInt16LE(45, 14);
    z.writeBigUInt64LE(BigInt(n), 24);
    z.writeBigUInt64LE(BigInt(n), 32);
    z.writeBigUInt64LE(BigInt(cdSize), 40);
    z.writeBigUInt64LE(BigInt(cdStart), 48);
    z.writeUInt32LE(0x07064b50, 56); // zip64 locator
    z.writeBigUInt64LE(BigInt(cdStart + cdSize), 64);
    z.writeUInt32LE(1, 72);
    z.writeUInt32LE(0x06054b50, 76); // end of central directory
    z.writeUInt16LE(Math.min(n, 0xffff), 84);
    z.writeUInt16LE(Math.min(n, 0xffff), 86);
    z.writeUInt32LE(Math.min(cdSize, U32), 88);
    z.writeUInt32LE(Math.min(cdStart, U32), 92);
    await this.sink.write(z);
    return this.pos;
  }
}
