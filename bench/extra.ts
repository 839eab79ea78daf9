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
  const { benchJobs } = await import('./jobs-bench.js');
  await benchJobs(ctx);
  if (process.env.MOEKIT_BENCH_SKIP_VERIFY !== '1') {
    // One Mixtral-8x7B-shaped bf16 layer (H 4096, I 14336, E 8, 64 tokens) on this machine's adapter.
    const { runVerifyBench, formatVerifyBench } = await import('./verify-bench.js');
    console.log('\n' + formatVerifyBench(await runVerifyBench({ dir: ctx.work })));
    // The CPU forward verify falls back to, beside torch's CPU eager f32 when torch is installed
    // (MOEKIT_PYTHON picks the interpreter), on the shape issue 10 measured (H 2048, I 5632).
    console.log('\n' + formatVerifyBench(await runVerifyBench({ dir: ctx.work, cpu: true, hidden: 2048, inter: 5632 })));
  }
}
