/**
 * `moekit upcycle`: a dense checkpoint into an MoE checkpoint that computes the same function
 * (sparse upcycling, Komatsuzaki et al. 2022; Megatron-LM --moe-use-upcycling and
 * --moe-upcycling-granularity for the granularity's meaning).
 *
 * Each dense MLP down(act(gate(x)) ⊙ up(x)) is cut into G slices along I (gate/up rows, down
 * columns). S slices form the shared expert; each of the C copies holds the other R = G − S slices
 * as R routed experts whose router rows are tied, so a copy is selected whole (K is a multiple of
 * R; ties break toward the lower index, which keeps a copy's experts together). With renormalised
 * routing the K selected weights sum to 1 and are equal within a copy, so the routed part is
 * (1/R) · Σ_slices slice(x): every routed down projection is scaled by R. A Qwen2-MoE shared expert
 * is gated by sigmoid(0) = 1/2 (its gate weight is zero): its down projection is scaled by 2. The
 * expert views are slices of the dense tensors, so nothing is materialised that is not written.
 */
import { resolve } from 'node:path';
import { openStore } from '../store/registry.js';
import type { TensorStore } from '../store/types.js';
import type { FloatDtype } from '../store/dtypes.js';
import { MoekitError } from '../errors.js';
import { familyFacts, makeRouting, type FamilyFacts } from '../families/index.js';
import { View, type ExpertIR, type LayerIR, type ModelIR } from '../engine/ir.js';
import { detectLayout, loadMeta, moekitJson, readDenseMlps, resolveTarget, type DenseMlp, type UpcycleRecord } from '../engine/read.js';
import { describePlan, planBytes, planTensors, splitFiles, type Plan, type PlanOptions } from '../engine/plan.js';
import { scaleTransform } from '../engine/transforms.js';
import { executeCheckpoint } from '../engine/execute.js';
import { sideFilesOf, withOutput } from '../output/transaction.js';
import { cut, type ShardSummary } from './shard/shard.js';
import { gaussian } from './upcycle-router.js';
import { castFloat } from '../engine/cast.js';

export interface UpcycleOptions {
  experts: number;
  topK: number;
  granularity?: number;
  sharedExperts?: number;
  /** target family: mixtral, qwen3_moe, qwen2_moe (default: the one matching the source's attention) */
  family?: string;
  router?: 'random' | 'uniform';
  routerStd?: number;
  seed?: number;
  /** further dense checkpoints whose MLPs fill successive copies (not equivalence-preserving) */
  expertsFrom?: string[];
  /** layout to write (default: the target family's HF layout) */
  to?: string;
  /** write the expert-parallel form directly */
  ep?: number;
  etp?: number;
  dtype?: FloatDtype;
  maxShardSize?: number;
  jobs?: number;
  force?: boolean;
  fsync?: boolean;
  dryRun?: boolean;
  onProgress?: (bytes: number, totalBytes: number) => void;
}

export interface UpcycleSummary {
  source: string;
  destination: string;
  family: string;
  layout: string;
  experts: number;
  topK: number;
  granularity: number;
  sharedSlices: number;
  copies: number;
  equivalent: boolean;
  moeLayers: number;
  tensors: number;
  bytes: number;
  files: string[];
  warnings: string[];
  seconds: number;
  dryRun?: true;
  plan?: unknown;
  /** with --ep: the sharding written */
  shard?: ShardSummary;
}

/** Target families: their architecture, the attention-compatible source families, and what their MoE block holds. */
const TARGETS: Record<string, { architecture: string; from: readonly string[]; shared: boolean }> = {
  mixtral: { architecture: 'MixtralForCausalLM', from: ['llama', 'mistral'], shared: false },
  qwen3_moe: { architecture: 'Qwen3MoeForCausalLM', from: ['qwen3'], shared: false },
  qwen2_moe: { architecture: 'Qwen2MoeForCausalLM', from: ['qwen2'], shared: true },
};

const defaultFamily = (src: string): string => Object.entries(TARGETS).find(([, t]) => t.from.includes(src))?.[0] ?? 'mixtral';

interface Shape {
  E: number;
  K: number;
  G: number;
  S: number;
  /** routed slices per copy */
  R: number;
  C: number;
  I: number;
}

const divisors = (n: number) => Array.from({ length: n }, (_, i) => i + 1).filter((d) => n % d === 0);
const multiples = (r: number, upTo: number) => Array.from({ length: Math.max(1, Math.floor(upTo / r)) }, (_, i) => (i + 1) * r).slice(0, 6);

