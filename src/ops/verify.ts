/**
 * `moekit verify`: run every MLP block of a checkpoint on the WebGPU forward (or the CPU
 * reference) and compare, layer by layer, with a reference file of transformers outputs or with
 * a second checkpoint fed the same tokens. The layer loader is a parameter, so any layout that
 * can be turned into MoeBlockWeights can be verified.
 */
import { MoekitError } from '../errors.js';
import { gaussian } from './random.js';
import { coverage, coverageFails, type Coverage } from './coverage.js';
import type { TensorStore } from '../store/types.js';
import { openStore } from '../store/registry.js';
import { toFloat32 } from '../engine/cast.js';
import { layerSource, type LoadedLayer } from '../forward/ir-loader.js';
import { forwardFast } from '../forward/cpu-fast.js';
import { cpuThreads } from '../forward/wasm-pool.js';
import { compare, routeAll, type ForwardResult, type Routed } from '../forward/cpu.js';
import { kernelRoutes } from '../forward/routing.js';
import { withBlockNorms } from '../forward/block-norms.js';
import { familyFacts } from '../families/index.js';
import { blockIs16Bit, materialize } from '../forward/weights.js';
import { checkpointConfig } from '../engine/read.js';
import { isSharded } from './shard/sharded.js';
import { dequantized } from './dequant.js';
import { DequantStore } from '../store/dequant.js';
import { openWrapped } from '../store/derived.js';
import { openShardedForVerify, type VerifySide } from './shard/verify-loader.js';

export interface VerifyOptions {
  reference?: string;
  tokens?: number;
  seed?: number;
  layers?: number[];
  atol?: number;
  rtol?: number;
  cpu?: boolean;
  /** a missing WebGPU adapter is an error instead of a fall back to the CPU forward */
  gpu?: boolean;
  /** test hook: pretend GPU bindings are at most this large */
  maxBinding?: number;
  /** memory budget (bytes): the weight pieces streamed through the forward and the tensor reads shrink to fit it */
  maxMemory?: number;
  onProgress?: (msg: string) => void;
}

export interface LayerResult {
  layer: number;
  kind: 'moe' | 'dense';
  maxAbs: number;
  maxRel: number;
  /** experts that received at least one token (of `a`), and how many there are */
  expertsHit: number;
  experts: number;
  pass: boolean;
  /**
   * sides of different precision: compared under the higher-precision side's expert selection;
   * these tokens would select other experts in the lower-precision side (near-ties), with the
   * smallest selection-score margin among them
   */
  flips?: { tokens: number[]; minMargin: number | null };
}

export interface VerifyReport {
  a: string;
  b?: string;
  reference?: string;
  backend: 'webgpu' | 'cpu';
  adapter?: string;
  /** why the CPU forward ran although the GPU was asked for (no adapter) */
  fallback?: string;
  /** worker threads of the CPU forward (backend 'cpu') */
  cpuThreads?: number;
  tokens: number;
  atol: number;
  rtol: number;
  layers: LayerResult[];
  /** MLP layers of `a` not checked (no reference output for them, or left out by --layers) */
  unchecked: number[];
  /** why they were not */
  uncheckedWhy?: string;
  /** every other tensor: byte-identical, differing, one-sided, NaN / Inf, checksums */
  coverage: Coverage;
  /** no difference found (exit 0 when also nothing is unchecked, 3 when something is) */
  pass: boolean;
}

/** Parse "1,3-5" into [1, 3, 4, 5]. */
export function parseLayers(s: string): number[] {
  const out = new Set<number>();
  for (const part of s.split(',').map((p) => p.trim())) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new MoekitError('usage', `--layers: '${part}' is not a layer number or range (e.g. 1,3-5)`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new MoekitError('usage', `--layers: range '${part}' is backwards`);
    for (let i = a; i <= b; i++) out.add(i);
  }
  return [...out].sort((x, y) => x - y);
}

/** Seeded N(0, 1) tokens, so `verify a b` feeds both sides the same input. */
export function randomTokens(T: number, H: number, seed: number): Float32Array {
  return gaussian(T * H, seed);
}

async function configOf(ck: TensorStore, path: string): Promise<Record<string, unknown>> {
  const c = await checkpointConfig(ck);
  if (!c)
    throw new MoekitError(
      'bad-input',
      `${path}: no config.json next to the checkpoint (verify needs the model's routing facts; --hf-config <config.json> names one)`,
    );
  return c;
}

type Forward = (l: LoadedLayer, x: Float32Array, T: number, forced?: Routed) => Promise<ForwardResult>;

