/**
 * Reads and validates `cove.yaml` text. YAML syntax errors and schema
 * violations become one CoveError line that names the file, the line and
 * column, the field path, the bad value and what is allowed.
 *
 * @example
 * ```ts
 * const parsed = parseSpec("cpus: 2\nmemory: 4GiB\n", "cove.yaml");
 * ```
 * @module
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Document, Node as YamlNode } from "yaml";
import type { z } from "zod";
import { CoveError, ExitCode } from "../errors.ts";
// A cycle (bundle.ts parses specs): BUNDLE_FILES is only read when parseSpec runs.
import { BUNDLE_FILES } from "../store/bundle.ts";
import { type SpecParsed, SpecSchema } from "./schema.ts";

/** One problem found in a spec. */
export interface SpecProblem {
  /** Dotted path, e.g. `disks[0].bus`; empty for the document itself. */
  path: string;
  line?: number;
  column?: number;
  message: string;
}

/** Thrown for invalid specs; carries every problem, the message shows them all. */
export class SpecError extends CoveError {
  readonly problems: SpecProblem[];
  constructor(source: string, problems: SpecProblem[]) {
    const lines = problems.map((p) => formatProblem(source, p));
    super("spec.invalid", lines.join("; "), { exit: ExitCode.Usage });
    this.problems = problems;
  }
}

function formatProblem(source: string, p: SpecProblem): string {
  const at = p.line ? `${source}:${p.line}:${p.column ?? 1}` : source;
  return [at, p.path, p.message].filter((x) => x).join(": ");
}

/** Formats a path array as `a.b[0].c`. */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = "";
  for (const k of path) {
    if (typeof k === "number") out += `[${k}]`;
    else out += out ? `.${String(k)}` : String(k);
  }
  return out;
}

/** How deeply a cove.yaml may nest mappings and lists (a real spec needs about 5). */
export const MAX_NESTING = 64;

function tooDeep(source: string, line?: number, column?: number): SpecError {
  return new SpecError(source, [{
    path: "",
    line,
    column,
    message: `nested too deeply (limit ${MAX_NESTING})`,
  }]);
}

function isStackOverflow(e: unknown): boolean {
  return e instanceof RangeError || (e instanceof Error && /call stack/i.test(e.message));
}

/** The first node nested deeper than {@link MAX_NESTING}, found without recursion. */
function tooDeepNode(doc: Document): YamlNode | undefined {
  const stack: [unknown, number][] = [[doc.contents, 1]];
  while (stack.length) {
    const [node, depth] = stack.pop()!;
    if (!isMap(node) && !isSeq(node)) continue;
    if (depth > MAX_NESTING) return node;
    for (const item of node.items) {
      if (isMap(node)) {
        const pair = item as { key: unknown; value: unknown };
        stack.push([pair.key, depth + 1], [pair.value, depth + 1]);
      } else stack.push([item, depth + 1]);
    }
  }
  return undefined;
}

/** Parses YAML text into a validated (not yet defaulted) spec. */
export function parseSpec(text: string, source: string = BUNDLE_FILES.spec): SpecParsed {
  const lc = new LineCounter();
  let doc: Document;
  try {
    doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  } catch (e) {
    if (isStackOverflow(e)) throw tooDeep(source);
    throw e;
  }
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const pos = lc.linePos(e.pos[0]);
    if (isStackOverflow(e) || /call stack/i.test(e.message)) {
      throw tooDeep(source, pos.line, pos.col);
    }
    const what = e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
    throw new SpecError(source, [{
      path: "",
      line: pos.line,
      column: pos.col,
      message: `YAML syntax error: ${what}`,
    }]);
  }
  const deep = tooDeepNode(doc);
  if (deep) {
    const pos = deep.range ? lc.linePos(deep.range[0]) : undefined;
    throw tooDeep(source, pos?.line, pos?.col);
  }
  const raw: unknown = doc.toJS() ?? {};
  return validateSpec(raw, source, { doc, lc });
}

/** Validates an already-parsed value (JSON or YAML) against the schema. */
export function validateSpec(
  raw: unknown,
  source = "spec",
  pos?: { doc: Document; lc: LineCounter },
): SpecParsed {
  const r = SpecSchema.safeParse(raw);
  if (r.success) return r.data;
  const seen = new Set<string>();
  const problems: SpecProblem[] = [];
  for (const issue of r.error.issues) {
    for (const p of describeIssue(issue, raw)) {
      const key = p.path;
      if (seen.has(key)) continue;
      seen.add(key);
      if (pos) Object.assign(p, locate(pos.doc, pos.lc, p.pathArray));
      problems.push({ path: p.path, line: p.line, column: p.column, message: p.message });
    }
  }
  throw new SpecError(source, problems);
}

interface LocatedProblem extends SpecProblem {
  pathArray: PropertyKey[];
}

function valueAt(root: unknown, path: ReadonlyArray<PropertyKey>): unknown {
  let cur: unknown = root;
  for (const k of path) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}

function show(v: unknown): string {
  if (typeof v === "string") return `'${v}'`;
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return String(v);
}

