/**
 * Registry of layout specs. Adding a layout: write converters/<id>.ts exporting `spec`, add it here,
 * add a fixture round-trip to test/convert.test.ts.
 */
import type { LayoutSpec } from '../src/engine/layout.js';
import { spec as hfMixtral } from './hf-mixtral.js';
import { spec as hfPerExpert } from './hf-per-expert.js';
import { spec as hfQwen2Moe } from './hf-qwen2-moe.js';
import { spec as hfGptOss } from './hf-gpt-oss.js';
import { spec as hfLlama4 } from './hf-llama4.js';
import { spec as hfGranite } from './hf-granite.js';
import { spec as nemo } from './nemo.js';
import { spec as te } from './te.js';
import { spec as megatron } from './megatron.js';
import { spec as megatronGrouped } from './megatron-grouped.js';
import { spec as flashfusemoe } from './flashfusemoe.js';
import { spec as hfFused, mistral4Spec as hfMistral4 } from './hf-fused.js';
import { spec as hfLaguna } from './hf-laguna.js';
import { spec as hfHyV3 } from './hf-hy-v3.js';
import { spec as hfKimiLinear } from './hf-kimi-linear.js';
import { spec as hfStep3p7 } from './hf-step3p7.js';
import { spec as hfAxk1 } from './hf-axk1.js';
import { spec as hfMinimaxM3 } from './hf-minimax-m3.js';
import { spec as hfErnie } from './hf-ernie.js';
import { spec as hfErnieVl } from './hf-ernie-vl.js';
import { spec as hfHunyuan } from './hf-hunyuan.js';
import { spec as hfExaone } from './hf-exaone.js';
import { spec as hfAfmoe } from './hf-afmoe.js';
import { spec as hfJamba } from './hf-jamba.js';
import { spec as hfJetmoe } from './hf-jetmoe.js';
import { spec as hfDbrx } from './hf-dbrx.js';
import { spec as hfGraniteShared, swaSpec as hfGraniteSwa } from './hf-granite-shared.js';
import { spec as hfGemma4 } from './hf-gemma4.js';
import { spec as hfLfm2Moe } from './hf-lfm2-moe.js';
import { spec as hfQwen3VlMoe, hubSpec as hfQwen3VlMoeHub } from './hf-qwen3-vl-moe.js';
import { spec as fastLlm } from './fast-llm.js';

export const LAYOUTS: readonly LayoutSpec[] = [
  hfMixtral,
  hfPerExpert,
  hfQwen2Moe,
  hfGptOss,
  hfLlama4,
  hfGranite,
  hfErnie,
  hfHunyuan,
  hfExaone,
  hfAfmoe,
  hfJamba,
  hfJetmoe,
  hfDbrx,
  hfGraniteShared,
  hfGraniteSwa,
  hfGemma4,
  hfLfm2Moe,
  hfQwen3VlMoe,
  hfQwen3VlMoeHub,
  // families3 (fixtures pending: fixtures/hf/families3-notes-*.md)
  hfMistral4,
  hfLaguna,
  hfHyV3,
  hfKimiLinear,
  hfStep3p7,
  hfAxk1,
  hfMinimaxM3,
  hfErnieVl,
  nemo,
  te,
  megatron,
  megatronGrouped,
  flashfusemoe,
  hfFused,
  fastLlm,
];

/** Layout names `convert --to` accepts: `hf` (the family's own HF layout) and every non-HF spec. */
export const TARGET_NAMES: readonly string[] = ['hf', ...LAYOUTS.filter((l) => !l.families).map((l) => l.id)];

export function layoutById(id: string): LayoutSpec | undefined {
  return LAYOUTS.find((l) => l.id === id);
}

/** The HF layout of a model family. */
export function hfLayoutFor(family: string): LayoutSpec | undefined {
  return LAYOUTS.find((l) => l.families?.includes(family));
}