/**
 * What verify holds beside its weight pieces, measured on a 1.7 GB bf16 Mixtral-shaped pair (2
 * cores): the CPU forward (node, the WebAssembly pool, activations, reads) about 150 MiB; WebGPU on
 * a CPU adapter (Dawn with lavapipe, whose "GPU" buffers and compiled shaders are host memory) about
 * 330 MiB even with 4 MiB pieces; a real GPU keeps only its uploads in flight in host memory.
 */
const BASE_MIB = { cpu: 150, 'cpu-adapter': 330, gpu: 200 } as const;
const MIB = 2 ** 20;

/**
 * Weight pieces (CPU ring chunks, GPU upload pieces) alive at once in host memory: about six for the
 * CPU forward and a CPU adapter (the CPU ring of 3 and its reads ahead; on a CPU adapter two uploads in
 * flight and Dawn's staging copies of them), eight on a real GPU (its eight mapped staging slots, each
 * at most a piece: src/gpu/moe.ts staging()).
 */
const PIECES_ALIVE = { cpu: 6, 'cpu-adapter': 6, gpu: 8 } as const;
/** The least --max-memory (MiB) a backend runs in: its base and 1 MiB pieces. */
const leastMib = (backend: keyof typeof BASE_MIB) => BASE_MIB[backend] + PIECES_ALIVE[backend];

/** The weight piece that keeps `backend` under `--max-memory`. Undefined: the budget cannot hold that backend. */
function pieceFor(maxMemory: number, backend: keyof typeof BASE_MIB): number | undefined {
  const piece = Math.min(backend === 'gpu' ? 128 * MIB : 32 * MIB, Math.floor((maxMemory - BASE_MIB[backend] * MIB) / PIECES_ALIVE[backend] / MIB) * MIB);
  return piece >= MIB ? piece : undefined;
}

/** The CPU forward's piece under `--max-memory`, or the one-line refusal of a budget below what verify needs at all. */
function cpuPiece(maxMemory: number | undefined): number | undefined {
  if (maxMemory === undefined) return undefined;
  const p = pieceFor(maxMemory, 'cpu');
  if (p === undefined)
    throw new MoekitError(
      'usage',
      `--max-memory ${Math.round(maxMemory / MIB)} MiB is below what verify needs (about ${leastMib('cpu')} MiB with the CPU forward)`,
    );
  return p;
}

/** The forward to run: the CPU reference, or WebGPU (and its adapter's name). */
async function makeForward(opts: VerifyOptions, progress: (m: string) => void): Promise<{ forward: Forward; adapter?: string; fallback?: string }> {
  const piece = cpuPiece(opts.maxMemory);
  const cpu: Forward = (l, x, T, forced) => withBlockNorms(l.weights, l.facts, x, T, forced, (w, xe, f) => forwardFast(w, l.facts, xe, T, f, piece));
  if (opts.cpu) return { forward: cpu };
  // a WebGPU device alone (Dawn, and lavapipe's host-memory "GPU") outgrows a small budget before any piece is sized
  if (opts.maxMemory !== undefined && opts.maxMemory < leastMib('cpu-adapter') * MIB && !opts.gpu) {
    const fallback = `--max-memory ${Math.round(opts.maxMemory / MIB)} MiB is below the ${leastMib('cpu-adapter')} MiB a WebGPU device may need: running the CPU forward instead (the same check)`;
    progress(fallback);
    return { forward: cpu, fallback };
  }
  const { getGpu } = await import('../gpu/device.js');
  let gpu: Awaited<ReturnType<typeof getGpu>>;
  try {
    gpu = await getGpu();
  } catch (e) {
    // no GPU, no failure: the CPU forward checks the same thing (--gpu makes a missing adapter an error)
    if (opts.gpu || !(e instanceof MoekitError) || e.code !== 'gpu') throw e;
    const fallback = `no WebGPU adapter, running the CPU forward instead (${e.message.split(';')[0]})`;
    progress(fallback);
    return { forward: cpu, fallback };
  }
  const adapter = gpu.adapterName;
  const backend = gpu.fallback ? 'cpu-adapter' : 'gpu';
  const gpuPiece = opts.maxMemory === undefined ? undefined : pieceFor(opts.maxMemory, backend);
  if (opts.maxMemory !== undefined && gpuPiece === undefined)
    throw new MoekitError(
      'usage',
      `--max-memory ${Math.round(opts.maxMemory / MIB)} MiB is below what WebGPU on ${adapter} needs (about ${leastMib(backend)} MiB); leave out --gpu to run the CPU forward`,
    );
  const { forwardGpu } = await import('../gpu/moe.js');
  progress(`WebGPU adapter: ${adapter}`);
  // routing rules the router kernel does not implement (PhiMoE's sparsemixer, DeepSeek-V2's max group score, DBRX's p-norm,
  // Gemma-4's router input norm and scales, ...) are routed on the CPU
  const route = async (l: LoadedLayer, x: Float32Array, T: number) =>
    kernelRoutes(l.facts.routing, l.weights) ? undefined : routeAll(await materialize(l.weights, false), l.facts, x, T);
  return {
    forward: async (l, x, T, forced) =>
      withBlockNorms(l.weights, l.facts, x, T, forced ?? (await route(l, x, T)), (w, xe, f) =>
        forwardGpu(w, l.facts, xe, T, { maxBinding: opts.maxBinding, forced: f, pieceBytes: gpuPiece }),
      ),
    adapter,
  };
}

