/**
 * Expert-kernel tuning: one in-memory synthetic bf16 MoE block (Mixtral-8x7B shape by default),
 * run through forwardGpu with each kernel configuration given on the command line, reporting the
 * summed kernel GPU time (timestamp queries) and the max relative difference of the
 * output from the first configuration's.
 *   node dist/bench/kernel-tune.js [--hidden H --inter I --tokens T] gpu stream stream:16:16,4 cpu
 * A configuration is variant[:up shape:down shape] (MOEKIT_GPU_KERNELS, MOEKIT_UP_CFG,
 * MOEKIT_DOWN_CFG): stream:KL[,S,RW,C]:KL[,S,RW,C] (lanes along K; K splits of the down projection;
 * RW rows (up) or row pairs (down) per invocation, 1 or 2; C workgroups per row block taking every
 * C-th chunk of 16 tokens), gpu:KL,RW,MT:KL,RW,MT, cpu. MOEKIT_GPU_PIECE_MIB sets the largest piece
 * one dispatch covers (default 1024 on a GPU).
 * --sync waits for each piece's upload before its kernel (kernel time without upload overlap).
 * --repeat N runs each expert dispatch N times back to back on its resident piece and counts the
 * median (default 64). --runs N forwards (default 1; the best counts; each printed as kernel ms /
 * wall ms). On an H100 only this is repeatable: the median of 64 in a process's first forward
 * moved ±5% from process to process, a single run per dispatch 2–4×, and later forwards in one
 * process 1–2× (the up kernel 2.0–3.8 ms); so compare shapes one per process (kernel-ab.sh).
 */
import { forwardGpu } from '../src/gpu/moe.js';
import { randomTokens } from '../src/ops/verify.js';
import { f32BitsToBf16, f32ToBits } from '../src/engine/cast.js';
import type { MoeBlockWeights } from '../src/forward/weights.js';

const args = process.argv.slice(2);
const num = (k: string, d: number) => {
  const i = args.indexOf(k);
  if (i < 0) return d;
  const v = Number(args[i + 1]);
  args.splice(i, 2);
  return v;
};
const H = num('--hidden', 4096);
const I = num('--inter', 14336);
const E = num('--experts', 8);
const K = num('--topk', 2);
const T = num('--tokens', 64);
const repeats = num('--repeat', 64);
const runs = num('--runs', 1);
const sync = args.includes('--sync');
if (sync) args.splice(args.indexOf('--sync'), 1);
const configs = args.length > 0 ? args : ['gpu', 'stream', 'cpu'];

const tileN = 1 << 20;
const tile = (scale: number, seed: number) => {
  const x = randomTokens(1, tileN, seed);
  const o = new Uint16Array(tileN);
  for (let i = 0; i < tileN; i++) o[i] = f32BitsToBf16(f32ToBits(x[i]! * scale));
  return o;
};
const tH = tile(1 / Math.sqrt(H), 1);
const tI = tile(1 / Math.sqrt(I), 2);
const W = (shape: number[], t: Uint16Array, off: number) => {
  const n = shape.reduce((a, b) => a * b, 1);
  const o = new Uint16Array(n);
  for (let i = 0; i < n; i += tileN) o.set(t.subarray(0, Math.min(tileN, n - i)), i);
  o[off % n] = o[off % n]! ^ 1;
  return { dtype: 'BF16' as const, shape, data: new Uint8Array(o.buffer) };
};
const block: MoeBlockWeights = {
  hidden: H,
  router: { weight: W([E, H], tH, 7) },
  experts: Array.from({ length: E }, (_, e) => ({ gate: W([I, H], tH, 3 * e), up: W([I, H], tH, 3 * e + 1), down: W([H, I], tI, 3 * e + 2) })),
  shared: [],
};
const spec = {
  routing: {
    scoreFunc: 'softmax' as const,
    topK: K,
    nGroup: 1,
    topkGroup: 1,
    normTopkProb: true,
    routedScalingFactor: 1,
    correctionBias: false,
    routerBias: false,
  },
  activation: { kind: 'swiglu' as const },
};
const x = randomTokens(T, H, 42);
const gflop = (T * K * 6 * H * I + 2 * T * E * H) / 1e9;
let ref: Float32Array | undefined;
for (const c of configs) {
  const [v, up, down] = c.split(':');
  process.env.MOEKIT_GPU_KERNELS = v;
  for (const [k, val] of [
    ['MOEKIT_UP_CFG', up],
    ['MOEKIT_DOWN_CFG', down],
  ] as const) {
    if (val) process.env[k] = val;
    else delete process.env[k];
  }
  let best = Infinity;
  let by = '';
  let out: Float32Array | undefined;
  const all: string[] = [];
  for (let rep = 0; rep < runs; rep++) {
    const t0 = performance.now();
    const r = await forwardGpu(block, spec, x, T, { timing: true, syncUploads: sync, kernelRepeats: repeats });
    all.push(`${(r.kernelMs ?? NaN).toFixed(2)}/${(performance.now() - t0).toFixed(0)}`);
    if ((r.kernelMs ?? NaN) < best) {
      best = r.kernelMs!;
      by = Object.entries(r.kernelMsBy ?? {})
        .map(([k, v]) => `${k} ${v.toFixed(2)}`)
        .join(', ');
    }
    out = r.out;
  }
  let maxAbs = 0;
  let refMax = 0;
  if (ref) {
    for (let i = 0; i < ref.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(out![i]! - ref[i]!));
      refMax = Math.max(refMax, Math.abs(ref[i]!));
    }
  } else ref = out;
  console.log(
    `${c.padEnd(14)} kernels ${best.toFixed(2)} ms  ${(gflop / (best / 1e3)).toFixed(0)} GFLOP/s  max rel vs first ${(refMax ? maxAbs / refMax : 0).toExponential(2)}  (${by}) runs ${all.join(' ')}`,
  );
}
process.exit(0);
