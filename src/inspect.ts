/**
 * `moekit inspect`: what a checkpoint is — family (config.json), expert layout (tensor names),
 * MoE layers, expert sizes, routing, dtypes, quantization, bytes — without reading tensor data.
 */
import type { Checkpoint, TensorInfo } from './safetensors/reader.js';
import { familyFacts, type FamilyFacts } from './family.js';

export interface LayoutSignature {
  /** layout id, as `convert --to` names it where it is a target */
  id: string;
  description: string;
  /** matches an expert tensor; group 1 = layer index */
  pattern: RegExp;
  /** gate/up arrangement when fused */
  gateUp: 'separate' | 'concatenated' | 'interleaved';
  /** how to count experts in one layer from the matching tensors */
  experts: 'per-tensor' | 'dim0';
}

/** Expert layouts recognised from tensor names (sources cited in converters/). */
export const LAYOUT_SIGNATURES: LayoutSignature[] = [
  { id: 'hf-mixtral', description: 'HF per-expert block_sparse_moe.experts.<e>.w1/w3/w2', pattern: /layers\.(\d+)\.block_sparse_moe\.experts\.\d+\.w[13]\.weight$/, gateUp: 'separate', experts: 'per-tensor' },
  { id: 'hf-per-expert', description: 'HF per-expert mlp.experts.<e>.gate_proj/up_proj/down_proj', pattern: /layers\.(\d+)\.mlp\.experts\.\d+\.(?:gate|up)_proj\.weight$/, gateUp: 'separate', experts: 'per-tensor' },
  { id: 'hf-gpt-oss', description: 'HF GPT-OSS fused mlp.experts.gate_up_proj [E,H,2I] (interleaved) + biases', pattern: /layers\.(\d+)\.mlp\.experts\.gate_up_proj(?:_blocks)?$/, gateUp: 'interleaved', experts: 'dim0' },
  { id: 'hf-llama4', description: 'HF Llama4 fused feed_forward.experts.gate_up_proj [E,H,2I]', pattern: /layers\.(\d+)\.feed_forward\.experts\.gate_up_proj$/, gateUp: 'concatenated', experts: 'dim0' },
  { id: 'hf-granite', description: 'HF Granite-MoE block_sparse_moe.input_linear [E,2I,H]', pattern: /layers\.(\d+)\.block_sparse_moe\.input_linear\.weight$/, gateUp: 'concatenated', experts: 'dim0' },
  { id: 'nemo', description: 'NeMo Automodel stacked experts.gate_and_up_projs [E,H,2I]', pattern: /layers\.(\d+)\..*experts\.gate_and_up_projs$/, gateUp: 'concatenated', experts: 'dim0' },
  { id: 'te', description: 'Transformer Engine GroupedLinear experts.linear_fc1.weight<i>', pattern: /layers\.(\d+)\.mlp\.experts\.linear_fc1\.weight\d+$/, gateUp: 'concatenated', experts: 'per-tensor' },
  { id: 'megatron', description: 'Megatron SequentialMLP experts.local_experts.<i>.linear_fc1', pattern: /layers\.(\d+)\.mlp\.experts\.local_experts\.\d+\.linear_fc1\.weight$/, gateUp: 'concatenated', experts: 'per-tensor' },
  { id: 'megatron-grouped', description: 'Megatron legacy GroupedMLP experts.weight1 [H,E·2I]', pattern: /layers\.(\d+)\.mlp\.experts\.weight1$/, gateUp: 'concatenated', experts: 'dim0' },
  { id: 'flashfusemoe', description: 'flashfusemoe MoELayer w_up [E,2I,H] / w_down', pattern: /layers\.(\d+)\..*\bw_up$/, gateUp: 'concatenated', experts: 'dim0' },
];

const DENSE_MLP = /layers\.(\d+)\.(?:mlp|feed_forward)\.(?:gate_proj|up_proj|linear_fc1)\.weight$/;

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
  if (hasF8) return { method: 'fp8', details: { storage: hasScaleInv ? 'F8 + weight_scale_inv' : 'F8 tensors', note: 'no quantization_config in config.json' } };
  if (hasBlocks) return { method: 'mxfp4', details: { note: 'no quantization_config in config.json' } };
  if (hasPacked) return { method: 'pack-quantized', details: { note: 'no quantization_config in config.json' } };
  return null;
}