function kindOf(v: unknown): string {
  if (v === null || v === undefined) return "nothing";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  if (typeof v === "number") return Number.isInteger(v) ? "an integer" : "a number";
  return `a ${typeof v}`;
}

const EXPECTED_NAMES: Record<string, string> = {
  int: "an integer",
  number: "a number",
  string: "a string",
  boolean: "true or false",
  array: "a list",
  object: "a mapping",
};

/** True when the schema at `path` is an integer. */
function isIntAt(path: ReadonlyArray<PropertyKey>): boolean {
  const node = unwrap(schemaAt(path));
  return node?.def?.type === "number" &&
    /int/.test(String(node?.def?.format ?? node?.format ?? ""));
}

// deno-lint-ignore no-explicit-any
function schemaAt(path: ReadonlyArray<PropertyKey>): any {
  // deno-lint-ignore no-explicit-any
  let node: any = SpecSchema;
  for (const k of path) {
    node = unwrap(node);
    if (typeof k === "number") node = node?.def?.element;
    else node = node?.def?.shape?.[k as string];
  }
  return node;
}

function allowedKeysAt(path: ReadonlyArray<PropertyKey>): string[] {
  const node = unwrap(schemaAt(path));
  const shape = node?.def?.shape ?? findObjectOption(node)?.def?.shape;
  return shape ? Object.keys(shape) : [];
}

// deno-lint-ignore no-explicit-any
function unwrap(node: any): any {
  let n = node;
  while (n?.def?.innerType) n = n.def.innerType;
  return n;
}

// deno-lint-ignore no-explicit-any
function findObjectOption(node: any): any {
  // deno-lint-ignore no-explicit-any
  return node?.def?.options?.map(unwrap).find((o: any) => o?.def?.shape);
}

function describeIssue(issue: z.core.$ZodIssue, raw: unknown): LocatedProblem[] {
  const path = issue.path as PropertyKey[];
  const value = valueAt(raw, path);
  const at = formatPath(path);
  switch (issue.code) {
    case "unrecognized_keys": {
      const allowed = allowedKeysAt(path);
      return issue.keys.map((k) => ({
        path: formatPath([...path, k]),
        pathArray: [...path, k],
        message: `unknown key '${k}'` + (allowed.length ? `; allowed: ${allowed.join(", ")}` : ""),
      }));
    }
    case "invalid_type": {
      const expected = isIntAt(path)
        ? "an integer"
        : EXPECTED_NAMES[issue.expected] ?? issue.expected;
      const got = value !== null && typeof value === "object"
        ? kindOf(value)
        : `${kindOf(value)} ${show(value)}`;
      const message = value === undefined
        ? `is required (${expected})`
        : `got ${got}, expected ${expected}`;
      return [{ path: at, pathArray: path, message }];
    }
    case "invalid_value": {
      const allowed = issue.values.map((v) => String(v)).join(", ");
      return [{ path: at, pathArray: path, message: `got ${show(value)}, allowed: ${allowed}` }];
    }
    case "too_small": {
      const what = issue.origin === "array" || issue.origin === "string"
        ? `at least ${issue.minimum} ${issue.origin === "array" ? "items" : "characters"}`
        : `at least ${issue.minimum}`;
      return [{ path: at, pathArray: path, message: `got ${show(value)}, expected ${what}` }];
    }
    case "too_big": {
      const what = issue.origin === "array"
        ? `at most ${issue.maximum} items`
        : `at most ${issue.maximum}`;
      return [{ path: at, pathArray: path, message: `got ${show(value)}, expected ${what}` }];
    }
    case "invalid_union": {
      return [{
        path: at,
        pathArray: path,
        message: `got ${show(value)}, ${unionHint(path)}`,
      }];
    }
    default:
      return [{ path: at, pathArray: path, message: `got ${show(value)}, ${issue.message}` }];
  }
}

function unionHint(path: ReadonlyArray<PropertyKey>): string {
  const last = path[path.length - 1];
  if (last === "display") return "expected 'none' or a mapping with width, height and ppi";
  return "expected a size such as 512MiB, 4GiB or 64G";
}

function locate(
  doc: Document,
  lc: LineCounter,
  path: PropertyKey[],
): { line?: number; column?: number } {
  // Point at the deepest node that exists; for unknown keys, at the key itself.
  for (let n = path.length; n >= 0; n--) {
    const sub = path.slice(0, n);
    const node = nodeAt(doc, sub);
    if (node?.range) {
      const p = lc.linePos(node.range[0]);
      return { line: p.line, column: p.col };
    }
  }
  return {};
}

function nodeAt(doc: Document, path: PropertyKey[]): YamlNode | undefined {
  let cur: unknown = doc.contents;
  for (const k of path) {
    if (isMap(cur)) {
      const pair = cur.items.find((it) => isScalar(it.key) && it.key.value === k);
      if (!pair) return undefined;
      cur = pair.value ?? pair.key;
    } else if (isSeq(cur) && typeof k === "number") {
      cur = cur.items[k];
    } else return undefined;
  }
  return cur as YamlNode | undefined;
}
