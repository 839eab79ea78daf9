/**
 * Runs one fuzz case's operations in a worker thread (so the parent can time it out, and a runaway
 * allocation kills only the worker) and reports each outcome: ok, refused (a MoekitError: its
 * code and line) or crash (anything else, with its stack). A successful convert is converted back
 * and compared tensor by tensor with its input; a successful merge with the original checkpoint.
 */
import { parentPort } from 'node:worker_threads';
import { join } from 'node:path';
import { MoekitError } from '../src/errors.js';
import { openStore } from '../src/store/registry.js';
import { inspect } from '../src/ops/inspect.js';
import { convert } from '../src/ops/convert.js';
import { merge } from '../src/ops/shard/merge.js';
import { reshard } from '../src/ops/shard/shard.js';
import { verify } from '../src/ops/verify.js';

export type Op =
  | { op: 'inspect'; path: string }
  | { op: 'convert'; path: string; to: string; back: string }
  | { op: 'verify'; path: string; reference: string }
  | { op: 'merge'; path: string; expect: string }
  | { op: 'reshard'; path: string; ep: number };

export interface Outcome {
  op: string;
  result: 'ok' | 'refused' | 'crash' | 'wrong';
  code?: string;
  message?: string;
}

/** Every tensor of a checkpoint as name → hex digest of its bytes. */
async function tensorsOf(path: string): Promise<Map<string, string>> {
  const { createHash } = await import('node:crypto');
  const ck = await openStore(path);
  try {
    const m = new Map<string, string>();
    for (const t of ck.tensors.values())
      m.set(
        t.name,
        `${t.dtype}${JSON.stringify(t.shape)}:${createHash('sha1')
          .update(await ck.read(t))
          .digest('hex')}`,
      );
    return m;
  } finally {
    await ck.close();
  }
}

function sameTensors(a: Map<string, string>, b: Map<string, string>): string | undefined {
  for (const [n, h] of a) if (b.get(n) !== h) return `tensor '${n}' differs after the round trip`;
  for (const n of b.keys()) if (!a.has(n)) return `extra tensor '${n}'`;
  return undefined;
}

const fast = { fsync: false, jobs: 2 };

async function run(o: Op, out: string): Promise<string | undefined> {
  switch (o.op) {
    case 'inspect':
      await inspect(o.path);
      return;
    case 'convert': {
      await convert(o.path, out, { to: o.to, ...fast });
      try {
        await convert(out, `${out}-back`, { to: o.back, ...fast });
      } catch (e) {
        // metadata that allows the way there but not back (an unknown family has no HF layout)
        if (e instanceof MoekitError && e.code === 'unsupported') return 'one-way';
        throw e;
      }
      return sameTensors(await tensorsOf(o.path), await tensorsOf(`${out}-back`));
    }
    case 'verify':
      await verify(o.path, undefined, { reference: o.reference, cpu: true });
      return;
    case 'merge':
      await merge(o.path, out, fast);
      return sameTensors(await tensorsOf(o.expect), await tensorsOf(out));
    case 'reshard':
      await reshard(o.path, out, { ep: o.ep, ...fast });
      return;
  }
}

parentPort!.on('message', async (msg: { id: number; ops: Op[]; dir: string }) => {
  const outcomes: Outcome[] = [];
  for (const [i, o] of msg.ops.entries()) {
    try {
      const r = await run(o, join(msg.dir, `out-${i}`));
      if (r === 'one-way') outcomes.push({ op: o.op, result: 'ok', message: 'converted, but refused the way back' });
      else outcomes.push(r ? { op: o.op, result: 'wrong', message: r } : { op: o.op, result: 'ok' });
    } catch (e) {
      if (e instanceof MoekitError) outcomes.push({ op: o.op, result: 'refused', code: e.code, message: e.message });
      else outcomes.push({ op: o.op, result: 'crash', message: (e as Error)?.stack ?? String(e) });
    }
  }
  parentPort!.postMessage({ id: msg.id, outcomes });
});