/** Check E, K, G, S against I and the target family; the error names the values that work. */
function shapeOf(opts: UpcycleOptions, I: number, target: string): Shape {
  const G = opts.granularity ?? 1;
  const S = opts.sharedExperts ?? 0;
  const { experts: E, topK: K } = opts;
  for (const [flag, v, min] of [
    ['--experts', E, 1],
    ['--top-k', K, 1],
    ['--granularity', G, 1],
    ['--shared-experts', S, 0],
  ] as const) {
    if (!Number.isInteger(v) || v < min) throw new MoekitError('usage', `${flag}: expected an integer ≥ ${min}, got ${v}`);
  }
  if (I % G !== 0)
    throw new MoekitError('usage', `--granularity ${G} does not divide the dense intermediate size ${I} (values that work: ${divisors(I).join(', ')})`);
  if (S >= G) throw new MoekitError('usage', `--shared-experts ${S} leaves no routed slice of the ${G} (use at most ${G - 1}, or raise --granularity)`);
  if (S > 0 && !TARGETS[target]!.shared) throw new MoekitError('usage', `--shared-experts: family '${target}' has no shared expert (use --family qwen2_moe)`);
  if (S === 0 && TARGETS[target]!.shared)
    throw new MoekitError('usage', `family '${target}' always has a shared expert: pass --shared-experts (1..${G - 1}) with --granularity ≥ 2`);
  const R = G - S;
  if (E % R !== 0)
    throw new MoekitError(
      'usage',
      `--experts ${E} is not a multiple of the ${R} routed slices of one copy (values that work: ${multiples(R, Math.max(E, 4 * R)).join(', ')})`,
    );
  if (K % R !== 0 || K > E) {
    throw new MoekitError(
      'usage',
      `--top-k ${K} must select whole copies of ${R} tied experts and at most ${E} (values that work: ${multiples(R, E).join(', ')})`,
    );
  }
  return { E, K, G, S, R, C: E / R, I };
}

/** The MoE layer upcycled from one dense MLP per copy (copy c from mlps[c % mlps.length]). */
function upcycledLayer(layer: number, mlps: DenseMlp[], sh: Shape, router: View, sharedGate: View | undefined): LayerIR {
  const w = sh.I / sh.G;
  const rows = (v: View, s: number, n = 1) => v.slice(0, s * w, (s + n) * w);
  const cols = (v: View, s: number, n = 1) => v.slice(1, s * w, (s + n) * w);
  const experts: ExpertIR[] = [];
  for (let e = 0; e < sh.E; e++) {
    const m = mlps[Math.floor(e / sh.R) % mlps.length]!;
    const s = sh.S + (e % sh.R);
    experts.push({ ...(m.gate ? { gate: rows(m.gate, s) } : {}), up: rows(m.up, s), down: cols(m.down, s) });
  }
  const l: LayerIR = { layer, router, experts, globalIds: experts.map((_, i) => i) };
  const base = mlps[0]!;
  if (sh.S > 0) {
    if (base.gate) l.shared_gate_proj = rows(base.gate, 0, sh.S);
    l.shared_up = rows(base.up, 0, sh.S);
    l.shared_down = cols(base.down, 0, sh.S);
    l.shared_gate = sharedGate;
  }
  return l;
}

/** config.json of the upcycled model: the dense config with the target architecture's MoE fields. */
function targetConfig(src: Record<string, unknown>, target: string, sh: Shape, dtype?: FloatDtype): Record<string, unknown> {
  const c: Record<string, unknown> = { ...src, model_type: target, architectures: [TARGETS[target]!.architecture] };
  const w = sh.I / sh.G;
  if (target === 'mixtral') Object.assign(c, { num_local_experts: sh.E, num_experts_per_tok: sh.K, intermediate_size: w, output_router_logits: false });
  else {
    Object.assign(c, {
      num_experts: sh.E,
      num_experts_per_tok: sh.K,
      moe_intermediate_size: w,
      norm_topk_prob: true,
      decoder_sparse_step: 1,
      mlp_only_layers: [],
      output_router_logits: false,
    });
    if (target === 'qwen2_moe') c.shared_expert_intermediate_size = sh.S * w;
  }
  if (dtype) {
    const t = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype];
    if ('dtype' in c) c.dtype = t;
    if ('torch_dtype' in c || !('dtype' in c)) c.torch_dtype = t;
  }
  return c;
}

interface Built {
  ir: ModelIR;
  facts: FamilyFacts;
  sh: Shape;
  config: Record<string, unknown>;
  record: UpcycleRecord;
  fieldTransforms: PlanOptions['fieldTransforms'];
  warnings: string[];
  target: string;
}

