/**
 * `moekit plan`: which tensor-parallel × expert-parallel sizes can serve a checkpoint, by the
 * divisibility rules the serving engines enforce (SGLang's MoE TP/EP rules,
 * ../shared/reference/sources/sglang-moe-tp-ep-rules.md, and its error messages):
 *   - EP must divide TP (moe_tp_size = tp / ep) and the routed experts;
 *   - the expert intermediate size must split into moe_tp_size slices, and for block-quantized
 *     weights each slice must be whole blocks: (moe_intermediate_size / moe_tp_size) % block_n == 0;
 *     for group-scaled formats (MXFP4 32, NVFP4 16, int4 group) whole groups, since down_proj's
 *     input dim is the one split (moekit's rule: a scale group cannot straddle two ranks);
 *   - dense MLPs and shared experts are split over all TP ranks: (intermediate / tp) % block_n == 0
 *     ("The output_size of gate's and up's weight = … is not divisible by weight quantization block_n");
 *   - attention heads divisible by TP; KV heads divisible by TP, or TP by KV heads (replicated).
 * The block rules apply only where a dimension is actually split (a single slice may end in a partial
 * block, as unsplit checkpoints do).
 */
import { MoekitError } from '../errors.js';
import { openStore } from '../store/registry.js';

export interface PlanShape {
  experts: number;
  moeInter: number;
  /** dense-MLP / shared-expert intermediate sizes split over all TP ranks */
  denseInters: { what: string; size: number }[];
  heads?: number;
  kvHeads?: number;
  /** quantization: block_n of block FP8, or the group size along the input dim */
  quant?: { method: string; blockN: number; kind: 'block' | 'group' };
}

export interface PlanRow {
  tp: number;
  ep: number;
  moeTp: number;
  ok: boolean;
  /** the engines' failures for this combination */
  errors: string[];
}

export interface PlanReport {
  source: string;
  shape: PlanShape;
  rows: PlanRow[];
  /** the valid combinations, "TP8 × EP2" */
  valid: string[];
}

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isInteger(v) && v > 0 ? v : undefined);

function quantOf(cfg: Record<string, unknown>): PlanShape['quant'] {
  const q = cfg.quantization_config as Record<string, unknown> | undefined;
  if (!q) return undefined;
  const m = String(q.quant_method ?? '');
  const b = q.weight_block_size;
  if (m === 'fp8' && Array.isArray(b) && num(b[0])) return { method: 'fp8', blockN: b[0] as number, kind: 'block' };
  if (m === 'mxfp4') return { method: 'mxfp4', blockN: 32, kind: 'group' };
  if (m === 'modelopt' || m === 'modelopt_fp4') return { method: 'nvfp4', blockN: num(q.group_size) ?? 16, kind: 'group' };
  if (m === 'compressed-tensors') {
    const groups = Object.values((q.config_groups as Record<string, { weights?: { group_size?: number } }>) ?? {});
    const g = groups.map((x) => num(x.weights?.group_size)).find((x) => x !== undefined);
    if (g) return { method: 'int4', blockN: g, kind: 'group' };
  }
  return undefined;
}

/** The sizes the rules need, from config.json (text_config for multimodal wrappers). */
export function planShape(config: Record<string, unknown>): PlanShape {
  const c = (config.text_config as Record<string, unknown> | undefined) ?? config;
  const experts = num(c.n_routed_experts) ?? num(c.num_local_experts) ?? num(c.num_experts);
  const moeInter = num(c.moe_intermediate_size) ?? num(c.intermediate_size);
  if (!experts || !moeInter)
    throw new MoekitError('unsupported', 'config.json names no routed experts or expert intermediate size; plan is for MoE checkpoints');
  const denseInters: PlanShape['denseInters'] = [];
  const shared = num(c.n_shared_experts);
  if (shared) denseInters.push({ what: 'shared experts', size: moeInter * shared });
  const sharedI = num(c.shared_expert_intermediate_size);
  if (sharedI) denseInters.push({ what: 'shared expert', size: sharedI });
  if (num(c.moe_intermediate_size) && num(c.intermediate_size) && (num(c.first_k_dense_replace) ?? 0) > 0)
    denseInters.push({ what: 'dense MLP layers', size: num(c.intermediate_size)! });
  return { experts, moeInter, denseInters, heads: num(c.num_attention_heads), kvHeads: num(c.num_key_value_heads), quant: quantOf(config) ?? quantOf(c) };
}

