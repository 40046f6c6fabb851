/**
 * YAML for `cove get` without loading the YAML library (it costs a command
 * about as much as starting Deno): {@link plainYaml} writes a value exactly
 * as `stringify(value, { lineWidth: 0 })` of the `yaml` package does, but
 * only when every part of it is plain (maps with word keys, sequences,
 * integers, booleans, null, and strings that need no quotes and cannot be
 * read back as anything else); for anything else it returns undefined, and
 * the caller uses the library. tests/unit/plain_yaml_test.ts holds it to
 * the library's output.
 * @module
 */

/** A string YAML prints without quotes and reads back as that string. */
const PLAIN = /^[A-Za-z0-9_./][A-Za-z0-9_./:@+-]*$/;
/** Plain strings that a YAML reader (1.2 core, or 1.1) would take for something else. */
const NOT_STRINGS = [
  /^(true|false|null|yes|no|on|off|y|n|~)$/i,
  /^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$/, // numbers
  /^0[xob]/i, // hex, octal, binary
  /^[-+]?\.(inf|nan)$/i,
  /^[0-9:._+-]+$/, // sexagesimal numbers, dates and times
  /:$/,
  /^[-.]/,
];
/** A map key printed plain. */
const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

class NotPlain extends Error {}

/** `value` as the yaml package's `stringify(value, { lineWidth: 0 })`, or undefined. */
export function plainYaml(value: unknown): string | undefined {
  try {
    if (!isMap(value) || Object.keys(value).length === 0) return undefined;
    return mapLines(value, "").join("\n") + "\n";
  } catch (e) {
    if (e instanceof NotPlain) return undefined;
    throw e;
  }
}

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) &&
    Object.getPrototypeOf(v) === Object.prototype;
}

function scalar(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "boolean") return String(v);
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || Object.is(v, -0)) throw new NotPlain();
    return String(v);
  }
  if (typeof v === "string") {
    if (!PLAIN.test(v) || NOT_STRINGS.some((re) => re.test(v))) throw new NotPlain();
    return v;
  }
  throw new NotPlain();
}

function mapLines(m: Record<string, unknown>, indent: string): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(m)) {
    if (v === undefined) continue; // the library leaves out undefined values
    if (!KEY.test(k) || NOT_STRINGS.some((re) => re.test(k))) throw new NotPlain();
    if (Array.isArray(v)) {
      if (v.length === 0) out.push(`${indent}${k}: []`);
      else out.push(`${indent}${k}:`, ...seqLines(v, indent + "  "));
    } else if (isMap(v)) {
      if (Object.values(v).every((x) => x === undefined)) out.push(`${indent}${k}: {}`);
      else out.push(`${indent}${k}:`, ...mapLines(v, indent + "  "));
    } else if (typeof v === "object") throw new NotPlain();
    else out.push(`${indent}${k}: ${scalar(v)}`);
  }
  return out;
}

function seqLines(items: unknown[], indent: string): string[] {
  const out: string[] = [];
  for (const v of items) {
    if (Array.isArray(v) || v === undefined) throw new NotPlain();
    if (isMap(v)) {
      const lines = mapLines(v, indent + "  ");
      if (lines.length === 0) out.push(`${indent}- {}`);
      else out.push(`${indent}- ${lines[0].slice(indent.length + 2)}`, ...lines.slice(1));
    } else if (typeof v === "object" && v !== null) throw new NotPlain();
    else out.push(`${indent}- ${scalar(v)}`);
  }
  return out;
}
