/**
 * `moekit convert` as a library call: detect the source layout, read the experts into the IR, plan
 * the target tensors (engine/plan.ts) and run the plan (engine/execute.ts) inside an output
 * transaction (output/transaction.ts): nothing partial is ever left at the destination.
 */
import { readJsonIfExists } from '../store/json.js';
import { basename, join, resolve } from 'node:path';
import { modelCard } from '../output/card.js';
import { openStore } from '../store/registry.js';
import type { TensorStore } from '../store/types.js';
import type { FloatDtype } from '../store/dtypes.js';
import { MoekitError } from '../errors.js';
import { fastLlmContainer } from '../store/fast-llm-names.js';
import { stampDtype } from '../families/index.js';
import { sideFilesOf, withOutput } from '../output/transaction.js';
import type { GateUpOrder, LayoutSpec } from '../engine/layout.js';
import { detectStoreLayout, loadMeta, moekitJson, quantizedTensors, readIR, resolveTarget, type ModelMeta, type MoekitJson } from '../engine/read.js';
import { describePlan, passthroughTensors, planBytes, planTensors, splitFiles, type Plan, type SideFile, type TensorPlan } from '../engine/plan.js';
import { executeCheckpoint, DEFAULT_JOBS } from '../engine/execute.js';
import { openScaled, planScaled } from '../engine/scales.js';
import type { WriteOptions } from './options.js';

export interface ConvertOptions extends WriteOptions {
  /** target layout name: 'hf' or a non-HF spec id */
  to: string;
  gateUp?: GateUpOrder;
  dtype?: FloatDtype;
  /** container of the weights: safetensors (default), torch.save of the state dict (pt), or a DCP folder */
  format?: 'safetensors' | 'pt' | 'dcp' | 'fast_llm';
  /** write README.md, a model card naming this command (the CLI passes its command line); absent: no card */
  card?: { command: string };
  /** the dtype config.json records when the tensors are not cast (what a dequantizing store decodes to); default `dtype` */
  recordDtype?: FloatDtype;
}

export interface ConvertSummary {
  source: string;
  destination: string;
  family: string;
  sourceLayout: string;
  layout: string;
  gateUp: string;
  dtype: string | null;
  identity: boolean;
  moeLayers: number;
  tensors: number;
  bytes: number;
  files: string[];
  seconds: number;
  /** files of the source not copied: weights in another format (and original/) */
  skipped: string[];
  /** with dryRun: nothing was written, and `plan` says what would be */
  dryRun?: true;
  plan?: unknown;
}

interface Planned {
  skipped: string[];
  plan: Plan;
  source: LayoutSpec;
  target: LayoutSpec;
  meta: ModelMeta;
  identity: boolean;
  gateUp: string;
  moeLayers: number;
}

/** config.json of the output: HF targets record a --dtype cast (or `recordDtype`). */
function outputConfig(meta: ModelMeta, target: LayoutSpec, dtype?: FloatDtype): Record<string, unknown> | undefined {
  if (!meta.config) return undefined;
  const cfg = { ...meta.config };
  if (target.families && dtype) stampDtype(cfg, dtype);
  return cfg;
}

/** Two planned tensors as one, rows of `a` then rows of `b` (Fast-LLM's key_value from k_proj and v_proj). */
function joinRows(name: string, a: TensorPlan, b: TensorPlan): TensorPlan {
  if (a.dtype !== b.dtype || a.shape.length !== 2 || a.shape[1] !== b.shape[1])
    throw new MoekitError('unsupported', `cannot join ${a.name} ${a.dtype} [${a.shape}] and ${b.name} ${b.dtype} [${b.shape}] into ${name}`);
  return {
    ...a,
    name,
    shape: [a.shape[0]! + b.shape[0]!, a.shape[1]!],
    nbytes: a.nbytes + b.nbytes,
    action: 'restack',
    sources: [...a.sources, ...b.sources],
    slabs: [...a.slabs, ...b.slabs],
  };
}