export async function inspectCheckpoint(ck: Checkpoint, path: string): Promise<InspectReport> {
  const config = await ck.config();
  const tensors = [...ck.tensors.values()];
  const warnings: string[] = [];
  const facts = config ? familyFacts(config) : undefined;
  if (!config) warnings.push('no config.json next to the checkpoint: family and routing unknown');
  else if (!facts!.known) warnings.push(`model_type '${facts!.modelType}' is not a family moekit knows; layout and sizes come from tensor names only`);

  // Expert layout from tensor names.
  const hits = new Map<string, { sig: LayoutSignature; layers: Map<number, TensorInfo[]> }>();
  for (const t of tensors) {
    for (const sig of LAYOUT_SIGNATURES) {
      const m = sig.pattern.exec(t.name);
      if (!m) continue;
      let h = hits.get(sig.id);
      if (!h) hits.set(sig.id, (h = { sig, layers: new Map() }));
      const layer = Number(m[1]);
      let l = h.layers.get(layer);
      if (!l) h.layers.set(layer, (l = []));
      l.push(t);
      break;
    }
  }
  const denseLayers = new Set<number>();
  for (const t of tensors) {
    const m = DENSE_MLP.exec(t.name);
    if (m) denseLayers.add(Number(m[1]));
  }
  let layout = 'dense';
  let layoutDescription = 'no expert tensors (dense MLP)';
  let gateUp: string | null = null;
  const expertsPerLayer: Record<string, number> = {};
  let moeLayers: number[] = [];
  if (hits.size > 1) {
    warnings.push(`expert tensors of several layouts found (${[...hits.keys()].join(', ')}); reporting the first`);
  }
  const first = [...hits.values()][0];
  let moeI = 0;
  if (first) {
    const { sig } = first;
    layout = sig.id;
    layoutDescription = sig.description;
    gateUp = sig.gateUp;
    if (sig.id === 'hf-gpt-oss' && facts && facts.family !== 'gpt_oss') {
      layout = 'hf-fused';
      layoutDescription = 'HF transformers v5 fused mlp.experts.gate_up_proj [E,2I,H]';
      gateUp = 'concatenated';
    }
    moeLayers = [...first.layers.keys()].sort((a, b) => a - b);
    for (const [layer, ts] of first.layers) {
      if (sig.experts === 'dim0') {
        expertsPerLayer[layer] = ts[0]!.shape[0] ?? 0;
      } else {
        const ids = new Set(ts.map((t) => /\.(\d+)\.(?:w[13]|gate_proj|up_proj|linear_fc1)\.weight$/.exec(t.name)?.[1] ?? /weight(\d+)$/.exec(t.name)?.[1]));
        expertsPerLayer[layer] = ids.size;
      }
      for (const m of moeLayers) denseLayers.delete(m);
    }
    // intermediate size from a gate/up tensor of the first MoE layer
    const ts = first.layers.get(moeLayers[0]!)!;
    const t0 = ts[0]!;
    if (sig.id === 'hf-mixtral' || sig.id === 'hf-per-expert') moeI = t0.shape[0]!;
    else if (sig.id === 'te' || sig.id === 'megatron') moeI = t0.shape[0]! / 2;
    else if (layout === 'hf-gpt-oss' || layout === 'hf-llama4' || layout === 'nemo') moeI = t0.name.endsWith('_blocks') ? t0.shape[1]! / 2 : t0.shape[2]! / 2;
    else if (layout === 'hf-granite' || layout === 'hf-fused' || layout === 'flashfusemoe') moeI = t0.shape[1]! / 2;
    else if (layout === 'megatron-grouped') moeI = facts?.moeIntermediateSize ?? 0;
  } else if (denseLayers.size === 0) {
    layout = 'unknown';
    layoutDescription = 'no expert or dense-MLP tensors moekit recognises';
    warnings.push('no expert layout recognised from tensor names: not an MoE checkpoint moekit knows');
  }
  const counts = new Set(Object.values(expertsPerLayer));
  if (counts.size > 1) warnings.push(`layers have different expert counts: ${JSON.stringify(expertsPerLayer)}`);
  const numExperts = counts.size ? Math.max(...counts) : 0;
  if (facts && facts.numExperts && numExperts && facts.numExperts !== numExperts && layout !== 'megatron-grouped') {
    warnings.push(`config.json says ${facts.numExperts} experts, tensors hold ${numExperts}`);
  }
  if (facts && facts.moeIntermediateSize && moeI && facts.moeIntermediateSize !== moeI) {
    warnings.push(`config.json says expert intermediate size ${facts.moeIntermediateSize}, tensors say ${moeI}`);
  }
  if (facts) {
    const cfgMoe = Array.from({ length: facts.numLayers }, (_, i) => i).filter((i) => facts.isMoeLayer(i));
    if (moeLayers.length && facts.known && JSON.stringify(cfgMoe) !== JSON.stringify(moeLayers)) {
      warnings.push(`config.json implies MoE layers [${cfgMoe}], tensors hold experts in [${moeLayers}]`);
    }
  }
  const dtypes: Record<string, number> = {};
  for (const t of tensors) dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
  let sharedExperts: InspectReport['sharedExperts'] = null;
  const sharedT = tensors.find((t) => /\.(?:shared_experts?|shared_expert)\.(?:gate_proj|up_proj|w_up|linear_fc1)\.weight$/.test(t.name));
  if (sharedT) {
    const fc1 = sharedT.name.includes('linear_fc1');
    sharedExperts = {
      count: facts?.shared?.count ?? 1,
      intermediateSize: fc1 ? sharedT.shape[0]! / 2 : sharedT.shape[0]!,
      sigmoidGate: tensors.some((t) => /shared_expert_gate\.weight$|shared_experts\.gate_weight$/.test(t.name)),
    };
  }
  const numLayers = facts?.numLayers || Math.max(-1, ...tensors.map((t) => Number(/layers\.(\d+)\./.exec(t.name)?.[1] ?? -1))) + 1;
  return {
    path,
    family: facts?.family ?? 'unknown',
    modelType: facts?.modelType ?? null,
    familyKnown: facts?.known ?? false,
    layout,
    layoutDescription,
    numLayers,
    moeLayers,
    denseMlpLayers: [...denseLayers].sort((a, b) => a - b),
    numExperts,
    expertsPerLayer,
    topK: moeLayers.length ? (facts?.topK ?? 0) : 0,
    hiddenSize: facts?.hiddenSize ?? 0,
    moeIntermediateSize: moeI || (moeLayers.length ? (facts?.moeIntermediateSize ?? 0) : 0),
    sharedExperts,
    gated: layout === 'unknown' ? null : facts ? facts.activation.kind !== 'relu2' : null,
    gateUp: moeLayers.length ? gateUp : null,
    routing: moeLayers.length && facts ? facts.routing : null,
    activation: facts ? facts.activation.kind : null,
    dtypes,
    quantization: detectQuantization(config, tensors),
    totalBytes: ck.totalBytes,
    numTensors: tensors.length,
    numFiles: ck.files.length,
    warnings,
  };
}

export function formatBytes(n: number): string {
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
    ['shared experts', r.sharedExperts ? `${r.sharedExperts.count} (intermediate ${r.sharedExperts.intermediateSize}${r.sharedExperts.sigmoidGate ? ', sigmoid gate' : ''})` : 'none'],
    ['gated', r.gated === null ? '?' : r.gated ? `yes (${r.activation})` : `no (${r.activation})`],
    ['gate/up', r.gateUp ?? '-'],
    ['routing', r.routing ? describeRouting(r.routing) : '-'],
    ['dtypes', Object.entries(r.dtypes).map(([k, v]) => `${k}×${v}`).join(', ')],
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
