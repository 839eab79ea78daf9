/** Benchmarks of later features (convert, shard, verify) register here; see bench.ts. */
export interface BenchContext {
  work: string;
  src: string;
  total: number;
  /** seconds for `cp -r` of src, measured in this run */
  tCp: number;
  layers: number;
  hidden: number;
  inter: number;
  experts: number;
}

export async function runExtraBenches(ctx: BenchContext): Promise<void> {
  const { benchShard } = await import('./shard-bench.js');
  await benchShard(ctx);
}
