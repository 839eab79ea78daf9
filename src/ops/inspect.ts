/**
 * `moekit inspect`: what a checkpoint is — family (config.json), expert layout (tensor names),
 * MoE layers, expert sizes, routing, dtypes, quantization, bytes — without reading tensor data.
 */
import type { TensorStore, TensorInfo } from '../store/types.js';
import { openStore } from '../store/registry.js';
import { familyFacts, type FamilyFacts } from '../families/index.js';
import { detectScheme } from '../quant/scheme.js';
import { claimedExperts, detectStoreLayout, loadMeta, quantizedTensors, readDenseMlps, readIR, type ModelMeta } from '../engine/read.js';
import { layerDims, type ModelIR } from '../engine/ir.js';

export interface InspectReport {
  path: string;
  family: string;
  modelType: string | null;
  familyKnown: boolean;
  layout: string;
  layoutDescription: string;
  numLayers: number;
  moeLayers: number[];
  denseMlpLayers: number[];
  numExperts: number;
  expertsPerLayer: Record<string, number>;
  topK: number;
  hiddenSize: number;
  moeIntermediateSize: number;
  sharedExperts: { count: number; intermediateSize: number; sigmoidGate: boolean } | null;
  gated: boolean | null;
  gateUp: string | null;
  routing: FamilyFacts['routing'] | null;
  activation: string | null;
  dtypes: Record<string, number>;
  quantization: { method: string; details: Record<string, unknown> } | null;
  totalBytes: number;
  numTensors: number;
  numFiles: number;
  warnings: string[];
}

function detectQuantization(config: Record<string, unknown> | undefined, tensors: TensorInfo[]): InspectReport['quantization'] {
  const qc = config?.quantization_config as Record<string, unknown> | undefined;
  const hasF8 = tensors.some((t) => t.dtype.startsWith('F8_'));
  const hasScaleInv = tensors.some((t) => t.name.endsWith('weight_scale_inv'));
  const hasBlocks = tensors.some((t) => t.name.endsWith('_blocks')) && tensors.some((t) => t.name.endsWith('_scales'));
  const hasPacked = tensors.some((t) => t.name.endsWith('weight_packed'));
  if (qc && typeof qc === 'object') {
    const method = String(qc.quant_method ?? 'unknown');
    const details: Record<string, unknown> = { ...qc };
    if (method === 'fp8' && hasF8) details.storage = hasScaleInv ? 'F8_E4M3 + weight_scale_inv per block' : 'F8 tensors';
    if (method === 'mxfp4') details.storage = hasBlocks ? '*_blocks (2×e2m1 per byte) + *_scales (e8m0)' : 'no *_blocks tensors found (already dequantized?)';
    return { method, details };
  }
  if (hasF8)
    return { method: 'fp8', details: { storage: hasScaleInv ? 'F8 + weight_scale_inv' : 'F8 tensors', note: 'no quantization_config in config.json' } };
  if (hasBlocks) return { method: 'mxfp4', details: { note: 'no quantization_config in config.json' } };
  if (hasPacked) return { method: 'pack-quantized', details: { note: 'no quantization_config in config.json' } };
  return null;
}

/** quantization_config plus what the tensors say: the scheme and its weight groups (src/quant/scheme.ts). */
async function quantizationOf(
  ck: TensorStore,
  config: Record<string, unknown> | undefined,
  tensors: TensorInfo[],
  warnings: string[],
): Promise<InspectReport['quantization']> {
  const q = detectQuantization(config, tensors);
  if (!q) return q;
  try {
    const scheme = await detectScheme(ck, config);
    if (scheme) {
      const by = new Map<string, number>();
      for (const g of scheme.groups.values()) by.set(g.detail, (by.get(g.detail) ?? 0) + 1);
      q.details.scheme = scheme.method;
      q.details.weights = Object.fromEntries(by);
      if (scheme.dropped.length) q.details.activationScales = scheme.dropped.length;
    }
  } catch (e) {
    warnings.push(`quantized tensors do not read: ${(e as Error).message}`);
  }
  return q;
}

interface ExpertLayout {
  layout: string;
  layoutDescription: string;
  gateUp: string | null;
  expertsPerLayer: Record<string, number>;
  moeLayers: number[];
  moeI: number;
  ir?: ModelIR;
  denseLayers: Set<number>;
}