/** Read the dense source(s) and build the upcycled model's IR (views over the dense tensors). */
async function build(stores: TensorStore[], src: string, opts: UpcycleOptions): Promise<Built> {
  const main = stores[0]!;
  const config = await main.config();
  if (!config) throw new MoekitError('bad-input', `${src}: no config.json next to the checkpoint (upcycle needs the dense model's config)`);
  const facts = familyFacts(config);
  const meta = await loadMeta(main);
  if (detectLayout(main.names(), meta))
    throw new MoekitError('unsupported', `${src} is already an MoE checkpoint (layout ${detectLayout(main.names(), meta)!.id}); upcycle takes a dense model`);
  const target = opts.family ?? defaultFamily(facts.modelType);
  if (!Object.hasOwn(TARGETS, target))
    throw new MoekitError(
      'unsupported',
      `--family ${target}: upcycle writes ${Object.keys(TARGETS).join(', ')} (DeepSeek-style MLA attention cannot hold a dense model's attention)`,
    );
  const warnings: string[] = [];
  if (!TARGETS[target]!.from.includes(facts.modelType)) {
    warnings.push(
      `${facts.modelType} attention is not ${target}'s: the MoE blocks are exact, but transformers may not load the whole model as ${TARGETS[target]!.architecture}`,
    );
  }
  const dense = stores.map((s) => readDenseMlps(s, new Set()));
  const layers = [...dense[0]!.keys()];
  if (layers.length === 0) throw new MoekitError('unsupported', `${src}: no dense MLP blocks (mlp.gate_proj/up_proj/down_proj) to upcycle`);
  const first = dense[0]!.get(layers[0]!)!;
  const I = first.up.shape[0]!;
  const H = first.up.shape[1]!;
  for (const [k, d] of dense.entries()) {
    for (const n of layers) {
      const m = d.get(n);
      if (!m || m.up.shape[0] !== I || m.up.shape[1] !== H)
        throw new MoekitError('unsupported', `${k === 0 ? src : opts.expertsFrom![k - 1]}: layer ${n} has no dense MLP of I ${I}, H ${H} like the others`);
    }
  }
  const sh = shapeOf(opts, I, target);
  const dt = first.up.dtype as FloatDtype;
  const seed = opts.seed ?? 0;
  const std = opts.routerStd ?? 0.02;
  const consumed = new Set<string>();
  for (const d of dense) for (const m of d.values()) for (const v of [m.gate, m.up, m.down]) if (v) consumed.add(v.label);
  const irLayers = layers.map((n, li) => {
    const router = routerView(sh, H, dt, opts.router === 'uniform' ? 0 : std, seed + li);
    const sharedGate = target === 'qwen2_moe' && sh.S > 0 ? View.ofBuffer(Buffer.alloc(H * (dt === 'F32' ? 4 : 2)), dt, [1, H]) : undefined;
    return upcycledLayer(
      n,
      dense.map((d) => d.get(n)!),
      sh,
      router,
      sharedGate,
    );
  });
  const ir: ModelIR = {
    family: target,
    modelType: target,
    routing: makeRouting({ scoreFunc: 'softmax', topK: sh.K, normTopkProb: true }),
    activation: facts.activation,
    hfRoot: /^((?:[A-Za-z0-9_-]+\.)*?)layers\.\d+\./.exec([...consumed][0] ?? '')?.[1] ?? 'model.',
    layers: irLayers,
    passthrough: [...main.tensors.values()].filter((t) => !consumed.has(t.name)).map((info) => ({ store: main, info })),
  };
  const equivalent = stores.length === 1;
  if (!equivalent) warnings.push(`--experts-from: copies hold different MLPs, so the MoE model does not compute the dense model's function`);
  const sharedDownScale = target === 'qwen2_moe' && sh.S > 0 ? 2 : 1;
  const record: UpcycleRecord = {
    scheme: 'exact',
    granularity: sh.G,
    sharedSlices: sh.S,
    copies: sh.C,
    equivalent,
    router: opts.router ?? 'random',
    routerStd: opts.router === 'uniform' ? 0 : std,
    seed,
    downScale: sh.R,
    sharedDownScale,
    sources: [src, ...(opts.expertsFrom ?? [])],
  };
  const fieldTransforms: PlanOptions['fieldTransforms'] = {
    ...(sh.R !== 1 ? { down: (d: FloatDtype) => scaleTransform(d, sh.R) } : {}),
    ...(sharedDownScale !== 1 ? { shared_down: (d: FloatDtype) => scaleTransform(d, sharedDownScale) } : {}),
  };
  return { ir, facts, sh, config: targetConfig(config, target, sh, opts.dtype), record, fieldTransforms, warnings, target };
}

/** The router [E, H]: one seeded N(0, σ²) row per copy, repeated for the copy's R tied experts. */
function routerView(sh: Shape, H: number, dtype: FloatDtype, std: number, seed: number): View {
  const rows = gaussian(sh.C * H, seed, std);
  const f32 = new Float32Array(sh.E * H);
  for (let e = 0; e < sh.E; e++) f32.set(rows.subarray(Math.floor(e / sh.R) * H, (Math.floor(e / sh.R) + 1) * H), e * H);
  return View.ofBuffer(castFloat(new Uint8Array(f32.buffer), 'F32', dtype), dtype, [sh.E, H]);
}

