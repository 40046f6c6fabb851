/**
 * Every numeric flag of every command, with its kind and its stated range,
 * read by one validator ({@link parseFlag}) over the parsers of
 * `core/units.ts`. Sizes and durations must carry a unit; counts must be
 * whole numbers. The CLI passes each flag's text here; library callers
 * (`core/vm.ts`, the OCI pull and push) check their numbers with the same
 * rules.
 *
 * @example
 * ```ts
 * import { parseFlag } from "./flags.ts";
 * parseFlag("--concurrency", "4"); // 4
 * parseFlag("--wait", "90s"); // 90000 (milliseconds)
 * parseFlag("--memory", "4GiB"); // 4294967296 (bytes)
 * ```
 * @module
 */
import { detectHost } from "./host.ts";
import { MAX_DURATION_MS, parseCount, parseDuration, parseSize, type Range } from "./units.ts";

const MiB = 2 ** 20;

/** What a numeric flag holds: a whole count, bytes, or milliseconds. */
export type FlagKind = "count" | "size" | "duration";

/** A numeric flag's kind and range (a range end may depend on the host). */
export interface FlagRule {
  kind: FlagKind;
  min: number;
  max?: number | (() => number);
}

/** The smallest memory a VM may have. */
export const MIN_MEMORY = 128 * MiB;
/** The smallest disk a VM may have. */
export const MIN_DISK = 1 * MiB;

/** Every numeric flag, by its name. */
export const FLAG_RULES = {
  "--concurrency": { kind: "count", min: 1, max: 64 },
  "--cpus": { kind: "count", min: 1, max: 256 },
  "--replay": { kind: "count", min: 0, max: 65536 },
  "--memory": { kind: "size", min: MIN_MEMORY, max: () => detectHost().memory },
  "--disk-size": { kind: "size", min: MIN_DISK },
  "--chunk-size": { kind: "size", min: 64 * 1024, max: 2 ** 40 },
  "--upload-chunk-size": { kind: "size", min: 64 * 1024, max: 2 ** 40 },
  "--budget": { kind: "size", min: 0, max: 2 ** 50 },
  "--older-than": { kind: "duration", min: 0, max: 3650 * 86_400_000 },
  "--timeout": { kind: "duration", min: 0, max: MAX_DURATION_MS },
  "--stop-timeout": { kind: "duration", min: 0, max: MAX_DURATION_MS },
  "--wait": { kind: "duration", min: 0, max: MAX_DURATION_MS },
  "--queue-timeout": { kind: "duration", min: 0, max: MAX_DURATION_MS },
  "--ready-timeout": { kind: "duration", min: 1000, max: MAX_DURATION_MS },
  "COVE_JOB_SLOTS": { kind: "count", min: 1, max: 1024 },
} as const satisfies Record<string, FlagRule>;

/** The name of a numeric flag. */
export type FlagName = keyof typeof FLAG_RULES;

/** The range of a flag, with host-dependent ends resolved. */
export function flagRange(name: FlagName): Range {
  const r: FlagRule = FLAG_RULES[name];
  return { min: r.min, max: typeof r.max === "function" ? r.max() : r.max };
}

/**
 * Reads a numeric flag by its rule; throws a usage error (exit 2) naming
 * the flag, what was wrong and the range.
 *
 * @param name the flag, e.g. `--concurrency`
 * @param input what the user typed (a number from a library caller is taken as is)
 * @returns a count, bytes (sizes) or milliseconds (durations)
 */
export function parseFlag(name: FlagName, input: string | number): number {
  const rule: FlagRule = FLAG_RULES[name];
  const range = flagRange(name);
  switch (rule.kind) {
    case "count":
      return parseCount(input, name, range);
    case "size":
      return parseSize(input, name, { ...range, requireUnit: true });
    case "duration":
      return typeof input === "number"
        ? parseCount(input, name, range)
        : parseDuration(input, name, range);
  }
}