/** The expert layout from tensor names, by the layout specs (and dense MLP layers by converters/dense-mlp.ts). */
function expertLayout(ck: TensorStore, meta: ModelMeta, facts: FamilyFacts | undefined, warnings: string[]): ExpertLayout {
  const spec = detectStoreLayout(ck, meta);
  const x: ExpertLayout = {
    layout: 'dense',
    layoutDescription: 'no expert tensors (dense MLP)',
    gateUp: null,
    expertsPerLayer: {},
    moeLayers: [],
    moeI: 0,
    denseLayers: new Set(),
  };
  if (!spec) {
    x.denseLayers = new Set(readDenseMlps(ck, new Set()).keys());
    if (x.denseLayers.size === 0) {
      x.layout = 'unknown';
      x.layoutDescription = 'no expert or dense-MLP tensors moekit recognises';
      warnings.push('no expert layout recognised from tensor names: not an MoE checkpoint moekit knows');
    }
    return x;
  }
  x.layout = spec.id;
  x.layoutDescription = spec.description;
  const order = spec.gateUp ? (meta.moekit?.layout === spec.id && meta.moekit.gateUp !== 'separate' ? meta.moekit.gateUp : spec.gateUp.default) : 'separate';
  x.gateUp = order === 'concat' ? 'concatenated' : order;
  try {
    x.ir = readIR(ck, spec, meta);
  } catch (e) {
    // quantized experts (MXFP4 *_blocks) do not read as plain tensors: count them by name instead
    if (!quantizedTensors(ck)) warnings.push(`expert tensors do not read as layout ${spec.id}: ${(e as Error).message}`);
  }
  if (x.ir) {
    for (const l of x.ir.layers) x.expertsPerLayer[l.layer] = l.experts.length;
    x.moeI = layerDims(x.ir.layers[0]!).I;
  } else {
    for (const [layer, n] of claimedExperts(spec, [...ck.tensors.values()])) x.expertsPerLayer[layer] = n;
    x.moeI = facts?.moeIntermediateSize ?? 0;
  }
  x.moeLayers = Object.keys(x.expertsPerLayer)
    .map(Number)
    .sort((a, b) => a - b);
  x.denseLayers = new Set(readDenseMlps(ck, new Set(x.moeLayers)).keys());
  return x;
}

/** Warnings where config.json and the tensors disagree; returns the experts per MoE layer. */
function configWarnings(
  facts: FamilyFacts | undefined,
  expertsPerLayer: Record<string, number>,
  moeI: number,
  moeLayers: number[],
  warnings: string[],
): number {
  const counts = new Set(Object.values(expertsPerLayer));
  if (counts.size > 1) warnings.push(`layers have different expert counts: ${JSON.stringify(expertsPerLayer)}`);
  const numExperts = counts.size ? Math.max(...counts) : 0;
  if (facts?.numExperts && numExperts && facts.numExperts !== numExperts) {
    warnings.push(`config.json says ${facts.numExperts} experts, tensors hold ${numExperts}`);
  }
  if (facts?.moeIntermediateSize && moeI && facts.moeIntermediateSize !== moeI) {
    warnings.push(`config.json says expert intermediate size ${facts.moeIntermediateSize}, tensors say ${moeI}`);
  }
  if (facts?.known && moeLayers.length) {
    const cfgMoe = Array.from({ length: facts.numLayers }, (_, i) => i).filter((i) => facts.isMoeLayer(i));
    if (JSON.stringify(cfgMoe) !== JSON.stringify(moeLayers))
      warnings.push(`config.json implies MoE layers [${cfgMoe}], tensors hold experts in [${moeLayers}]`);
  }
  return numExperts;
}

/** Inspect a checkpoint at `path` (folder, weight file or index): headers and config.json only. */
export async function inspect(path: string): Promise<InspectReport> {
  const ck = await openStore(path);
  try {
    return await inspectCheckpoint(ck, path);
  } finally {
    await ck.close();
  }
}

