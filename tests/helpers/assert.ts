/**
 * Test assertions: thin, typed wrappers over `node:assert/strict` (JSR's
 * @std/assert is unreachable from our build machines, and node:assert ships
 * with Deno).
 * @module
 */
import nodeAssert from "node:assert/strict";
import { CoveError } from "../../core/errors.ts";

/** Asserts that `cond` is truthy. */
export function assert(cond: unknown, msg?: string): asserts cond {
  nodeAssert.ok(cond, msg);
}

/** Asserts deep, strict equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg);
}

/** Asserts that `s` matches `re`. */
export function assertMatch(s: string, re: RegExp, msg?: string): void {
  nodeAssert.match(s, re, msg);
}

/** Asserts that `fn` rejects with an instance of `cls`; returns the error. */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  cls: new (...args: never[]) => E,
  msg?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof cls) return e;
    throw new Error(`expected ${cls.name}, got ${e instanceof Error ? e.stack : String(e)}`);
  }
  throw new Error(msg ?? `expected a rejection with ${cls.name}`);
}

/** Asserts that `fn` throws an instance of `cls`; returns the error. */
export function assertThrows<E extends Error>(
  fn: () => unknown,
  cls: new (...args: never[]) => E,
  msg?: string,
): E {
  try {
    fn();
  } catch (e) {
    if (e instanceof cls) return e;
    throw new Error(`expected ${cls.name}, got ${e instanceof Error ? e.stack : String(e)}`);
  }
  throw new Error(msg ?? `expected a throw of ${cls.name}`);
}

/** What {@link assertCoveError} checks of the error, besides its class. */
export interface CoveErrorWant {
  /** The stable code, e.g. `usage.size`. */
  code?: string;
  /** The exit code. */
  exit?: number;
  /** A pattern the message must match. */
  message?: RegExp;
}

function checkCoveError(e: unknown, want: CoveErrorWant): CoveError {
  if (!(e instanceof CoveError)) {
    throw new Error(`expected a CoveError, got ${e instanceof Error ? e.stack : String(e)}`);
  }
  if (want.code !== undefined) nodeAssert.equal(e.code, want.code, e.message);
  if (want.exit !== undefined) nodeAssert.equal(e.exit, want.exit, `exit code of: ${e.message}`);
  if (want.message !== undefined) nodeAssert.match(e.message, want.message);
  nodeAssert.ok(!e.line().includes("\n"), `not one line: ${e.line()}`);
  return e;
}

function noThrow(want: CoveErrorWant): Error {
  return new Error(
    `expected a CoveError${want.code ? ` ${want.code}` : ""}, but nothing was thrown`,
  );
}

/**
 * Asserts that `fn` fails with a one-line CoveError matching `want`, and
 * returns the error. The one helper for CoveErrors: an async `fn` gives a
 * promise, a sync one checks at once.
 */
export function assertCoveError(
  fn: () => Promise<unknown>,
  want?: CoveErrorWant,
): Promise<CoveError>;
export function assertCoveError(fn: () => unknown, want?: CoveErrorWant): CoveError;
export function assertCoveError(
  fn: () => unknown,
  want: CoveErrorWant = {},
): CoveError | Promise<CoveError> {
  let result: unknown;
  try {
    result = fn();
  } catch (e) {
    return checkCoveError(e, want);
  }
  if (result instanceof Promise) {
    return result.then(
      () => {
        throw noThrow(want);
      },
      (e) => checkCoveError(e, want),
    );
  }
  throw noThrow(want);
}