export async function upcycle(src: string, dst: string, opts: UpcycleOptions): Promise<UpcycleSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const stores: TensorStore[] = [];
  try {
    for (const p of [src, ...(opts.expertsFrom ?? [])]) stores.push(await openStore(p));
    const b = await build(stores, src, opts);
    const target = opts.to
      ? resolveTarget(opts.to, { family: b.target, modelType: b.target, routing: b.ir.routing, activation: b.ir.activation }, undefined)
      : resolveTarget('hf', { family: b.target, modelType: b.target, routing: null, activation: null }, undefined);
    const sources = stores.flatMap((s) => [s.dir, ...s.files]);
    const base = {
      source: src,
      destination: dst,
      family: b.target,
      layout: target.id,
      experts: b.sh.E,
      topK: b.sh.K,
      granularity: b.sh.G,
      sharedSlices: b.sh.S,
      copies: b.sh.C,
      equivalent: b.record.equivalent,
      moeLayers: b.ir.layers.length,
      warnings: b.warnings,
    };
    if (opts.ep) return await upcycleSharded(b, target, stores[0]!, dst, opts, { base, t0, sources });
    const tp = planTensors(b.ir, target, { dtype: opts.dtype, fieldTransforms: b.fieldTransforms });
    const sideFiles = [
      { name: 'config.json', json: b.config },
      { name: 'moekit.json', json: moekitJson(b.ir, tp, 'dense', b.record) },
      ...(await sideFilesOf(stores[0]!.dir)),
    ];
    const { files, index } = splitFiles(tp.tensors, opts.maxShardSize);
    const plan: Plan = { outputs: [{ dir: '', files, index, metadata: stores[0]!.metadata, sideFiles }], jobs: Math.max(1, opts.jobs ?? 4) };
    const total = planBytes(plan);
    if (opts.dryRun) {
      const names = [...files.map((f) => f.name), ...(index ? [index] : []), ...sideFiles.map((f) => f.name)].sort();
      return { ...base, tensors: tp.tensors.length, bytes: total, files: names, seconds: (Date.now() - t0) / 1000, dryRun: true, plan: describePlan(plan) };
    }
    let done = 0;
    const res = await withOutput(dst, { force: opts.force, sources }, (tmp) =>
      executeCheckpoint(plan.outputs[0]!, tmp, {
        jobs: plan.jobs,
        fsync: opts.fsync,
        onProgress: (d) => {
          done += d;
          opts.onProgress?.(done, total);
        },
      }),
    );
    return { ...base, tensors: tp.tensors.length, bytes: res.bytes, files: res.files.sort(), seconds: (Date.now() - t0) / 1000 };
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
}

/** --ep: the upcycled model cut into expert-parallel ranks in one pass (no intermediate checkpoint). */
async function upcycleSharded(
  b: Built,
  target: ReturnType<typeof resolveTarget>,
  main: TensorStore,
  dst: string,
  opts: UpcycleOptions,
  ctx: { base: Omit<UpcycleSummary, 'tensors' | 'bytes' | 'files' | 'seconds'>; t0: number; sources: string[] },
): Promise<UpcycleSummary> {
  const l0 = b.ir.layers[0]!;
  const s = await cut(
    {
      ir: b.ir,
      target,
      fieldTransforms: b.fieldTransforms,
      upcycle: b.record,
      sideFrom: main.dir,
      sources: ctx.sources,
      source: {
        family: b.target,
        modelType: b.target,
        layout: target.id,
        gateUp: target.gateUp?.default ?? 'separate',
        numExperts: b.sh.E,
        hiddenSize: l0.experts[0]!.down.shape[0]!,
        moeIntermediateSize: l0.experts[0]!.up.shape[0]!,
        config: b.config,
        ...(main.metadata ? { metadata: main.metadata } : {}),
      },
    },
    dst,
    {
      ep: opts.ep!,
      etp: opts.etp,
      maxShardSize: opts.maxShardSize,
      jobs: opts.jobs,
      force: opts.force,
      fsync: opts.fsync,
      dryRun: opts.dryRun,
      onProgress: opts.onProgress,
    },
    ctx.t0,
    ctx.base.source,
  );
  return {
    ...ctx.base,
    tensors: s.tensors,
    bytes: s.bytes,
    files: s.ranks,
    seconds: s.seconds,
    shard: s,
    ...(s.dryRun ? { dryRun: true as const, plan: s.plan } : {}),
  };
}
