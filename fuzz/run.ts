/**
 * `npm run fuzz [-- --cases N --seed S --case K --timeout MS --mem MB]`: seeded, replayable fuzzing
 * of every input kind moekit reads (safetensors headers and bodies, torch.save zips, DCP / Megatron
 * metadata and items, index.json, config.json,
 * moekit.json, shard and rank manifests), each case run through inspect / convert / verify /
 * merge / reshard in a worker thread with a per-case timeout and a memory cap.
 *
 * The oracle: success must be correct (a convert converts back bit-identically, a merge gives back
 * the original tensors); failure must be a MoekitError of one short line; never a crash (any other
 * exception), a hang, an allocation over the cap, or anything left behind (temp folders, locks,
 * destinations of failed runs). Prints the counts and, for each bad case, the command that replays it.
 */
import { Worker } from 'node:worker_threads';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { convert } from '../src/ops/convert.js';
import { shard } from '../src/ops/shard/shard.js';
import { mutateBytes, mutateHeader, mutateJson, mutateZip, pick, rng, type Rng } from './mutate.js';
import type { Op, Outcome } from './worker.js';

interface Args {
  cases: number;
  seed: number;
  only?: number;
  timeout: number;
  mem: number;
}

function args(argv: string[]): Args {
  const a: Args = { cases: 500, seed: 1, timeout: 20_000, mem: 1536 };
  for (let i = 0; i < argv.length; i += 2) {
    const v = Number(argv[i + 1]);
    if (!Number.isFinite(v)) throw new Error(`fuzz: ${argv[i]} needs a number`);
    if (argv[i] === '--cases') a.cases = v;
    else if (argv[i] === '--seed') a.seed = v;
    else if (argv[i] === '--case') a.only = v;
    else if (argv[i] === '--timeout') a.timeout = v;
    else if (argv[i] === '--mem') a.mem = v;
    else throw new Error(`fuzz: unknown flag ${argv[i]}`);
  }
  return a;
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const FIX = join(ROOT, 'fixtures', 'hf');
const TORCH = join(ROOT, 'fixtures', 'torch');

/** PyTorch containers: fixture folder, the file to damage in it, and how */
const TORCH_KINDS: Record<string, { from: string; file: string; mutate: (r: Rng, b: Buffer) => Buffer; ref: string; back?: string }> = {
  'torch-zip': { from: 'hf_bin_mixtral', file: 'pytorch_model.bin', mutate: mutateZip, ref: 'hf_bin_mixtral' },
  'dcp-metadata': { from: 'dcp_qwen3_moe', file: 'checkpoint/.metadata', mutate: mutateBytes, ref: 'dcp_qwen3_moe', back: 'hf-fused' },
  'dcp-item': { from: 'dcp_qwen3_moe', file: 'checkpoint/__0_0.distcp', mutate: mutateZip, ref: 'dcp_qwen3_moe', back: 'hf-fused' },
  'mcore-metadata': { from: 'mcore_torch_dist_plain_ep2', file: 'iter_0000001/.metadata', mutate: mutateBytes, ref: 'mcore_torch_dist_plain' },
  'mcore-legacy': { from: 'mcore_legacy_plain_ep2', file: 'iter_0000001/mp_rank_00_001/model_optim_rng.pt', mutate: mutateZip, ref: 'mcore_torch_dist_plain' },
};
const fast = { fsync: false, jobs: 2 };

/** The unmutated inputs every case starts from. */
async function bases(work: string): Promise<Record<string, string>> {
  const b = { hf: join(work, 'hf'), index: join(work, 'index'), te: join(work, 'te'), sharded: join(work, 'sharded') };
  cpSync(join(FIX, 'mixtral'), b.hf, { recursive: true });
  await convert(join(FIX, 'deepseek_v3'), b.index, { to: 'hf', maxShardSize: 60_000, ...fast });
  await convert(join(FIX, 'mixtral'), b.te, { to: 'te', ...fast });
  await shard(join(FIX, 'mixtral'), b.sharded, { ep: 2, ...fast });
  return b;
}

interface Case {
  kind: string;
  ops: Op[];
}

const editJsonFile = (r: Rng, path: string, dropDigest: boolean) => {
  const j = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  if (dropDigest && r() < 0.7) delete j.digest; // else the digest refuses every edit
  writeFileSync(path, JSON.stringify(mutateJson(r, j)));
};

/** Build case `k`: copy a base, mutate one input, and name the operations to run on it. */
function makeCase(r: Rng, b: Record<string, string>, dir: string): Case {
  const kind = pick(r, [
    'st-header',
    'st-bytes',
    'index',
    'index-shard',
    'config',
    'moekit',
    'manifest',
    'rank-manifest',
    'rank-moekit',
    'rank-bytes',
    ...Object.keys(TORCH_KINDS),
  ]);
  const tk = TORCH_KINDS[kind];
  if (tk) {
    const src = join(dir, 'in');
    cpSync(join(TORCH, tk.from), src, { recursive: true });
    const f = join(src, tk.file);
    writeFileSync(f, tk.mutate(r, readFileSync(f)));
    return {
      kind,
      ops: [
        { op: 'inspect', path: src },
        { op: 'convert', path: src, to: pick(r, ['te', 'nemo', 'megatron-grouped']), back: tk.back ?? 'hf' },
        { op: 'verify', path: src, reference: join(TORCH, tk.ref, 'reference.safetensors') },
      ],
    };
  }
  const from = kind.startsWith('st') || kind === 'config' ? b.hf! : kind.startsWith('index') ? b.index! : kind === 'moekit' ? b.te! : b.sharded!;
  const src = join(dir, 'in');
  cpSync(from, src, { recursive: true });
  const file = (name: string) => join(src, name);
  const ref = join(FIX, kind.startsWith('index') ? 'deepseek_v3' : 'mixtral', 'reference.safetensors');
  const hfOps = (back: string): Op[] => [
    { op: 'inspect', path: src },
    { op: 'convert', path: src, to: pick(r, ['te', 'nemo', 'megatron-grouped', 'hf-fused']), back },
    { op: 'verify', path: src, reference: ref },
  ];
  const shardOps: Op[] = [
    { op: 'merge', path: src, expect: join(FIX, 'mixtral') },
    { op: 'reshard', path: src, ep: 4 },
    { op: 'verify', path: src, reference: ref },
  ];
  const shardFile = () =>
    file(
      pick(
        r,
        readdirSync(src).filter((f) => f.endsWith('.safetensors')),
      ),
    );
  switch (kind) {
    case 'st-header':
      writeFileSync(file('model.safetensors'), mutateHeader(r, readFileSync(file('model.safetensors'))));
      return { kind, ops: hfOps('hf') };
    case 'st-bytes':
      writeFileSync(file('model.safetensors'), mutateBytes(r, readFileSync(file('model.safetensors'))));
      return { kind, ops: hfOps('hf') };
    case 'index':
      editJsonFile(r, file('model.safetensors.index.json'), false);
      return { kind, ops: hfOps('hf') };
    case 'index-shard': {
      const f = shardFile();
      writeFileSync(f, r() < 0.5 ? mutateHeader(r, readFileSync(f)) : mutateBytes(r, readFileSync(f)));
      return { kind, ops: hfOps('hf') };
    }
    case 'config':
      editJsonFile(r, file('config.json'), false);
      return { kind, ops: hfOps('hf') };
    case 'moekit':
      editJsonFile(r, file('moekit.json'), true);
      return { kind, ops: hfOps('te') };
    case 'manifest':
      editJsonFile(r, file('moekit-manifest.json'), true);
      return { kind, ops: shardOps };
    case 'rank-manifest':
      editJsonFile(r, file(join(pick(r, ['ep0-of-2', 'ep1-of-2']), 'rank-manifest.json')), false);
      return { kind, ops: shardOps };
    case 'rank-moekit':
      editJsonFile(r, file(join(pick(r, ['ep0-of-2', 'ep1-of-2']), 'moekit.json')), true);
      return { kind, ops: shardOps };
    default: {
      const rank = join(src, pick(r, ['ep0-of-2', 'ep1-of-2']));
      const f = join(rank, readdirSync(rank).find((x) => x.endsWith('.safetensors'))!);
      writeFileSync(f, mutateBytes(r, readFileSync(f)));
      return { kind, ops: shardOps };
    }
  }
}

/** Anything a case left that it should not have: temp folders, locks, destinations of failed runs. */
function leftovers(dir: string, outcomes: Outcome[]): string[] {
  const ok = new Set(outcomes.flatMap((o, i) => (o.result === 'ok' ? [`out-${i}`, `out-${i}-back`] : [])));
  return readdirSync(dir).filter((n) => n !== 'in' && !ok.has(n));
}

class Runner {
  private w!: Worker;
  private pending?: { resolve: (o: Outcome[]) => void; reject: (e: Error) => void };
  constructor(private readonly mem: number) {
    this.start();
  }
  private start(): void {
    this.w = new Worker(new URL('./worker.js', import.meta.url), { resourceLimits: { maxOldGenerationSizeMb: this.mem } });
    this.w.on('message', (m: { outcomes: Outcome[] }) => this.pending?.resolve(m.outcomes));
    this.w.on('error', (e) => this.pending?.reject(e));
    this.w.on('exit', (code) => this.pending?.reject(new Error(`worker exited with ${code}`)));
  }
  async run(dir: string, ops: Op[], timeout: number): Promise<Outcome[] | 'hang' | string> {
    const done = new Promise<Outcome[]>((resolve, reject) => (this.pending = { resolve, reject }));
    this.w.postMessage({ id: 0, ops, dir });
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'hang'>((res) => (timer = setTimeout(() => res('hang'), timeout)));
    try {
      const r = await Promise.race([done, late]).catch((e: Error) => `worker died: ${e.message}`);
      if (typeof r === 'string') {
        this.pending = undefined;
        await this.w.terminate();
        this.start();
      }
      return r;
    } finally {
      clearTimeout(timer);
      this.pending = undefined;
    }
  }
  close(): Promise<number> {
    this.w.removeAllListeners('exit');
    return this.w.terminate();
  }
}

async function main(): Promise<void> {
  const a = args(process.argv.slice(2));
  const work = mkdtempSync(join(tmpdir(), 'moekit-fuzz-'));
  const b = await bases(join(work, 'base'));
  const runner = new Runner(a.mem);
  const counts = new Map<string, number>();
  const bad: string[] = [];
  const count = (k: string) => counts.set(k, (counts.get(k) ?? 0) + 1);
  const t0 = Date.now();
  const first = a.only ?? 0;
  const last = a.only ?? a.cases - 1;
  for (let k = first; k <= last; k++) {
    const dir = join(work, `case-${k}`);
    mkdirSync(dir);
    const r = rng(a.seed * 1_000_003 + k);
    const c = makeCase(r, b, dir);
    const res = await runner.run(dir, c.ops, a.timeout);
    const replay = `npm run fuzz -- --seed ${a.seed} --case ${k}   # ${c.kind}`;
    if (typeof res === 'string') {
      count(res === 'hang' ? 'hang' : 'over-cap or died');
      bad.push(`${res}: ${replay}`);
    } else {
      for (const o of res) {
        if (a.only !== undefined) console.log(`${c.kind} ${o.op}: ${o.result}${o.code ? ` (${o.code})` : ''} ${o.message ?? ''}`);
        count(o.result === 'refused' ? `refused (${o.code})` : o.result);
        if (o.result === 'crash' || o.result === 'wrong') bad.push(`${o.result} in ${o.op}: ${o.message?.split('\n').slice(0, 3).join(' | ')}: ${replay}`);
        if (o.result === 'refused' && (o.message!.length > 600 || o.message!.includes('\n'))) bad.push(`long error in ${o.op}: ${replay}`);
      }
      const left = leftovers(dir, res);
      if (left.length) {
        count('leftover');
        bad.push(`leftover ${left.join(', ')}: ${replay}`);
      }
    }
    const rss = process.memoryUsage().rss / 2 ** 20;
    if (rss > a.mem * 1.5) {
      count('over-cap');
      bad.push(`rss ${rss.toFixed(0)} MiB after: ${replay}`);
    }
    if (!a.only) rmSync(dir, { recursive: true, force: true });
  }
  await runner.close();
  const cases = last - first + 1;
  console.log(`fuzz: ${cases} cases (seed ${a.seed}) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  for (const [k, v] of [...counts].sort()) console.log(`  ${k.padEnd(28)} ${v}`);
  for (const x of bad.slice(0, 40)) console.log(`BAD ${x}`);
  console.log(`${bad.length === 0 ? 'fuzz: 0 crashes, 0 hangs, 0 over-cap, 0 leftovers, 0 wrong results' : `fuzz: ${bad.length} bad cases`}`);
  if (a.only === undefined) rmSync(work, { recursive: true, force: true });
  else console.log(`case folder kept: ${join(work, `case-${a.only}`)}`);
  process.exitCode = bad.length === 0 ? 0 : 1;
}

await main();