/**
 * A side is a checkpoint in any layout, or a sharded checkpoint (moekit shard) whose forward gathers
 * the experts from its ranks. A quantized checkpoint is read dequantized to f32 (src/store/dequant.ts).
 */
async function openSide(path: string): Promise<VerifySide> {
  if (await isSharded(path)) return openShardedForVerify(path);
  const ck = await openWrapped(path, (inner) => dequantized(inner, 'F32'));
  try {
    const config = await configOf(ck, path);
    const src = await layerSource(ck, config);
    const q = ck instanceof DequantStore ? ck.scheme : undefined;
    const lossy = q?.method === 'fp8-block' ? new Set(q.groups.keys()) : undefined;
    const coverage = { others: src.others, all: [...ck.tensors.values()].map((info) => ({ store: ck, info })), lossy };
    return { config, layers: () => src.layers, load: (l, o) => src.load(l, o), coverage, close: () => ck.close(), quantized: q?.method };
  } catch (e) {
    await ck.close();
    throw e;
  }
}

/** The layers both sides (or the side and the reference) have, narrowed by --layers. */
function pickLayers(
  a: VerifySide,
  b: VerifySide | undefined,
  ref: TensorStore | undefined,
  names: { a: string; b?: string },
  only?: number[],
): { layers: number[]; unchecked: number[] } {
  const all = a.layers();
  let layers = all;
  if (b) {
    const lb = new Set(b.layers());
    const missing = layers.filter((l) => !lb.has(l));
    if (missing.length > 0 && !only) throw new MoekitError('unsupported', `${names.b} has no MLP block for layer(s) ${missing.join(', ')} that ${names.a} has`);
    layers = layers.filter((l) => lb.has(l));
  } else {
    layers = layers.filter((l) => ref!.has(`layers.${l}.output`));
  }
  if (only) {
    const have = new Set(layers);
    const bad = only.filter((l) => !have.has(l));
    if (bad.length > 0)
      throw new MoekitError('usage', `--layers: layer(s) ${bad.join(', ')} not available (verifiable layers: ${layers.join(', ') || 'none'})`);
    layers = only;
  }
  if (layers.length === 0)
    throw new MoekitError('unsupported', `${names.a}: no MLP layers to verify${ref ? ' (the reference has no layers.N.output matching them)' : ''}`);
  const checked = new Set(layers);
  return { layers, unchecked: all.filter((l) => !checked.has(l)) };
}

/** Input tokens: the reference's `input` when given (its first --tokens rows), else seeded random tokens. */
async function inputTokens(ref: TensorStore | undefined, opts: VerifyOptions, H: number): Promise<{ x: Float32Array; T: number }> {
  if (!ref) {
    const T = opts.tokens ?? 32;
    return { x: randomTokens(T, H, opts.seed ?? 0), T };
  }
  const info = ref.info('input');
  if (info.shape.length !== 2 || info.shape[1] !== H)
    throw new MoekitError('bad-input', `${opts.reference}: input has shape [${info.shape}], expected [T, ${H}]`);
  const x = toFloat32(await ref.read(info), info.dtype as 'F32');
  const T = opts.tokens !== undefined && opts.tokens < info.shape[0]! ? opts.tokens : info.shape[0]!;
  return { x: x.subarray(0, T * H), T };
}

interface Checked {
  result: LayerResult;
  sixteen: boolean;
}

/** Tokens whose expert set differs between two routings, with the higher-precision side's margin. */
function flipsOf(high: Routed, low: Routed): NonNullable<LayerResult['flips']> {
  const tokens: number[] = [];
  let minMargin = Infinity;
  for (let t = 0; t < high.margin.length; t++) {
    const a = new Set(high.ids.subarray(t * high.K, (t + 1) * high.K));
    if (low.ids.subarray(t * low.K, (t + 1) * low.K).some((id) => !a.has(id))) {
      tokens.push(t);
      minMargin = Math.min(minMargin, high.margin[t]!);
    }
  }
  return { tokens, minMargin: tokens.length ? minMargin : null };
}