/** The engines' errors for one TP × EP combination (empty when it can be served). */
function checkCombination(s: PlanShape, tp: number, ep: number): string[] {
  const errs: string[] = [];
  if (tp % ep !== 0) return [`ep_size=${ep} must divide tp_size=${tp}`];
  const moeTp = tp / ep;
  if (s.experts % ep !== 0) errs.push(`num_experts=${s.experts} is not divisible by ep_size=${ep}`);
  if (s.moeInter % moeTp !== 0) errs.push(`moe_intermediate_size=${s.moeInter} is not divisible by moe_tp_size=${moeTp}`);
  else if (s.quant && moeTp > 1 && (s.moeInter / moeTp) % s.quant.blockN !== 0) {
    errs.push(
      s.quant.kind === 'block'
        ? `(moe_intermediate_size=${s.moeInter} / moe_tp_size=${moeTp}) % weight_block_size_n=${s.quant.blockN} == 0 fails`
        : `(moe_intermediate_size=${s.moeInter} / moe_tp_size=${moeTp}) is not a whole number of ${s.quant.method} scale groups of ${s.quant.blockN}`,
    );
  }
  for (const d of s.denseInters) {
    if (d.size % tp !== 0) errs.push(`${d.what}: intermediate size ${d.size} is not divisible by tp_size=${tp}`);
    else if (s.quant?.kind === 'block' && tp > 1 && (d.size / tp) % s.quant.blockN !== 0)
      errs.push(`${d.what}: the output_size of gate's and up's weight = ${d.size / tp} is not divisible by weight quantization block_n = ${s.quant.blockN}`);
  }
  if (s.heads && s.heads % tp !== 0) errs.push(`num_attention_heads=${s.heads} is not divisible by tp_size=${tp}`);
  if (s.kvHeads && s.kvHeads % tp !== 0 && tp % s.kvHeads !== 0) errs.push(`num_key_value_heads=${s.kvHeads} and tp_size=${tp}: neither divides the other`);
  return errs;
}

const SIZES = [1, 2, 4, 8, 16, 32];

/** Every TP × EP combination (TP up to `maxTp`, EP dividing TP), or only the one asked for. */
export function planTable(s: PlanShape, only?: { tp: number; ep?: number }, maxTp = 16): PlanRow[] {
  const combos = only
    ? [[only.tp, only.ep ?? 1] as const]
    : SIZES.filter((t) => t <= maxTp).flatMap((tp) => SIZES.filter((ep) => ep <= tp).map((ep) => [tp, ep] as const));
  return combos.map(([tp, ep]) => {
    const errors = checkCombination(s, tp, ep);
    return { tp, ep, moeTp: tp % ep === 0 ? tp / ep : Number.NaN, ok: errors.length === 0, errors };
  });
}

export async function plan(src: string, only?: { tp: number; ep?: number }): Promise<PlanReport> {
  const store = await openStore(src);
  try {
    const config = await store.config();
    if (!config) throw new MoekitError('bad-input', `${src}: no config.json next to the checkpoint (plan reads the model's sizes from it)`);
    const shape = planShape(config);
    const rows = planTable(shape, only);
    return { source: src, shape, rows, valid: rows.filter((r) => r.ok).map((r) => `TP${r.tp} × EP${r.ep}`) };
  } finally {
    await store.close();
  }
}