async function planConvert(store: TensorStore, src: string, opts: ConvertOptions): Promise<Planned> {
  const meta = await loadMeta(store);
  const source = detectStoreLayout(store, meta);
  if (!source)
    throw new MoekitError(
      'unsupported',
      `${src}: no expert tensors of any layout moekit knows (a dense model? run \`moekit inspect ${src}\`; MoE blocks under your own module path: --block-prefix)`,
    );
  const target = resolveTarget(opts.to, meta, source);
  const srcOrder = meta.moekit?.layout === source.id ? meta.moekit.gateUp : (source.gateUp?.default ?? 'separate');
  const identity = target === source && !opts.dtype && (!opts.gateUp || opts.gateUp === srcOrder);
  const q = quantizedTensors(store);
  let tensors: TensorPlan[];
  let mk: MoekitJson | undefined;
  let gateUp: string = srcOrder;
  let moeLayers = 0;
  if (identity) {
    tensors = passthroughTensors(store);
    if (!q) {
      const ir = readIR(store, source, meta);
      mk = moekitJson(ir, { ...planTensors(ir, target), gateUp: srcOrder as MoekitJson['gateUp'] }, source.id);
      moeLayers = ir.layers.length;
    }
  } else {
    if (q && opts.dtype)
      throw new MoekitError(
        'usage',
        `--dtype casts float weights; ${src} is quantized (${q}): moekit dequant ${src} --dtype ${opts.dtype.toLowerCase()} --to ${opts.to} -o <dst>`,
      );
    const sir = q ? await openScaled(store, q, source, meta, srcOrder as GateUpOrder | 'separate', opts.to) : undefined;
    const ir = sir?.weights ?? readIR(store, source, meta);
    const tp = sir ? planScaled(sir, target, { gateUp: opts.gateUp }) : planTensors(ir, target, { gateUp: opts.gateUp, dtype: opts.dtype });
    tensors = tp.tensors;
    mk = moekitJson(ir, tp, source.id);
    gateUp = tp.gateUp;
    moeLayers = ir.layers.length;
  }
  const cfg = outputConfig(meta, target, opts.dtype ?? opts.recordDtype);
  // config.json unchanged (no cast recorded): the source's own bytes, not a re-serialisation
  const cfgFile = join(store.dir, 'config.json');
  const same = cfg && JSON.stringify(cfg) === JSON.stringify(await readJsonIfExists(cfgFile).catch(() => undefined));
  const skipped: string[] = [];
  const own = store.files.map((f) => basename(f));
  const sideFiles: SideFile[] = [
    ...(cfg ? [same ? { name: 'config.json', copyFrom: cfgFile } : { name: 'config.json', json: cfg }] : []),
    ...(mk ? [{ name: 'moekit.json', json: mk }] : []),
    ...(await sideFilesOf(store.dir, skipped, opts.card ? ['README.md'] : [])),
  ];
  if (opts.card)
    sideFiles.push({
      name: 'README.md',
      text: await modelCard({ command: opts.card.command, source: src, family: meta.family, layout: target.id, hf: Boolean(target.families) }, store.dir),
    });
  const format = opts.format ?? 'safetensors';
  let metadata = store.metadata;
  let fastYaml: ((weightMap: Record<string, string>) => string) | undefined;
  if (format === 'fast_llm') {
    if (target.id !== 'fast-llm')
      throw new MoekitError('usage', `--format fast_llm is Fast-LLM's own checkpoint: use it with --to fast-llm (not --to ${opts.to})`);
    const c = fastLlmContainer(
      tensors,
      cfg ?? {},
      { E: mk?.dims.numExperts ?? 0, topK: mk?.routing?.topK ?? 1, I: mk?.dims.moeIntermediateSize ?? 0 },
      joinRows,
    );
    ({ tensors, metadata } = c);
    fastYaml = c.metadataYaml;
  }
  const { files, index } = splitFiles(tensors, opts.maxShardSize, format);
  if (fastYaml) sideFiles.push({ name: 'metadata.yaml', text: fastYaml(Object.fromEntries(files.flatMap((f) => f.tensors.map((t) => [t.name, f.name])))) });
  const plan: Plan = { outputs: [{ dir: '', files, index, metadata, sideFiles, format }], jobs: Math.max(1, opts.jobs ?? DEFAULT_JOBS) };
  return { plan, source, target, meta, identity, gateUp, moeLayers, skipped: skipped.filter((n) => !own.includes(n)) };
}

/** Names of every file a planned checkpoint folder gets. */
const plannedFiles = (p: Plan): string[] =>
  p.outputs.flatMap((o) => [...o.files.map((f) => f.name), ...(o.index ? [o.index] : []), ...o.sideFiles.map((s) => s.name)]).sort();

export async function convert(src: string, dst: string, opts: ConvertOptions): Promise<ConvertSummary> {
  return convertStore(await openStore(src), src, dst, opts);
}

/** convert from an open store (closed when done): a DequantStore makes this `moekit dequant`. */
export async function convertStore(store: TensorStore, src: string, dst: string, opts: ConvertOptions): Promise<ConvertSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  try {
    const p = await planConvert(store, src, opts);
    const total = planBytes(p.plan);
    const base = {
      source: src,
      destination: dst,
      family: p.meta.family,
      sourceLayout: p.source.id,
      layout: p.target.id,
      gateUp: p.gateUp,
      dtype: opts.dtype ?? null,
      identity: p.identity,
      moeLayers: p.moeLayers,
      tensors: p.plan.outputs[0]!.files.reduce((a, f) => a + f.tensors.length, 0),
      skipped: p.skipped,
    };
    if (opts.dryRun) return { ...base, bytes: total, files: plannedFiles(p.plan), seconds: (Date.now() - t0) / 1000, dryRun: true, plan: describePlan(p.plan) };
    let done = 0;
    const res = await withOutput(dst, { force: opts.force, sources: [store.dir, ...store.files] }, (tmp) =>
      executeCheckpoint(p.plan.outputs[0]!, tmp, {
        jobs: p.plan.jobs,
        maxMemory: opts.maxMemory,
        fsync: opts.fsync,
        onProgress: (d) => {
          done += d;
          opts.onProgress?.(done, total);
        },
      }),
    );
    return { ...base, bytes: res.bytes, files: res.files.sort(), seconds: (Date.now() - t0) / 1000 };
  } finally {
    await store.close();
  }
}