/**
 * Default rtol: 1e-4 for f32, 2e-2 when a side has 16-bit weights, 0.1 when exactly one side is held
 * in a lossy quantized format (block FP8, NVFP4, int4; MXFP4 → bf16 is exact) and the other is not.
 */
function defaultRtol(a: VerifySide, b: VerifySide | undefined, sixteen: boolean): number {
  const lossy = (m?: string) => m !== undefined && m !== 'mxfp4';
  if (b && a.quantized !== b.quantized && (lossy(a.quantized) || lossy(b.quantized))) return 0.1;
  return sixteen ? 2e-2 : 1e-4;
}

/** Run layer `l` of `a` and compare it with `b` (fed the same tokens) or the reference output. */
async function checkLayer(
  l: number,
  a: VerifySide,
  b: VerifySide | undefined,
  ref: TensorStore | undefined,
  run: { forward: Forward; x: Float32Array; T: number; opts: VerifyOptions },
): Promise<Checked> {
  const { forward, x, T, opts } = run;
  // Both forwards stream expert matrices from disk.
  const la = await a.load(l, { lazy: true });
  let ra = await forward(la, x, T);
  let want: Float32Array;
  let got = ra.out;
  let sixteen = blockIs16Bit(la.weights);
  let flips: LayerResult['flips'];
  if (b) {
    const lb = await b.load(l, { lazy: true });
    if (lb.weights.hidden !== la.weights.hidden)
      throw new MoekitError('unsupported', `layer ${l}: hidden sizes differ (${la.weights.hidden} vs ${lb.weights.hidden})`);
    const sixteenB = blockIs16Bit(lb.weights);
    const mixed = sixteen !== sixteenB && la.kind === 'moe' && lb.kind === 'moe';
    sixteen ||= sixteenB;
    if (mixed) {
      // different precisions: both sides run the higher-precision side's selection, and the tokens
      // the lower one would route elsewhere (near-ties) are reported, not counted as a difference
      const [high, low] = sixteenB ? [la, lb] : [lb, la];
      const hr = routeAll(await materialize(high.weights, false), high.facts, x, T)!;
      const lr = routeAll(await materialize(low.weights, false), low.facts, x, T)!;
      flips = flipsOf(hr, lr);
      ra = await forward(la, x, T, hr);
      want = ra.out;
      got = (await forward(lb, x, T, hr)).out;
    } else {
      // Both sides are computed the same way; `a` is the reference of the relative error.
      want = ra.out;
      const rb = await forward(lb, x, T);
      got = rb.out;
      if (la.kind === 'dense') ra.expertCounts = rb.expertCounts; // a dense model against its upcycled MoE: report b's experts
    }
  } else {
    const info = ref!.info(`layers.${l}.output`);
    want = toFloat32(await ref!.read(info), info.dtype as 'F32').subarray(0, T * la.weights.hidden);
  }
  const rtol = opts.rtol ?? defaultRtol(a, b, sixteen);
  const c = compare(got, want);
  return {
    sixteen,
    result: {
      layer: l,
      kind: la.kind,
      maxAbs: c.maxAbs,
      maxRel: c.maxRel,
      expertsHit: ra.expertCounts.filter((n) => n > 0).length,
      experts: ra.expertCounts.length,
      pass: Number.isFinite(c.maxAbs) && c.maxAbs <= (opts.atol ?? 0) + rtol * c.refMax,
      ...(flips ? { flips } : {}),
    },
  };
}

