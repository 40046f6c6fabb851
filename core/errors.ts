/**
 * The one error type of cove. Every failure a user can cause or meet is a
 * {@link CoveError}: a stable machine code, a one-line message, an optional
 * hint saying what to do, and the process exit code the CLI uses.
 *
 * @example
 * ```ts
 * throw new CoveError("vm.not_found", "no VM named 'dev'", {
 *   hint: "run 'cove list' to see your VMs",
 *   exit: ExitCode.NotFound,
 * });
 * ```
 * @module
 */

/** Documented process exit codes (see README, "Exit codes"). */
export const ExitCode = {
  /** Success. */
  Ok: 0,
  /** A generic failure: I/O, an engine error, a guest failure. */
  Failure: 1,
  /** Usage or validation error: bad flags, a bad spec, a bad name. */
  Usage: 2,
  /** The named VM, image or reference does not exist. */
  NotFound: 3,
  /** The VM is in the wrong state for this (running, not running, locked). */
  State: 4,
  /** The host cannot do this: missing binary, firmware, entitlement, engine. */
  Host: 5,
  /** A network or registry failure: unreachable host, auth, a dropped download. */
  Network: 6,
  /** Interrupted by a signal. */
  Interrupted: 130,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** Options for a {@link CoveError}. */
export interface CoveErrorOptions {
  /** What the user can do about it; printed after the message. */
  hint?: string;
  /** Process exit code; defaults to {@link ExitCode.Failure}. */
  exit?: ExitCode;
  /** The underlying error, kept for `--debug`. */
  cause?: unknown;
}

/** A failure with a stable code, a one-line message and a hint. */
export class CoveError extends Error {
  readonly code: string;
  readonly hint?: string;
  readonly exit: ExitCode;

  constructor(code: string, message: string, opts: CoveErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "CoveError";
    this.code = code;
    this.hint = opts.hint;
    this.exit = opts.exit ?? ExitCode.Failure;
  }

  /** The single line shown to users: message, then the hint if any. */
  line(): string {
    return this.hint ? `${this.message} (${this.hint})` : this.message;
  }

  /** Stable JSON shape used by `--format json` error output. */
  toJSON(): { code: string; message: string; hint?: string; exit: number } {
    return { code: this.code, message: this.message, hint: this.hint, exit: this.exit };
  }
}

/** Shorthand for a usage/validation error (exit code 2). */
export function usageError(code: string, message: string, hint?: string): CoveError {
  return new CoveError(code, message, { hint, exit: ExitCode.Usage });
}

/** Turns any thrown value into a CoveError, mapping common OS errors to clear lines. */
export function toCoveError(err: unknown, context?: string): CoveError {
  if (err instanceof CoveError) return err;
  const where = context ? `${context}: ` : "";
  if (err instanceof Deno.errors.NotFound) {
    return new CoveError("io.not_found", `${where}${firstLine(err.message)}`, {
      exit: ExitCode.NotFound,
      cause: err,
    });
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return new CoveError("io.permission", `${where}permission denied: ${firstLine(err.message)}`, {
      hint: "check the ownership and permissions of the path",
      cause: err,
    });
  }
  if (err instanceof Error && /ENOSPC|No space left/i.test(err.message)) {
    return new CoveError("io.no_space", `${where}the disk is full`, {
      hint: "free some space and retry; nothing partial was kept",
      cause: err,
    });
  }
  const msg = err instanceof Error ? err.message : String(err);
  return new CoveError("internal", `${where}${firstLine(msg)}`, { cause: err });
}

function firstLine(s: string): string {
  return s.split("\n")[0];
}
