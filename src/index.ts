/**
 * moekit as a library: the operations the CLI runs, with typed options and results. Every error
 * meant for the user is a MoekitError with a stable `code` (see EXIT_CODES).
 *
 *   import { convert, verify } from 'moekit';
 *   const s = await convert('/models/Mixtral-8x7B', '/ckpt/te', { to: 'te' });
 *   const r = await verify('/ckpt/te', '/models/Mixtral-8x7B');
 */
export { inspect, inspectCheckpoint, formatInspect, type InspectReport } from './ops/inspect.js';
export { convert, type ConvertOptions, type ConvertSummary } from './ops/convert.js';
export { shard, reshard, type ShardOptions, type ShardSummary } from './ops/shard/shard.js';
export { merge, type MergeOptions, type MergeSummary } from './ops/shard/merge.js';
export { verify, formatReport, type VerifyOptions, type VerifyReport, type LayerResult } from './ops/verify.js';
export { dequant, dequantized, type DequantOptions, type DequantSummary } from './ops/dequant.js';
export { quant, type QuantOptions, type QuantSummary } from './ops/quant.js';
export { plan, planShape, planTable, type PlanReport, type PlanRow, type PlanShape } from './ops/plan.js';
export { openStore, CONTAINERS, type Container } from './store/registry.js';
export type { TensorStore, TensorInfo } from './store/types.js';
export { MoekitError, EXIT_CODES, type ErrorCode } from './errors.js';
export { LAYOUTS, TARGET_NAMES } from '../converters/index.js';