export async function verify(aPath: string, bPath: string | undefined, opts: VerifyOptions = {}): Promise<VerifyReport> {
  if (!bPath && !opts.reference) throw new MoekitError('usage', 'verify needs a second checkpoint <b> or --reference <file>');
  const progress = opts.onProgress ?? (() => {});
  const { forward, adapter, fallback } = await makeForward(opts, progress);
  const a = await openSide(aPath);
  let b: VerifySide | undefined;
  let ref: TensorStore | undefined;
  try {
    b = bPath ? await openSide(bPath) : undefined;
    ref = opts.reference ? await openStore(opts.reference) : undefined;
    const { layers, unchecked } = pickLayers(a, b, ref, { a: aPath, b: bPath }, opts.layers);
    const H = familyFacts(a.config).hiddenSize;
    const { x, T } = await inputTokens(ref, opts, H);
    const results: LayerResult[] = [];
    let any16 = false;
    for (const [i, l] of layers.entries()) {
      progress(`layer ${l} (${i + 1}/${layers.length})`);
      const c = await checkLayer(l, a, b, ref, { forward, x, T, opts });
      any16 ||= c.sixteen;
      results.push(c.result);
    }
    const cov = await coverage(a.coverage, b?.coverage, progress);
    return {
      a: aPath,
      b: bPath,
      reference: opts.reference,
      backend: opts.cpu || fallback ? 'cpu' : 'webgpu',
      cpuThreads: opts.cpu || fallback ? cpuThreads() : undefined,
      adapter,
      ...(fallback ? { fallback } : {}),
      tokens: T,
      atol: opts.atol ?? 0,
      rtol: opts.rtol ?? defaultRtol(a, b, any16),
      layers: results,
      unchecked,
      ...(unchecked.length ? { uncheckedWhy: opts.layers ? 'left out by --layers' : 'no reference output' } : {}),
      coverage: cov,
      pass: results.every((r) => r.pass) && !coverageFails(cov),
    };
  } finally {
    await a.close();
    await b?.close();
    await ref?.close();
    // the staging and piece buffers the GPU forward kept between layers (a library caller's process goes on)
    if (adapter !== undefined) (await import('../gpu/moe.js')).releaseGpuBuffers();
  }
}

const e = (v: number) => (Number.isFinite(v) ? v.toExponential(2) : String(v));

export function formatReport(r: VerifyReport): string {
  const lines = [
    `verify ${r.a} against ${r.b ?? r.reference}`,
    `backend: ${r.backend === 'cpu' ? `CPU (WebAssembly SIMD, ${r.cpuThreads} threads)${r.fallback ? ': no WebGPU adapter' : ''}` : `WebGPU, adapter ${r.adapter}`}; ${r.tokens} tokens; rtol ${r.rtol}, atol ${r.atol}`,
    '',
    'layer  kind   max abs err  max rel err  experts hit  result',
  ];
  for (const l of r.layers) {
    const hit = l.experts > 0 ? `${l.expertsHit}/${l.experts}` : '-';
    lines.push(
      `${String(l.layer).padStart(5)}  ${l.kind.padEnd(5)}  ${e(l.maxAbs).padStart(11)}  ${e(l.maxRel).padStart(11)}  ${hit.padStart(11)}  ${l.pass ? 'pass' : 'FAIL'}`,
    );
  }
  for (const l of r.layers) {
    if (!l.flips?.tokens.length) continue;
    lines.push(
      `layer ${l.layer}: compared under the higher-precision side's expert selection; ${l.flips.tokens.length} token(s) would select other experts at the lower precision (near-ties, smallest margin ${e(l.flips.minMargin!)})`,
    );
  }
  const c = r.coverage;
  for (const d of c.differ) lines.push(`DIFFERS  a:${d.name} ${d.a}  ↔  b:${d.name} ${d.b}`);
  for (const o of c.onlyIn) lines.push(`MISSING  ${o.name}: only in ${o.side === 'a' ? r.a : r.b}`);
  for (const x of c.nonFinite) lines.push(`NaN/Inf  ${x.name} (${x.side === 'a' ? r.a : r.b}): ${x.count} element(s)`);
  if (c.checksums) lines.push(`CHECKSUM ${c.checksums}`);
  if (r.unchecked.length) lines.push(`not checked: layer(s) ${r.unchecked.join(', ')} (${r.uncheckedWhy})`);
  const moe = r.layers.filter((l) => l.pass && l.kind === 'moe').length;
  const dense = r.layers.filter((l) => l.pass && l.kind === 'dense').length;
  const bad = r.layers.filter((l) => !l.pass).length;
  const proven = `${moe} MoE block(s)${dense ? ` and ${dense} dense block(s)` : ''} forward-equal, ${c.identical} tensor(s) byte-identical${c.withinFp8 ? `, ${c.withinFp8} within FP8 precision` : ''}${c.notCompared ? `, ${c.notCompared} outside the blocks scanned only (no other side)` : ''}, ${r.unchecked.length} layer(s) unchecked`;
  const problems = bad + c.differ.length + c.onlyIn.length + c.nonFinite.length + (c.checksums ? 1 : 0);
  lines.push(
    '',
    problems === 0
      ? proven
      : `FAIL: ${bad} layer(s), ${c.differ.length} differing, ${c.onlyIn.length} one-sided, ${c.nonFinite.length} NaN/Inf tensor(s)${c.checksums ? ', a checksum mismatch' : ''}; ${proven}`,
  );
  return lines.join('\n');
}
