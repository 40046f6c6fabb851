/**
 * Printing for the CLI: results on stdout (text or stable JSON), progress
 * and logs on stderr, errors as one line or, under `--format json`, as
 * `{"error": {code, message, hint, exit}}`. No domain logic lives here, and
 * nothing here loads the library (`mod.ts`) until an error is reported, so
 * `cove --version` and `cove help` stay cheap.
 * @module
 */
import type { CoveError } from "../mod.ts";

/** Output formats accepted by `--format`. */
export type Format = "text" | "json";

/**
 * A bad flag value found while the command line is parsed, before the
 * library is loaded. {@link reportError} reports it as the CoveError with
 * this code and the usage exit code (2).
 */
export class FlagError extends Error {
  constructor(readonly code: string, message: string, readonly hint?: string) {
    super(message);
    this.name = "FlagError";
  }
}

/** The help of every `--format` option. */
export const FORMAT_HELP = "output format: text or json";

/** Validates a --format value. */
export function parseFormat(v: string): Format {
  if (v === "text" || v === "json") return v;
  throw new FlagError("usage.format", `--format: '${v}' is not a format`, "use text or json");
}

/**
 * The output format the command line asks for, read before parsing, so a
 * failure to parse is reported in it too. `--detached` (the supervisor that
 * `cove start` launches) reports errors as JSON for its parent to read.
 */
export function requestedFormat(args: string[]): Format {
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") break;
    if (a === "--detached" || a === "--format=json") return "json";
    if (a === "--format" && args[i + 1] === "json") return "json";
  }
  return "text";
}

/** Writes a line (or lines) to stdout. */
export function out(text = ""): void {
  Deno.stdout.writeSync(new TextEncoder().encode(text.endsWith("\n") ? text : text + "\n"));
}

/** Writes stable, pretty JSON to stdout. */
export function outJson(value: unknown): void {
  out(JSON.stringify(value, null, 2));
}

/** Writes a log line to stderr. */
export function log(text: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(text.endsWith("\n") ? text : text + "\n"));
}

/** Prints rows as aligned columns with a header. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const fmt = (r: string[]) =>
    r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ");
  return [fmt(headers), ...rows.map(fmt)].join("\n");
}

/** True when --debug was given anywhere, or COVE_DEBUG is set. */
export function debugEnabled(): boolean {
  return Deno.args.includes("--debug") || !!Deno.env.get("COVE_DEBUG");
}

/**
 * Prints an error on stderr: one line, or `{"error": {code, message, hint,
 * exit}}` with format json (and the stack with --debug); returns its exit code.
 */
export async function reportError(err: unknown, format: Format = "text"): Promise<number> {
  const { CoveError: CE, ExitCode, toCoveError } = await import("../mod.ts");
  const e: CoveError = err instanceof FlagError
    ? new CE(err.code, err.message, { hint: err.hint, exit: ExitCode.Usage })
    : toCoveError(err);
  if (format === "json") log(JSON.stringify({ error: e.toJSON() }));
  else log(`cove: ${e.line()}`);
  if (debugEnabled()) {
    const inner = e.cause instanceof Error ? e.cause : e;
    log(inner.stack ?? String(inner));
  }
  return e.exit;
}
