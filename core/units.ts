/**
 * Byte sizes: parse `512MiB`, `4GiB`, `64G`, `1.5T` or a plain byte count,
 * and print sizes with binary units. Decimal-looking suffixes (`G`, `GB`)
 * are read as binary units, as disk and memory tools conventionally do.
 *
 * @example
 * ```ts
 * parseSize("4GiB"); // 4294967296
 * formatSize(1536 * 1024 * 1024); // "1.5GiB"
 * ```
 * @module
 */
import { usageError } from "./errors.ts";

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

/** Parses a size or throws a usage error naming what was wrong. */
export function parseSize(input: string | number, what = "size"): number {
  const n = trySize(input);
  if (n === undefined) {
    throw usageError(
      "usage.size",
      `${what}: '${input}' is not a size`,
      "use a number with a unit, like 512MiB, 4GiB or 64G",
    );
  }
  return n;
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
