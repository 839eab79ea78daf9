/**
 * Sharded safetensors as torch.distributed.checkpoint's HuggingFaceStorageWriter writes them from
 * every rank (NeMo Automodel's "safetensors, sharded" checkpoints): `shard-<R>-model-<F>-of-<N>
 * .safetensors` files, each holding its rank's pieces of the tensors under their full names, with
 * the `saved_offsets` of every piece in the `DCP_SHARDING_INFO` JSON of the safetensors metadata.
 * A tensor is assembled from its pieces (their union must tile it exactly; its shape is where the
 * pieces end), read lazily like any other store.
 *
 * Sources: torch `distributed/checkpoint/_hf_utils.py` (`DCP_SHARDING_INFO`, `saved_offsets`,
 * `_gen_file_name`), `hf_storage.py`, `_consolidate_hf_safetensors.py`; NeMo Automodel
 * docs/guides/checkpointing.md; fixtures/torch/nemo_sharded_qwen3_moe (written by torch 2.11).
 */
import { readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { MoekitError } from '../../errors.js';
import { dtypeSize, numel } from '../dtypes.js';
import { readJsonIfExists } from '../json.js';
import { BaseStore } from '../base.js';
import { contiguousStrides } from '../../engine/ir.js';
import { gather, type Piece, tilingProblem } from '../torch/gather.js';
import { readAt } from '../torch/zip.js';
import type { TensorInfo, TensorStore } from '../types.js';
import { SafetensorsFile } from './reader.js';

const SHARD_FILE = /^shard-\d+-model-\d+-of-\d+\.safetensors$/;
const INFO_KEY = 'DCP_SHARDING_INFO';

interface Located {
  file: string;
  offset: number;
  at: number[];
  shape: number[];
}
interface ShardedInfo extends TensorInfo {
  pieces: Located[];
}

export class DcpShardedStore extends BaseStore implements TensorStore {
  readonly format = 'safetensors-dcp-sharded';
  readonly metadata: Record<string, string> = { format: 'pt' };
  private constructor(
    readonly dir: string,
    readonly files: string[],
    private readonly shardDir: string,
  ) {
    super();
  }

  /** Does `names` (a folder's) hold torch's sharded safetensors? */
  static holds(names: string[]): boolean {
    return names.some((n) => SHARD_FILE.test(n));
  }

  /** Open the shard files of `shardDir`; `dir` is where config.json and side files are. */
  static async open(shardDir: string, dir = shardDir): Promise<DcpShardedStore> {
    const names = (await readdir(shardDir)).filter((n) => SHARD_FILE.test(n)).sort();
    const st = new DcpShardedStore(
      resolve(dir),
      names.map((n) => resolve(shardDir, n)),
      resolve(shardDir),
    );
    const parts = new Map<string, { dtype: string; pieces: Located[] }>();
    for (const file of st.files) {
      const f = await SafetensorsFile.open(file);
      const raw = f.header.metadata?.[INFO_KEY];
      if (raw === undefined)
        throw new MoekitError(
          'bad-input',
          `${file}: a shard-*.safetensors file without ${INFO_KEY} in its metadata (not written by torch's HuggingFaceStorageWriter)`,
        );
      let info: Record<string, { saved_offsets?: unknown }>;
      try {
        info = JSON.parse(raw) as typeof info;
      } catch {
        throw new MoekitError('bad-input', `${file}: ${INFO_KEY} is not JSON`);
      }
      for (const t of f.tensorInfos()) {
        const off = info?.[t.name]?.saved_offsets ?? t.shape.map(() => 0);
        if (!Array.isArray(off) || off.length !== t.shape.length || !off.every((x) => Number.isInteger(x) && x >= 0))
          throw new MoekitError(
            'bad-input',
            `${file}: '${t.name}' has saved_offsets ${JSON.stringify(off).slice(0, 60)} that do not fit its shape [${t.shape}]`,
          );
        let p = parts.get(t.name);
        if (!p) parts.set(t.name, (p = { dtype: t.dtype, pieces: [] }));
        if (p.dtype !== t.dtype) throw new MoekitError('bad-input', `${file}: '${t.name}' is ${t.dtype} here and ${p.dtype} in another shard`);
        p.pieces.push({ file, offset: t.offset!, at: off as number[], shape: t.shape });
      }
    }
    for (const [name, p] of parts) {
      const shape = p.pieces[0]!.shape.map((_, k) => Math.max(...p.pieces.map((x) => x.at[k]! + x.shape[k]!)));
      const why = tilingProblem(shape, p.pieces);
      if (why) throw new MoekitError('bad-input', `${shardDir}: the pieces of '${name}' do not tile [${shape}]: ${why}`);
      const dtype = p.dtype as ShardedInfo['dtype'];
      const info: ShardedInfo = { name, dtype, shape, nbytes: numel(shape) * dtypeSize(dtype), pieces: p.pieces };
      if (p.pieces.length === 1) {
        info.file = p.pieces[0]!.file;
        info.offset = p.pieces[0]!.offset;
      }
      st.tensors.set(name, info);
    }
    return st;
  }

  async read(t: TensorInfo | string, start = 0, end?: number, into?: Buffer): Promise<Buffer> {
    const { info, end: e, out } = this.range<ShardedInfo>(t, start, end, into);
    const es = dtypeSize(info.dtype);
    const pieces: Piece[] = [];
    for (const p of info.pieces) {
      const fh = await this.handle(p.file);
      pieces.push({
        at: p.at,
        shape: p.shape,
        strides: contiguousStrides(p.shape),
        base: 0,
        read: (a, b, buf) => readAt(fh, p.offset + a * es, (b - a) * es, p.file, buf),
      });
    }
    return gather(info.shape, es, pieces, start, e, out);
  }

  /** config.json beside the shards, else in the folder above (a run's model/ folder) */
  async config(): Promise<Record<string, unknown> | undefined> {
    return (await readJsonIfExists(join(this.dir, 'config.json'))) ?? (await readJsonIfExists(join(this.shardDir, '..', 'config.json')));
  }
}
