/**
 * libuv's thread pool, as bin/moekit.js sizes it (8 threads: parallel positioned reads and writes),
 * for the benches that run moekit's code in their own process. Imported first: the pool starts on
 * its first job and reads the variable then.
 */
process.env.UV_THREADPOOL_SIZE ??= '8';
export const uvThreads = Number(process.env.UV_THREADPOOL_SIZE);
