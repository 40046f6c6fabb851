/**
 * The one bounded-concurrency pool: runs tasks with at most `size` at once,
 * and the first failure aborts the rest (each task gets the pool's signal).
 * A size that is not a whole number from 1 up is refused, so a bad
 * `--concurrency` can never turn into "run nothing" (`Array.from({length:
 * NaN})` is empty) or "run everything at once".
 *
 * npm's p-limit and p-map were considered: neither hands each task an
 * AbortSignal that fires on the first failure, which pulls and pushes need
 * to stop their other transfers, so this stays a few lines of our own.
 *
 * @example
 * ```ts
 * import { runPool } from "./pool.ts";
 * const out = await runPool([async () => 1, async () => 2], 2);
 * // out: [1, 2]
 * ```
 * @module
 */
import { CoveError, ExitCode } from "./errors.ts";

/** A task of the pool: gets a signal that aborts when another task fails. */
export type PoolTask<T> = (signal: AbortSignal) => Promise<T>;

/** Throws unless `size` is a whole number of at least 1. */
export function checkPoolSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 1) {
    throw new CoveError(
      "internal.pool_size",
      `a pool needs a whole number of at least 1 tasks at once, not ${size}`,
      { exit: ExitCode.Failure },
    );
  }
}

/**
 * Runs `tasks` with at most `size` at once and returns their results in
 * order. The first failure aborts the others' signal, waits for the running
 * ones to settle, and is thrown.
 *
 * @param tasks the work, each a function of the pool's abort signal
 * @param size how many run at once: a whole number of at least 1
 * @returns the tasks' results, in the tasks' order
 */
export async function runPool<T>(tasks: readonly PoolTask<T>[], size: number): Promise<T[]> {
  checkPoolSize(size);
  const results: T[] = new Array(tasks.length);
  const ctl = new AbortController();
  let next = 0;
  let failed = false;
  let failure: unknown;
  const worker = async () => {
    while (next < tasks.length && !failed) {
      const i = next++;
      try {
        results[i] = await tasks[i](ctl.signal);
      } catch (e) {
        if (!failed) {
          failed = true;
          failure = e;
          ctl.abort(e);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(size, tasks.length) }, worker));
  if (failed) throw failure;
  return results;
}
