/**
 * The model card of an output folder (README.md): Hugging Face front matter naming the base model
 * and tags, the moekit command and version that made it, and for layouts transformers does not
 * load, which framework does. The source's own card, if any, follows under its own heading.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hubRepoOf } from '../store/hub.js';
import { hubListing } from '../store/remote.js';

export const MOEKIT_VERSION = '0.1.0';

/** Who loads a layout, and how (HF layouts: transformers, as they are). */
const LOADERS: Record<string, string> = {
  te: 'Megatron-Core with Transformer Engine GroupedLinear experts (TEGroupedMLP): the expert weights are `weight<i>` per local expert',
  megatron:
    'Megatron-Core SequentialMLP experts (`local_experts.<i>.linear_fc1/fc2`); for a checkpoint Megatron loads directly, write `--to megatron --format torch_dist`',
  'megatron-grouped': "Megatron-Core's legacy GroupedMLP (`experts.weight1` / `weight2`)",
  nemo: 'NeMo Automodel (stacked `gate_and_up_projs` / `down_projs`)',
  flashfusemoe: 'flashfusemoe (`w_up` / `w_down` per MoE block)',
  'hf-fused': 'transformers 5 (fused `gate_up_proj` / `down_proj`, as it holds experts in memory)',
};

/** One line naming the framework that loads a layout's output, and how (moekit.json's `loadedBy`, the card). */
export function loaderOf(layout: string, hf: boolean, family: string): string {
  return hf
    ? `transformers (from_pretrained, as a ${family} checkpoint)`
    : `${loaderName(layout)}; moekit convert <this folder> --to hf gives the HF model back`;
}
const loaderName = (layout: string): string => {
  const [base, prefix] = layout.split('@') as [string, string | undefined];
  const who = LOADERS[base] ?? `the framework of the ${base} layout`;
  return prefix === undefined ? who : `${who}, its blocks under '${prefix}' (${prefix.includes('{n}') ? '{n}: the layer' : 'one block'})`;
};

export interface CardInfo {
  /** the command line that made the folder */
  command: string;
  source: string;
  family: string;
  layout: string;
  /** the target layout is one of the model family's own HF layouts */
  hf: boolean;
}

/** README.md for the output; `sourceDir`'s README.md (without its front matter) is kept below ours. */
export async function modelCard(c: CardInfo, sourceDir: string): Promise<string> {
  // base_model only where the source is a Hub repo: a snapshot in the HF cache, or streamed from the Hub
  const hubBase = hubRepoOf(sourceDir);
  const base = hubBase ?? c.source.replace(/\/+$/, '').split('/').pop()!;
  const loads = c.hf
    ? `transformers loads it as any ${c.family} checkpoint (\`from_pretrained\`).`
    : `Load it with ${loaderName(c.layout)}; \`moekit convert <this folder> --to hf\` gives the HF model back, bit for bit.`;
  const hub = hubListing(sourceDir);
  const original = hub
    ? hub.names.includes('README.md')
      ? (await hub.load('README.md')).toString('utf8')
      : ''
    : await readFile(join(sourceDir, 'README.md'), 'utf8').catch(() => '');
  const fm = /^---\n([\s\S]*?)\n---\n?/.exec(original);
  const body = original.slice(fm ? fm[0].length : 0).trim();
  // the source's front matter (license, language, …) is kept, but its base_model and tags
  const kept: string[] = [];
  let inDropped = false;
  for (const line of fm ? fm[1]!.split('\n') : []) {
    if (/^[A-Za-z_][\w-]*\s*:/.test(line)) inDropped = /^(base_model|tags)\s*:/.test(line);
    if (!inDropped) kept.push(line);
  }
  return [
    '---',
    ...kept,
    ...(hubBase ? [`base_model: ${hubBase}`] : []),
    'tags:',
    '- moekit',
    '- mixture-of-experts',
    `- ${c.family}`,
    ...(c.hf ? [] : [`- ${c.layout}`]),
    '---',
    '',
    `# ${base} (${c.layout} layout)`,
    '',
    `Written by moekit ${MOEKIT_VERSION} from \`${c.source}\`:`,
    '',
    `    ${c.command}`,
    '',
    loads,
    'moekit.json records the layout, the expert dimensions, the routing and a digest of them.',
    ...(body ? ['', '## Original model card', '', body] : []),
    '',
  ].join('\n');
}
