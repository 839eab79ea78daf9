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
import { DENSE_FAMILIES, familyFacts, makeRouting, stampDtype, type FamilyFacts, type Routing } from '../families/index.js';
import { View, type ExpertIR, type LayerIR, type ModelIR } from '../engine/ir.js';
import { detectStoreLayout, layerRootOf, loadMeta, moekitJson, readDenseMlps, resolveTarget, type DenseMlp, type UpcycleRecord } from '../engine/read.js';
import { describePlan, planBytes, planTensors, splitFiles, type Plan, type PlanOptions } from '../engine/plan.js';
import { scaleTransform } from '../engine/transforms.js';
import { executeCheckpoint, DEFAULT_JOBS } from '../engine/execute.js';
import { sideFilesOf, withOutput } from '../output/transaction.js';
import { cut, type ShardSummary } from './shard/shard.js';
import { gaussian } from './random.js';
import type { WriteOptions } from './options.js';
import { castFloat } from '../engine/cast.js';

export interface UpcycleOptions extends WriteOptions {
  experts: number;
  topK: number;
  granularity?: number;
  sharedExperts?: number;
  /** target family: mixtral, qwen3_moe, qwen2_moe (default: the one matching the source's attention) */
  family?: string;
  router?: 'random' | 'uniform';
  routerStd?: number;
  /** 'exact' (default) or Megatron-LM's approximate act_scale^(1/3) on fc1 and fc2 */
  scheme?: 'exact' | 'megatron';
  seed?: number;
  /** further dense checkpoints whose MLPs fill successive copies (not equivalence-preserving) */
  expertsFrom?: string[];
  /** layout to write (default: the target family's HF layout) */
  to?: string;
  /** write the expert-parallel form directly */
  ep?: number;
  etp?: number;
  dtype?: FloatDtype;
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
const TARGETS: Record<string, { architecture: string; from: readonly string[]; shared: 'none' | 'optional' | 'required' }> = {
  // softmax → top-k → renormalise
  mixtral: { architecture: 'MixtralForCausalLM', from: ['llama', 'mistral'], shared: 'none' },
  qwen3_moe: { architecture: 'Qwen3MoeForCausalLM', from: ['qwen3'], shared: 'none' },
  // the same, plus a shared expert behind a sigmoid gate
  qwen2_moe: { architecture: 'Qwen2MoeForCausalLM', from: ['qwen2'], shared: 'required' },
  // top-k → softmax over the selected logits (attention_multiplier = head_dim^-0.5 makes Granite's attention Llama's)
  granitemoe: { architecture: 'GraniteMoeForCausalLM', from: ['llama'], shared: 'none' },
  // sigmoid scores + correction bias (zero), renormalised, × routed_scaling_factor (1); DeepSeek-style shared experts
  glm4_moe: { architecture: 'Glm4MoeForCausalLM', from: ['llama'], shared: 'optional' },
};

/** The routing each target family computes (families/index.ts has the same rules for reading). */
const TARGET_ROUTING: Record<string, (K: number) => Routing> = {
  mixtral: (K) => makeRouting({ scoreFunc: 'softmax', topK: K, normTopkProb: true }),
  qwen3_moe: (K) => makeRouting({ scoreFunc: 'softmax', topK: K, normTopkProb: true }),
  qwen2_moe: (K) => makeRouting({ scoreFunc: 'softmax', topK: K, normTopkProb: true }),
  granitemoe: (K) => makeRouting({ scoreFunc: 'topk_softmax', topK: K }),
  glm4_moe: (K) => makeRouting({ scoreFunc: 'sigmoid', topK: K, normTopkProb: true, correctionBias: true }),
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
  if (S > 0 && TARGETS[target]!.shared === 'none')
    throw new MoekitError('usage', `--shared-experts: family '${target}' has no shared expert (use --family qwen2_moe or glm4_moe)`);
  if (S > 0 && opts.scheme === 'megatron') throw new MoekitError('usage', '--scheme megatron has no shared experts');
  if (S === 0 && TARGETS[target]!.shared === 'required')
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

/** Fields transformers declares as float (strict config dataclasses refuse `1` where `1.0` is meant). */
const FLOAT_FIELDS = [
  'routed_scaling_factor',
  'partial_rotary_factor',
  'attention_multiplier',
  'embedding_multiplier',
  'residual_multiplier',
  'logits_scaling',
];

/** config.json text with the float fields written as floats. */
function configText(c: Record<string, unknown>): string {
  let t = `${JSON.stringify(c, null, 2)}\n`;
  for (const k of FLOAT_FIELDS) t = t.replace(new RegExp(`("${k}": )(-?\\d+)(,?\\n)`), '$1$2.0$3');
  return t;
}

/** config.json of the upcycled model: the dense config with the target architecture's MoE fields. */
function targetConfig(src: Record<string, unknown>, target: string, sh: Shape, dtype?: FloatDtype): Record<string, unknown> {
  const c: Record<string, unknown> = { ...src, model_type: target, architectures: [TARGETS[target]!.architecture] };
  const w = sh.I / sh.G;
  if (target === 'mixtral') Object.assign(c, { num_local_experts: sh.E, num_experts_per_tok: sh.K, intermediate_size: w, output_router_logits: false });
  else if (target === 'granitemoe') {
    const headDim = Number(src.head_dim ?? Number(src.hidden_size) / Number(src.num_attention_heads));
    Object.assign(c, {
      num_local_experts: sh.E,
      num_experts_per_tok: sh.K,
      intermediate_size: w,
      attention_multiplier: headDim ** -0.5,
      embedding_multiplier: 1.0,
      residual_multiplier: 1.0,
      logits_scaling: 1.0,
      output_router_logits: false,
    });
  } else if (target === 'glm4_moe') {
    Object.assign(c, {
      n_routed_experts: sh.E,
      num_experts_per_tok: sh.K,
      moe_intermediate_size: w,
      n_shared_experts: sh.S,
      n_group: 1,
      topk_group: 1,
      routed_scaling_factor: 1.0,
      norm_topk_prob: true,
      first_k_dense_replace: 0,
      partial_rotary_factor: 1.0,
      use_qk_norm: false,
    });
  } else {
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
  if (dtype) stampDtype(c, dtype);
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
/** The source's family, the target family and its warnings; refuses an MoE source or an unknown target. */
async function targetOf(
  main: TensorStore,
  src: string,
  opts: UpcycleOptions,
): Promise<{ config: Record<string, unknown>; facts: FamilyFacts; target: string; warnings: string[] }> {
  const config = await main.config();
  if (!config) throw new MoekitError('bad-input', `${src}: no config.json next to the checkpoint (upcycle needs the dense model's config)`);
  const facts = familyFacts(config);
  const moe = detectStoreLayout(main, await loadMeta(main));
  if (moe) throw new MoekitError('unsupported', `${src} is already an MoE checkpoint (layout ${moe.id}); upcycle takes a dense model`);
  if (!facts.known)
    throw new MoekitError('unsupported', `${src}: model_type '${facts.modelType}' is not a dense family moekit knows (${DENSE_FAMILIES.join(', ')})`);
  const target = opts.family ?? defaultFamily(facts.modelType);
  if (!Object.hasOwn(TARGETS, target)) {
    throw new MoekitError(
      'unsupported',
      `--family ${target}: upcycle writes ${Object.keys(TARGETS).join(', ')} (DeepSeek-style MLA attention cannot hold a dense model's attention)`,
    );
  }
  const warnings: string[] = [];
  if (!TARGETS[target]!.from.includes(facts.modelType)) {
    warnings.push(
      `${facts.modelType} attention is not ${target}'s: the MoE blocks are exact, but transformers may not load the whole model as ${TARGETS[target]!.architecture}`,
    );
  }
  return { config, facts, target, warnings };
}

/** The dense MLPs of every source, by layer; all of one I and H. */
function denseMlps(stores: TensorStore[], src: string, opts: UpcycleOptions): { dense: Map<number, DenseMlp>[]; layers: number[]; first: DenseMlp } {
  const dense = stores.map((s) => readDenseMlps(s, new Set()));
  const layers = [...dense[0]!.keys()];
  if (layers.length === 0) throw new MoekitError('unsupported', `${src}: no dense MLP blocks (mlp.gate_proj/up_proj/down_proj) to upcycle`);
  const first = dense[0]!.get(layers[0]!)!;
  const [I, H] = first.up.shape as [number, number];
  for (const [k, d] of dense.entries()) {
    for (const n of layers) {
      const m = d.get(n);
      if (!m || m.up.shape[0] !== I || m.up.shape[1] !== H) {
        throw new MoekitError('unsupported', `${k === 0 ? src : opts.expertsFrom![k - 1]}: layer ${n} has no dense MLP of I ${I}, H ${H} like the others`);
      }
    }
  }
  return { dense, layers, first };
}

/** The scales that make the model exact (or Megatron's), as per-field transforms, and the record of them. */
function scalesOf(sh: Shape, target: string, gated: boolean, facts: FamilyFacts, opts: UpcycleOptions, warnings: string[]) {
  const sharedDownScale = target === 'qwen2_moe' && sh.S > 0 ? 2 : 1;
  const megatron = opts.scheme === 'megatron';
  // Megatron-LM upcycling_utils.py: act_scale = G (its top-k softmax weights sum to 1), spread as
  // act_scale^(1/3) over fc1 and fc2 of GLU / squared-ReLU experts (^(1/2) otherwise): exact only
  // for homogeneous activations, so approximate for SwiGLU.
  const mscale = sh.G ** (gated || facts.activation.kind === 'relu2' ? 1 / 3 : 1 / 2);
  if (megatron && sh.G > 1)
    warnings.push(
      `--scheme megatron scales fc1 and fc2 by ${mscale.toPrecision(6)}: the MoE model only approximates the dense one (${facts.activation.kind} is not homogeneous)`,
    );
  const scaleBy = (f: number) => (d: FloatDtype) => scaleTransform(d, f);
  let fieldTransforms: PlanOptions['fieldTransforms'] = {
    ...(sh.R !== 1 ? { down: scaleBy(sh.R) } : {}),
    ...(sharedDownScale !== 1 ? { shared_down: scaleBy(sharedDownScale) } : {}),
  };
  if (megatron) fieldTransforms = mscale === 1 ? {} : { gate: scaleBy(mscale), up: scaleBy(mscale), down: scaleBy(mscale) };
  return { fieldTransforms, downScale: megatron ? mscale : sh.R, sharedDownScale, exact: !megatron || sh.G === 1 };
}

/** Read the dense source(s) and build the upcycled model's IR (views over the dense tensors). */
async function build(stores: TensorStore[], src: string, opts: UpcycleOptions): Promise<Built> {
  const main = stores[0]!;
  const { config, facts, target, warnings } = await targetOf(main, src, opts);
  const { dense, layers, first } = denseMlps(stores, src, opts);
  const [I, H] = first.up.shape as [number, number];
  const sh = shapeOf(opts, I, target);
  const dt = first.up.dtype as FloatDtype;
  const seed = opts.seed ?? 0;
  const std = opts.router === 'uniform' ? 0 : (opts.routerStd ?? 0.02);
  const consumed = new Set<string>();
  for (const d of dense) for (const m of d.values()) for (const v of [m.gate, m.up, m.down]) if (v) consumed.add(v.label);
  const irLayers = layers.map((n, li) => {
    const sharedGate = target === 'qwen2_moe' && sh.S > 0 ? View.ofBuffer(Buffer.alloc(H * (dt === 'F32' ? 4 : 2)), dt, [1, H]) : undefined;
    const l = upcycledLayer(
      n,
      dense.map((d) => d.get(n)!),
      sh,
      routerView(sh, H, dt, std, seed + li),
      sharedGate,
    );
    if (target === 'glm4_moe') l.score_bias = View.ofBuffer(Buffer.alloc(sh.E * 4), 'F32', [sh.E]); // selection bias 0: plain sigmoid top-k
    return l;
  });
  const ir: ModelIR = {
    family: target,
    modelType: target,
    routing: TARGET_ROUTING[target]!(sh.K),
    activation: facts.activation,
    hfRoot: layerRootOf([...consumed][0] ?? '') ?? 'model.',
    layers: irLayers,
    passthrough: [...main.tensors.values()].filter((t) => !consumed.has(t.name)).map((info) => ({ store: main, info })),
  };
  if (stores.length > 1) warnings.push(`--experts-from: copies hold different MLPs, so the MoE model does not compute the dense model's function`);
  const sc = scalesOf(sh, target, !!first.gate, facts, opts, warnings);
  const record: UpcycleRecord = {
    scheme: opts.scheme === 'megatron' ? 'megatron' : 'exact',
    granularity: sh.G,
    sharedSlices: sh.S,
    copies: sh.C,
    equivalent: stores.length === 1 && sc.exact,
    router: opts.router ?? 'random',
    routerStd: std,
    seed,
    downScale: sc.downScale,
    sharedDownScale: sc.sharedDownScale,
    sources: [src, ...(opts.expertsFrom ?? [])],
  };
  return { ir, facts, sh, config: targetConfig(config, target, sh, opts.dtype), record, fieldTransforms: sc.fieldTransforms, warnings, target };
}

/** The router [E, H]: one seeded N(0, σ²) row per copy, repeated for the copy's R tied experts. */
function routerView(sh: Shape, H: number, dtype: FloatDtype, std: number, seed: number): View {
  const rows = gaussian(sh.C * H, seed * 0x9e3779b1, std);
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
      { name: 'config.json', text: configText(b.config) },
      { name: 'moekit.json', json: moekitJson(b.ir, tp, 'dense', b.record) },
      ...(await sideFilesOf(stores[0]!.dir)),
    ];
    const { files, index } = splitFiles(tp.tensors, opts.maxShardSize);
    const plan: Plan = { outputs: [{ dir: '', files, index, metadata: stores[0]!.metadata, sideFiles }], jobs: Math.max(1, opts.jobs ?? DEFAULT_JOBS) };
    const total = planBytes(plan);
    if (opts.dryRun) {
      const names = [...files.map((f) => f.name), ...(index ? [index] : []), ...sideFiles.map((f) => f.name)].sort();
      return { ...base, tensors: tp.tensors.length, bytes: total, files: names, seconds: (Date.now() - t0) / 1000, dryRun: true, plan: describePlan(plan) };
    }
    let done = 0;
    const res = await withOutput(dst, { force: opts.force, sources }, (tmp) =>
      executeCheckpoint(plan.outputs[0]!, tmp, {
        jobs: plan.jobs,
        maxMemory: opts.maxMemory,
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
      configText: configText(b.config),
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
