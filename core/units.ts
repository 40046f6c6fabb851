/**
 * The one place numbers from users are read: sizes (`512MiB`, `4GiB`,
 * `64G`, `1.5T`), durations (`500ms`, `45s`, `90m`, `12h`, `30d`, `2w`) and
 * whole counts, each checked against a stated range by {@link parseSize},
 * {@link parseDuration} and {@link parseCount}; and sizes printed with
 * binary units. Decimal-looking suffixes (`G`, `GB`) are read as binary
 * units, as disk and memory tools conventionally do.
 *
 * The rule for flags: a size or a duration must carry its unit. A bare
 * number (`--memory 512`, `--older-than 30`, `--wait 1.5`) is refused with
 * a hint that shows it with a unit, because guessing bytes or seconds has
 * wiped caches and made 512-byte VMs. (A bare byte count in a cove.yaml
 * `size`/`memory` field stays accepted: {@link trySize}.)
 *
 * @example
 * ```ts
 * import { formatSize, parseCount, parseDuration, parseSize } from "./units.ts";
 * parseSize("4GiB", "--memory"); // 4294967296
 * parseDuration("90s", "--wait"); // 90000 (milliseconds)
 * parseCount("4", "--concurrency", { min: 1, max: 64 }); // 4
 * formatSize(1536 * 1024 * 1024); // "1.5GiB"
 * ```
 * @module
 */
import { usageError } from "./errors.ts";

/** An inclusive range a value must lie in; either end may be left open. */
export interface Range {
  min?: number;
  max?: number;
}

const UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 2 ** 10,
  kb: 2 ** 10,
  kib: 2 ** 10,
  m: 2 ** 20,
  mb: 2 ** 20,
  mib: 2 ** 20,
  g: 2 ** 30,
  gb: 2 ** 30,
  gib: 2 ** 30,
  t: 2 ** 40,
  tb: 2 ** 40,
  tib: 2 ** 40,
};

/** The pattern a size string must match; shared with the JSON Schema. */
export const SIZE_PATTERN = "^[0-9]+(\\.[0-9]+)?\\s*([KkMmGgTt]([Ii]?[Bb])?|[Bb])?$";
const SIZE_RE = new RegExp(SIZE_PATTERN);

/** Returns the byte count of a size, or undefined if it is not a size. */
export function trySize(input: string | number): number | undefined {
  if (typeof input === "number") {
    return Number.isSafeInteger(input) && input >= 0 ? input : undefined;
  }
  const s = input.trim();
  if (!SIZE_RE.test(s)) return undefined;
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$/.exec(s)!;
  const mult = UNITS[m[2].toLowerCase()];
  if (mult === undefined) return undefined;
  const n = Math.round(Number(m[1]) * mult);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** The range of a size, and whether a bare number is refused (flags: yes). */
export interface SizeRange extends Range {
  /** Refuse a bare number ("use a unit: 512MiB"); flags set this, spec fields do not. */
  requireUnit?: boolean;
}

/**
 * Parses a size and checks it against `range`. With `requireUnit` (every
 * flag) a bare number is refused ("use a unit: 512MiB"); anything outside
 * the range is refused with the limit in the message.
 *
 * @param input what the user typed (a number from a cove.yaml counts as bytes)
 * @param what the flag or field, named in the message
 * @param range the smallest and largest byte count allowed, and requireUnit
 * @returns the byte count
 */
export function parseSize(input: string | number, what = "size", range: SizeRange = {}): number {
  if (range.requireUnit && typeof input === "string" && /^\s*[0-9]+(\.[0-9]+)?\s*$/.test(input)) {
    throw usageError(
      "usage.size",
      `${what}: '${input.trim()}' has no unit`,
      `use a unit: ${input.trim()}MiB`,
    );
  }
  const n = trySize(input);
  if (n === undefined) {
    throw usageError(
      "usage.size",
      `${what}: '${input}' is not a size`,
      "use a number with a unit, like 512MiB, 4GiB or 64G",
    );
  }
  checkRange(n, what, range, formatSize, "usage.size");
  return n;
}

const DURATION_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** The longest wait: 24 days, just under what a timer can take (2^31-1 ms). */
export const MAX_DURATION_MS = 24 * 86_400_000;

/**
 * Parses a duration such as `500ms`, `45s`, `90m`, `12h`, `30d` or `2w` into
 * milliseconds and checks it against `range` (default: at least 0; timers' flags cap
 * it at {@link MAX_DURATION_MS}). The unit is required: `30` and `''` are refused.
 *
 * @param input what the user typed
 * @param what the flag, named in the message
 * @param range the shortest and longest duration allowed, in milliseconds
 * @returns milliseconds
 */
export function parseDuration(input: string, what = "duration", range: Range = {}): number {
  const s = input.trim();
  if (/^[0-9]+(\.[0-9]+)?$/.test(s)) {
    throw usageError(
      "usage.duration",
      `${what}: '${s}' has no unit`,
      `use a unit: ${s}s, ${s}m, ${s}h or ${s}d`,
    );
  }
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)$/i.exec(s);
  if (!m) {
    throw usageError(
      "usage.duration",
      `${what}: '${input}' is not a duration`,
      "use a number with a unit: 500ms, 45s, 90m, 12h, 30d or 2w",
    );
  }
  const ms = Math.round(Number(m[1]) * DURATION_MS[m[2].toLowerCase()]);
  checkRange(
    ms,
    what,
    { min: range.min ?? 0, max: range.max },
    formatDuration,
    "usage.duration",
  );
  return ms;
}

/**
 * Parses a whole number (a count: CPUs, concurrent transfers, bytes to
 * replay) and checks it against `range`. `x`, `1.5`, `''` and `NaN` are
 * refused.
 *
 * @param input what the user typed
 * @param what the flag, named in the message
 * @param range the smallest and largest count allowed
 * @returns the count
 */
export function parseCount(input: string | number, what: string, range: Range): number {
  const text = String(input).trim();
  const n = typeof input === "number" ? input : /^[+-]?[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw usageError("usage.number", `${what}: '${text}' is not a whole number`, rangeText(range));
  }
  checkRange(n, what, range, String, "usage.number");
  return n;
}

function rangeText(r: Range, show: (n: number) => string = String): string {
  if (r.min !== undefined && r.max !== undefined) return `use ${show(r.min)} to ${show(r.max)}`;
  if (r.min !== undefined) return `use at least ${show(r.min)}`;
  if (r.max !== undefined) return `use at most ${show(r.max)}`;
  return "use a whole number";
}

function checkRange(
  n: number,
  what: string,
  r: Range,
  show: (n: number) => string,
  code: string,
): void {
  if (r.min !== undefined && n < r.min) {
    throw usageError(code, `${what}: ${show(n)} is less than ${show(r.min)}`, rangeText(r, show));
  }
  if (r.max !== undefined && n > r.max) {
    throw usageError(code, `${what}: ${show(n)} is more than ${show(r.max)}`, rangeText(r, show));
  }
}

/** Prints milliseconds with the largest unit that keeps a whole number (`90s`, `2m`, `1500ms`). */
export function formatDuration(ms: number): string {
  for (const u of ["w", "d", "h", "m", "s"]) {
    const v = ms / DURATION_MS[u];
    if (v >= 1 && Number.isInteger(v)) return `${v}${u}`;
  }
  return `${ms}ms`;
}

/** Prints bytes with the largest binary unit that keeps a value >= 1. */
export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const text = Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, "");
  return `${text}${units[i]}`;
}
