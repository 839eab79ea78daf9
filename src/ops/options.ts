/** Options every writing operation takes (convert, shard, reshard, merge, upcycle). */
export interface WriteOptions {
  /** split each checkpoint into weight files of at most this many bytes */
  maxShardSize?: number;
  /** expert slabs assembled at once (default 2, fewer under the memory budget) */
  jobs?: number;
  /** bytes the run may hold (--max-memory): the executor keeps fewer slabs in flight, or refuses */
  maxMemory?: number;
  /** replace an earlier moekit output at the destination */
  force?: boolean;
  /** fsync written files before the rename (default true; tests turn it off) */
  fsync?: boolean;
  /** plan only: return the summary and the plan, write nothing */
  dryRun?: boolean;
  onProgress?: (bytes: number, totalBytes: number) => void;
}