export async function inspectCheckpoint(ck: TensorStore, path: string): Promise<InspectReport> {
  const config = await ck.config();
  const tensors = [...ck.tensors.values()];
  const warnings: string[] = [];
  const facts = config ? familyFacts(config) : undefined;
  if (!config) warnings.push('no config.json next to the checkpoint: family and routing unknown');
  else if (!facts!.known) warnings.push(`model_type '${facts!.modelType}' is not a family moekit knows; layout and sizes come from tensor names only`);

  const meta = await loadMeta(ck);
  const x = expertLayout(ck, meta, facts, warnings);
  const { ir, moeLayers, moeI, expertsPerLayer, denseLayers } = x;
  const numExperts = configWarnings(facts, expertsPerLayer, moeI, moeLayers, warnings);
  const dtypes: Record<string, number> = {};
  for (const t of tensors) dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
  let sharedExperts: InspectReport['sharedExperts'] = null;
  const sl = ir?.layers.find((l) => l.shared_up);
  if (sl) {
    sharedExperts = { count: facts?.shared?.count ?? 1, intermediateSize: sl.shared_up!.shape[0]!, sigmoidGate: !!sl.shared_gate };
  }
  const numLayers = facts?.numLayers || Math.max(-1, ...tensors.map((t) => Number(/layers\.(\d+)\./.exec(t.name)?.[1] ?? -1))) + 1;
  return {
    path,
    family: facts?.family ?? 'unknown',
    modelType: facts?.modelType ?? null,
    familyKnown: facts?.known ?? false,
    layout: x.layout,
    layoutDescription: x.layoutDescription,
    numLayers,
    moeLayers,
    denseMlpLayers: [...denseLayers].sort((a, b) => a - b),
    numExperts,
    expertsPerLayer,
    topK: moeLayers.length ? (facts?.topK ?? 0) : 0,
    hiddenSize: facts?.hiddenSize ?? 0,
    moeIntermediateSize: moeI || (moeLayers.length ? (facts?.moeIntermediateSize ?? 0) : 0),
    sharedExperts,
    gated: x.layout === 'unknown' ? null : facts ? facts.activation.kind !== 'relu2' : null,
    gateUp: moeLayers.length ? x.gateUp : null,
    routing: moeLayers.length && facts ? facts.routing : null,
    activation: facts ? facts.activation.kind : null,
    dtypes,
    quantization: await quantizationOf(ck, config, tensors, warnings),
    totalBytes: ck.totalBytes,
    numTensors: tensors.length,
    numFiles: ck.files.length,
    warnings,
  };
}

function formatBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(2)} ${u[i]}`;
}

export function formatInspect(r: InspectReport): string {
  const rows: [string, string][] = [
    ['path', r.path],
    ['family', r.familyKnown ? r.family : `${r.family} (not recognised)`],
    ['layout', `${r.layout} — ${r.layoutDescription}`],
    ['layers', String(r.numLayers)],
    ['MoE layers', r.moeLayers.length ? `${r.moeLayers.length}: [${r.moeLayers.join(', ')}]` : 'none'],
    ['dense MLP layers', r.denseMlpLayers.length ? `[${r.denseMlpLayers.join(', ')}]` : 'none'],
    ['experts per MoE layer', r.numExperts ? String(r.numExperts) : '-'],
    ['top-k', r.topK ? String(r.topK) : '-'],
    ['hidden size', String(r.hiddenSize)],
    ['expert intermediate size', r.moeIntermediateSize ? String(r.moeIntermediateSize) : '-'],
    [
      'shared experts',
      r.sharedExperts
        ? `${r.sharedExperts.count} (intermediate ${r.sharedExperts.intermediateSize}${r.sharedExperts.sigmoidGate ? ', sigmoid gate' : ''})`
        : 'none',
    ],
    ['gated', r.gated === null ? '?' : r.gated ? `yes (${r.activation})` : `no (${r.activation})`],
    ['gate/up', r.gateUp ?? '-'],
    ['routing', r.routing ? describeRouting(r.routing) : '-'],
    [
      'dtypes',
      Object.entries(r.dtypes)
        .map(([k, v]) => `${k}×${v}`)
        .join(', '),
    ],
    ['quantization', r.quantization ? `${r.quantization.method} ${JSON.stringify(r.quantization.details)}` : 'none'],
    ['tensors / files', `${r.numTensors} in ${r.numFiles} file(s)`],
    ['total bytes', `${r.totalBytes} (${formatBytes(r.totalBytes)})`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  const lines = rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`);
  for (const warn of r.warnings) lines.push(`warning: ${warn}`);
  return lines.join('\n');
}

function describeRouting(r: FamilyFacts['routing']): string {
  const parts = [`${r.scoreFunc}`, `top-${r.topK}`];
  if (r.nGroup > 1) parts.push(`groups ${r.topkGroup}/${r.nGroup}`);
  if (r.correctionBias) parts.push('correction bias');
  if (r.routerBias) parts.push('router bias');
  if (r.normTopkProb) parts.push('renormalised');
  if (r.routedScalingFactor !== 1) parts.push(`× ${r.routedScalingFactor}`);
  return parts.join(', ');
}
