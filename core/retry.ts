/**
 * The one retry policy of every HTTP caller (image downloads, the OCI
 * registry client): bounded exponential backoff with jitter that honours
 * a server's `Retry-After`, and the one stall timeout (no bytes for this
 * long ends an attempt).
 *
 * The policy is data ({@link RetryPolicy}); {@link retryDelay} turns an
 * attempt number into a wait, and {@link withRetry} runs an operation under
 * it. The stall timeout is 30 s unless `COVE_STALL_TIMEOUT` says otherwise.
 * @module
 */
import { parseDuration } from "./units.ts";

/** How often and how long to retry. */
export interface RetryPolicy {
  /** Retries after the first attempt. */
  retries: number;
  /** The first delay in ms; it doubles each retry. */
  baseMs: number;
  /** No computed delay is longer than this. */
  maxMs: number;
  /** A server's `Retry-After` is honoured up to this long. */
  maxRetryAfterMs: number;
}

/** The default: 4 retries, 0.5 s doubling to at most 15 s, `Retry-After` up to 30 s. */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  retries: 4,
  baseMs: 500,
  maxMs: 15_000,
  maxRetryAfterMs: 30_000,
});

/**
 * The default policy with some fields replaced (undefined fields keep the
 * default). `COVE_RETRIES` (an integer from 0 to 20) replaces the default
 * retry count.
 */
export function retryPolicy(over: Partial<RetryPolicy> = {}): RetryPolicy {
  const p: RetryPolicy = { ...DEFAULT_RETRY_POLICY };
  const env = Deno.env.get("COVE_RETRIES");
  if (env && /^\d+$/.test(env.trim()) && Number(env) <= 20) p.retries = Number(env);
  for (const k of Object.keys(p) as (keyof RetryPolicy)[]) {
    const v = over[k];
    if (v !== undefined && Number.isFinite(v) && v >= 0) p[k] = v;
  }
  p.retries = Math.floor(p.retries);
  return p;
}

/**
 * Parses a `Retry-After` header (delta seconds or an HTTP date) into
 * milliseconds from `now`; undefined when absent or unreadable.
 */
export function parseRetryAfter(
  value: string | null | undefined,
  now = Date.now(),
): number | undefined {
  if (value === null || value === undefined) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  if (!/[a-z]/i.test(v)) return undefined;
  const t = Date.parse(v);
  if (!Number.isFinite(t)) return undefined;
  return Math.max(0, t - now);
}

/**
 * The wait before retry number `attempt` (1-based): `baseMs * 2^(attempt-1)`
 * capped at `maxMs`, times a jitter in [0.75, 1.25); or the server's
 * `Retry-After` (capped at `maxRetryAfterMs`) when it gave one.
 */
export function retryDelay(
  policy: RetryPolicy,
  attempt: number,
  retryAfterMs?: number,
  random: () => number = Math.random,
): number {
  if (retryAfterMs !== undefined && Number.isFinite(retryAfterMs) && retryAfterMs >= 0) {
    return Math.min(retryAfterMs, policy.maxRetryAfterMs);
  }
  const base = Math.min(policy.baseMs * 2 ** Math.max(0, attempt - 1), policy.maxMs);
  return Math.min(base * (0.75 + random() * 0.5), policy.maxMs);
}

/** An error that carries the server's `Retry-After` for {@link withRetry}. */
export interface RetryAfterCarrier {
  retryAfterMs?: number;
}

/** Sleeps `ms`, or until `signal` aborts (then throws its reason). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const done = () => {
      signal?.removeEventListener("abort", abort);
      resolve();
    };
    const t = setTimeout(done, ms);
    const abort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", abort, { once: true });
  });
}

/** Options of {@link withRetry}. */
export interface WithRetryOptions {
  policy: RetryPolicy;
  /** Whether a failure is worth another attempt. */
  retryable: (err: unknown) => boolean;
  /** Told before each wait: the failure, the retry number (1-based), the wait in ms. */
  onRetry?: (err: unknown, retry: number, waitMs: number) => void;
  /** The server's `Retry-After` for a failure, if it carries one. */
  retryAfter?: (err: unknown) => number | undefined;
  signal?: AbortSignal;
}

/**
 * Runs `fn` (given the 1-based attempt number) until it succeeds, fails
 * with something not retryable, or the policy's retries are spent; then
 * throws the last failure. Aborting `signal` throws its reason at once.
 */
export async function withRetry<T>(
  fn: (attempt: number) => Promise<T>,
  opts: WithRetryOptions,
): Promise<T> {
  for (let attempt = 1;; attempt++) {
    opts.signal?.throwIfAborted();
    try {
      return await fn(attempt);
    } catch (e) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      if (attempt > opts.policy.retries || !opts.retryable(e)) throw e;
      const after = opts.retryAfter?.(e) ?? (e as RetryAfterCarrier | undefined)?.retryAfterMs;
      const wait = retryDelay(opts.policy, attempt, after);
      opts.onRetry?.(e, attempt, wait);
      await sleep(wait, opts.signal);
    }
  }
}

/** The default stall timeout: no bytes for this long ends an attempt. */
export const DEFAULT_STALL_TIMEOUT_MS = 30_000;

/**
 * The stall timeout in ms: `COVE_STALL_TIMEOUT` (a duration such as `30s`,
 * `1500ms` or `2m`; a bare number is seconds), else the older
 * `COVE_DOWNLOAD_TIMEOUT` (seconds), else 30 s. Unreadable values fall
 * back to the default.
 */
export function stallTimeoutMs(): number {
  for (const name of ["COVE_STALL_TIMEOUT", "COVE_DOWNLOAD_TIMEOUT"]) {
    const v = Deno.env.get(name);
    if (!v) continue;
    try {
      // A bare number is seconds here (an environment variable, not a flag).
      const ms = parseDuration(/^\d+(\.\d+)?$/.test(v.trim()) ? `${v.trim()}s` : v, name);
      if (ms > 0) return ms;
    } catch { /* fall through to the default */ }
  }
  return DEFAULT_STALL_TIMEOUT_MS;
}

/** Seconds for a message: "30s", "1.5s". */
export function formatSeconds(ms: number): string {
  const s = ms / 1000;
  return `${Number.isInteger(s) ? s : s.toFixed(1)}s`;
}
