/** Helpers for the convert tests: tensor dumps, synthetic checkpoints, in-process CLI runs. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openStore } from '../src/store/registry.js';
import { writeCheckpoint, bufferSource } from '../src/store/safetensors/writer.js';
import { main } from '../src/cli/index.js';

export { FIXTURES, fixtureNames, tempDir } from './helpers.js';

export interface Dumped {
  dtype: string;
  shape: number[];
  bytes: Buffer;
}

/** Every tensor of a checkpoint, by name (fixtures are tiny). */
export async function dump(path: string): Promise<Map<string, Dumped>> {
  const ck = await openStore(path);
  try {
    const out = new Map<string, Dumped>();
    for (const t of ck.tensors.values()) out.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: Buffer.from(await ck.read(t)) });
    return out;
  } finally {
    await ck.close();
  }
}

/** Differences between two dumps, as readable lines (empty = byte-identical per tensor). */
export function diff(a: Map<string, Dumped>, b: Map<string, Dumped>): string[] {
  const out: string[] = [];
  for (const [n, x] of a) {
    const y = b.get(n);
    if (!y) out.push(`missing ${n}`);
    else if (x.dtype !== y.dtype || JSON.stringify(x.shape) !== JSON.stringify(y.shape))
      out.push(`${n}: ${x.dtype}${JSON.stringify(x.shape)} vs ${y.dtype}${JSON.stringify(y.shape)}`);
    else if (!x.bytes.equals(y.bytes)) out.push(`${n}: bytes differ`);
  }
  for (const n of b.keys()) if (!a.has(n)) out.push(`extra ${n}`);
  return out;
}

/** Run the CLI in this process; returns exit code and captured output. */
export async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((s: string | Uint8Array) => {
    stdout += String(s);
    return true;
  }) as typeof process.stdout.write;
  process.stderr.write = ((s: string | Uint8Array) => {
    stderr += String(s);
    return true;
  }) as typeof process.stderr.write;
  const prevExit = process.exitCode;
  try {
    const code = await main(['node', 'moekit', ...args]);
    return { code, stdout, stderr };
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
    process.exitCode = prevExit;
  }
}

/** Deterministic pseudo-random f32 bytes. */
function randF32(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n * 4);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    b.writeFloatLE((s / 0xffffffff - 0.5) * 0.2, i * 4);
  }
  return b;
}

/** Write a synthetic checkpoint: tensors given by name → shape (random f32), plus config.json. */
export async function synth(dir: string, config: Record<string, unknown>, tensors: Record<string, number[]>): Promise<void> {
  let seed = 1;
  await writeCheckpoint(
    dir,
    Object.entries(tensors).map(([name, shape]) => ({
      name,
      dtype: 'F32' as const,
      shape,
      source: bufferSource(
        randF32(
          shape.reduce((a, b) => a * b, 1),
          seed++ * 7919,
        ),
      ),
    })),
    { fsync: false },
  );
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
}
