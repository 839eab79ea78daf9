/**
 * `moekit convert` as a library call: detect the source layout, read the experts into the IR, plan
 * the target tensors and stream them into a temp folder next to the destination, then rename it
 * into place (nothing partial is ever left at the destination).
 */
import { copyFile, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { TensorStore } from '../store/types.js';
import { openStore } from '../store/registry.js';
import { writeCheckpoint, writeJsonAtomic } from '../store/safetensors/writer.js';
import { type FloatDtype, byteSize } from '../store/dtypes.js';
import { MoekitError } from '../errors.js';
import { checkDestination, tempSibling } from '../output/transaction.js';
import type { GateUpOrder, LayoutSpec } from '../engine/layout.js';
import { detectLayout, loadMeta, moekitJson, passthroughPlan, planWrite, quantizedTensors, readIR, resolveTarget, type MoekitJson } from '../engine/plan.js';
import type { WriteEntry } from '../store/safetensors/writer.js';

export interface ConvertOptions {
  /** target layout name: 'hf' or a non-HF spec id */
  to: string;
  gateUp?: GateUpOrder;
  dtype?: FloatDtype;
  maxShardSize?: number;
  jobs?: number;
  force?: boolean;
  /** fsync written files before the rename (default true; tests turn it off) */
  fsync?: boolean;
  onProgress?: (bytes: number, tensors: number, totalBytes: number, totalTensors: number) => void;
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
}

const TORCH_DTYPE: Record<FloatDtype, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };


export async function convert(src: string, dst: string, opts: ConvertOptions): Promise<ConvertSummary> {
  const t0 = Date.now();
  dst = resolve(dst);
  const dstExists = await checkDestination(dst, !!opts.force);
  const ck = await openStore(src);
  try {
    if (resolve(ck.dir) === dst) throw new MoekitError('destination', `destination ${dst} is the source folder`);
    const meta = await loadMeta(ck);
    const names = ck.names();
    const source = detectLayout(names, meta);
    if (!source) throw new MoekitError('unsupported', `${src}: no expert tensors of any layout moekit knows (a dense model? run \`moekit inspect ${src}\`)`);
    const target = resolveTarget(opts.to, meta, source);
    const srcOrder = meta.moekit?.layout === source.id ? meta.moekit.gateUp : (source.gateUp?.default ?? 'separate');
    const identity = target === source && !opts.dtype && (!opts.gateUp || opts.gateUp === srcOrder);
    let entries: WriteEntry[];
    let mk: MoekitJson | undefined;
    let gateUp: string = srcOrder;
    let moeLayers = 0;
    if (identity) {
      entries = passthroughPlan(ck);
      if (!quantizedTensors(ck)) {
        const ir = readIR(ck, source, meta);
        const p = planWrite(ck, ir, target, {});
        mk = moekitJson(ir, { ...p, gateUp: srcOrder as MoekitJson['gateUp'] }, source.id);
        moeLayers = ir.layers.length;
      }
    } else {
      const q = quantizedTensors(ck);
      if (q) {
        throw new MoekitError('unsupported', `${src} is quantized (${q}); moekit keeps quantized experts only in their own layout (--to ${source.families ? 'hf' : source.id}, a byte copy); dequantize it to convert to '${target.id}'`,
        );
      }
      const ir = readIR(ck, source, meta);
      const plan = planWrite(ck, ir, target, { gateUp: opts.gateUp, dtype: opts.dtype, jobs: opts.jobs });
      entries = plan.entries;
      mk = moekitJson(ir, plan, source.id);
      gateUp = plan.gateUp;
      moeLayers = ir.layers.length;
    }
    const totalBytes = entries.reduce((a, e) => a + byteSize(e.dtype, e.shape), 0);
    await mkdir(dirname(dst), { recursive: true });
    const tmp = tempSibling(dst);
    try {
      const res = await writeCheckpoint(tmp, entries, {
        maxShardSize: opts.maxShardSize,
        metadata: ck.metadata,
        fsync: opts.fsync,
        onProgress: opts.onProgress && ((b, n) => opts.onProgress!(b, n, totalBytes, entries.length)),
      });
      const files = [...res.files];
      if (meta.config) {
        const cfg = { ...meta.config };
        if (target.families && opts.dtype) {
          if ('torch_dtype' in cfg || !('dtype' in cfg)) cfg.torch_dtype = TORCH_DTYPE[opts.dtype];
          if ('dtype' in cfg) cfg.dtype = TORCH_DTYPE[opts.dtype];
        }
        await writeJsonAtomic(join(tmp, 'config.json'), cfg);
        files.push('config.json');
      }
      if (mk) {
        await writeJsonAtomic(join(tmp, 'moekit.json'), mk);
        files.push('moekit.json');
      }
      files.push(...(await copySideFiles(src, tmp)));
      if (dstExists) await rm(dst, { recursive: true, force: true });
      await rename(tmp, dst);
      return {
        source: src,
        destination: dst,
        family: meta.family,
        sourceLayout: source.id,
        layout: target.id,
        gateUp,
        dtype: opts.dtype ?? null,
        identity,
        moeLayers,
        tensors: entries.length,
        bytes: res.totalSize,
        files: files.sort(),
        seconds: (Date.now() - t0) / 1000,
      };
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  } finally {
    await ck.close();
  }
}

/** Tokenizer and other small files of a source folder travel along (not weights, index, config or moekit.json). */
async function copySideFiles(src: string, tmp: string): Promise<string[]> {
  let st;
  try {
    st = await stat(src);
  } catch {
    return [];
  }
  if (!st.isDirectory()) return [];
  const out: string[] = [];
  for (const name of await readdir(src)) {
    if (/\.safetensors$|\.safetensors\.index\.json$|^config\.json$|^moekit\.json$|\.moekit-tmp-|^\./.test(name)) continue;
    const s = await stat(join(src, name));
    if (!s.isFile()) continue;
    await copyFile(join(src, name), join(tmp, name));
    out.push(name);
  }
  return out;
}

export type { LayoutSpec };
