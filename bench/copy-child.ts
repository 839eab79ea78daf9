import { openStore } from '../src/store/registry.js';
import { writeCheckpoint } from '../src/store/safetensors/writer.js';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';

const [src, dst, fsync] = process.argv.slice(2) as [string, string, string];
const ck = await openStore(src);
const res = await writeCheckpoint(
  dst,
  [...ck.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, source: () => ck.chunks(t) })),
  { maxShardSize: 1 << 30, metadata: ck.metadata, fsync: fsync !== 'nofsync' },
);
await copyFile(join(src, 'config.json'), join(dst, 'config.json'));
await ck.close();
console.log(JSON.stringify({ bytes: res.totalSize, maxRssMB: process.resourceUsage().maxRSS / 1024 }));
