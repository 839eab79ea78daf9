/**
 * Expert-parallel placement: which global experts each EP rank holds, and the expert-TP split of
 * the intermediate dimension, with the validation rules users hit in practice.
 *  - contiguous (Megatron-Core): rank r holds experts [r·E/N, (r+1)·E/N), local id = global − r·E/N.
 *  - round-robin: expert e lives on rank e mod N, local id = ⌊e / N⌋.
 *  - Block-FP8 with expert-TP (SGLang, moe_tp_size = tp / ep): each slice of I must be a whole
 *    number of 128-wide quantization blocks: (I / etp) % 128 == 0.
 */
import { MoekitError } from '../../errors.js';

export type Placement = 'contiguous' | 'round-robin';

export interface RankExperts {
  rank: number;
  /** global expert ids held by this rank, in local-id order (local id = index) */
  global: number[];
}

export function placeExperts(numExperts: number, ep: number, placement: Placement): RankExperts[] {
  if (!Number.isInteger(ep) || ep < 1) throw new MoekitError('usage', `--ep must be a positive integer (got ${ep})`);
  if (ep > numExperts) throw new MoekitError('usage', `--ep ${ep} is larger than the number of experts (${numExperts}); use --ep ≤ ${numExperts}`);
  if (placement === 'contiguous') {
    if (numExperts % ep !== 0) {
      const ok = divisors(numExperts).filter((d) => d > 1);
      throw new MoekitError(
        'usage',
        `${numExperts} experts do not divide evenly over --ep ${ep} with contiguous placement; use --ep ${ok.join('|')} or --placement round-robin`,
      );
    }
    const per = numExperts / ep;
    return Array.from({ length: ep }, (_, r) => ({ rank: r, global: Array.from({ length: per }, (_, j) => r * per + j) }));
  }
  const ranks: RankExperts[] = Array.from({ length: ep }, (_, r) => ({ rank: r, global: [] }));
  for (let e = 0; e < numExperts; e++) ranks[e % ep]!.global.push(e);
  return ranks;
}

function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d <= n; d++) if (n % d === 0) out.push(d);
  return out;
}

/** Check that I splits into `etp` slices (and whole FP8 blocks when block-quantized). */
export function validateEtp(inter: number, etp: number, blockSize?: number, ep?: number, tp?: number): void {
  if (!Number.isInteger(etp) || etp < 1) throw new MoekitError('usage', `--etp must be a positive integer (got ${etp})`);
  if (inter % etp !== 0) {
    const ok = divisors(inter).filter((d) => d <= 64);
    throw new MoekitError('usage', `expert intermediate size ${inter} does not split into --etp ${etp} slices; use --etp ${ok.join('|')}`);
  }
  if (blockSize && etp > 1 && (inter / etp) % blockSize !== 0) {
    // --etp 1 never cuts a block (a partial last block stays whole on its rank)
    const ok = [1, ...divisors(inter).filter((d) => d > 1 && (inter / d) % blockSize === 0)];
    const hint = tp && ep ? ` (with tp ${tp}: moe_tp_size = tp / ep, so choose ep so that tp / ep is one of those; a larger EP usually fixes it)` : '';
    throw new MoekitError(
      'usage',
      `block-quantized weights: (I / etp) % ${blockSize} = (${inter} / ${etp}) % ${blockSize} ≠ 0, so a slice would cut a ${blockSize}×${blockSize} scale block; ` +
        `use --etp ${ok.join('|')}${hint}`,
    );
  }
}

/** The rank folder name for an EP/ETP rank. */
export function rankDirName(ep: number, epSize: number, etp: number, etpSize: number): string {
  return etpSize > 1 ? `ep${ep}-etp${etp}` : `ep${ep}-of-${epSize}`;
}
