/**
 * Printing for the CLI: results on stdout (text or stable JSON), progress
 * and logs on stderr, errors as one line. No domain logic lives here.
 * @module
 */
import { CoveError, ExitCode, toCoveError } from "../core/errors.ts";

/** Output formats accepted by `--format`. */
export type Format = "text" | "json";

/** Validates a --format value. */
export function parseFormat(v: string): Format {
  if (v === "text" || v === "json") return v;
  throw new CoveError("usage.format", `--format: '${v}' is not a format`, {
    hint: "use text or json",
    exit: ExitCode.Usage,
  });
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

/** Prints an error as one line (and the stack with --debug); returns its exit code. */
export function reportError(err: unknown): number {
  const e = toCoveError(err);
  log(`cove: ${e.line()}`);
  if (debugEnabled()) {
    const inner = e.cause instanceof Error ? e.cause : e;
    log(inner.stack ?? String(inner));
  }
  return e.exit;
}
