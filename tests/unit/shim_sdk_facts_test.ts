/**
 * The Swift shim against Apple's SDK facts (swift-shim/sdk-facts.json).
 * Nothing here can compile Swift, so the shim is held, by construction, to
 * the facts Apple's headers publish: every Virtualization symbol it uses is in
 * the table; a symbol newer than the package's deployment target is used
 * only inside a matching #available / @available; an arm64-only symbol only
 * inside #if arch(arm64); and no method of an NSObject subclass takes the
 * Swift name of an NSObject member (release, hash, description, ...).
 *
 * The Swift is parsed with tree-sitter-swift, as tests/unit/abi_drift_test.ts
 * does. Receiver types are resolved the way a reader would: from a stored
 * property's or parameter's declared type, a `let x = VZType(...)`, an
 * `as? VZType` cast, or the type the table records for a property. The
 * tampering tests at the end prove that each rule fails when broken.
 */
import Parser from "web-tree-sitter";
import pkg from "tree-sitter-wasms/package.json" with { type: "json" };
import { createRequire } from "node:module";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  type Fact,
  type FactsFile,
  loadSdkGit,
  parseHeader,
  regenerate,
} from "../../swift-shim/sdk_facts.ts";

const root = new URL("../../", import.meta.url).pathname;
const swiftDir = `${root}swift-shim/Sources/CoveVZ`;
const factsPath = `${root}swift-shim/sdk-facts.json`;
const packagePath = `${root}swift-shim/Package.swift`;

type Node = Parser.SyntaxNode;

let parser: Parser | undefined;

async function swiftParser(): Promise<Parser> {
  if (parser) return parser;
  const require = createRequire(import.meta.url);
  const wasm = require.resolve(`tree-sitter-wasms/out/tree-sitter-swift.wasm`);
  assert(pkg.version === "0.1.13", "the pinned tree-sitter-wasms");
  await Parser.init();
  const lang = await Parser.Language.load(await Deno.readFile(wasm));
  parser = new Parser();
  parser.setLanguage(lang);
  return parser;
}

export interface Source {
  path: string;
  text: string;
}

async function shimSources(): Promise<Source[]> {
  const out: Source[] = [];
  for await (const e of Deno.readDir(swiftDir)) {
    if (e.isFile && e.name.endsWith(".swift")) {
      out.push({ path: e.name, text: await Deno.readTextFile(`${swiftDir}/${e.name}`) });
    }
  }
  return out.sort((a, b) => a.path.localeCompare(b.path));
}

async function facts(): Promise<FactsFile> {
  return JSON.parse(await Deno.readTextFile(factsPath)) as FactsFile;
}

/** The deployment target of Package.swift: `.macOS(.v13)` is 13.0. */
export function deploymentTarget(packageSwift: string): string {
  const m = /\.macOS\(\s*(?:\.v(\d+)(?:_(\d+))?|"(\d+(?:\.\d+)*)")\s*\)/.exec(packageSwift);
  if (!m) throw new Error("Package.swift names no macOS platform");
  return m[3] ?? `${m[1]}.${m[2] ?? "0"}`;
}

function cmpVersion(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** For each line: whether it is inside the true branch of `#if arch(arm64)`. */
function arm64Lines(text: string): boolean[] {
  const stack: { arm: boolean; active: boolean }[] = [];
  return text.split("\n").map((raw) => {
    const line = raw.trim();
    if (/^#if\b/.test(line)) {
      stack.push({ arm: /^#if\s+arch\(arm64\)\s*$/.test(line), active: true });
    } else if (/^#(else|elseif)\b/.test(line)) {
      const top = stack[stack.length - 1];
      if (top) top.active = false;
    } else if (/^#endif\b/.test(line)) {
      stack.pop();
    }
    return stack.some((f) => f.arm && f.active);
  });
}

const NSOBJECT_MEMBERS = new Set([
  "release",
  "retain",
  "autorelease",
  "retainCount",
  "dealloc",
  "finalize",
  "zone",
  "hash",
  "description",
  "debugDescription",
  "copy",
  "mutableCopy",
  "isEqual",
  "isProxy",
  "isKind",
  "isMember",
  "responds",
  "conforms",
  "perform",
  "superclass",
]);
/** Foundation's own NSObject methods (KVO, KVC), inherited by every VZ class, not VZ API. */
const FOUNDATION_NSOBJECT = new Set(["observe", "value", "setValue", "isEqual", "isKind"]);
/** Declaring these is an error even with `override` (ARC makes them unavailable). */
const ARC_UNAVAILABLE = new Set(["release", "retain", "autorelease", "retainCount", "dealloc"]);

/** A Swift type written in the source, reduced to a table name or an array of one. */
interface Ty {
  name: string;
  array: boolean;
  meta: boolean;
}

function tyOf(text: string, meta = false): Ty | undefined {
  const t = text.replace(/\s+/g, "").replace(/[?!]+$/, "");
  const arr = /^\[(.+)\]$/.exec(t);
  const name = (arr ? arr[1] : t).replace(/[?!]+$/, "").replace(/^Virtualization\./, "");
  if (!/^[A-Za-z_][\w.]*$/.test(name)) return undefined;
  return { name, array: arr !== null, meta };
}

export class Checker {
  readonly byKey = new Map<string, Fact>();
  readonly types = new Map<string, Fact>();
  problems: string[] = [];
  used = new Set<string>();

  constructor(readonly table: FactsFile, readonly target: string) {
    for (const f of table.symbols) {
      this.byKey.set(f.swift, f);
      if (["class", "protocol", "enum"].includes(f.kind)) this.types.set(f.swift, f);
    }
  }

  /** The facts of a member of a type or its superclasses (the table's chain). */
  member(type: string, key: string): Fact | undefined {
    let t: string | undefined = type;
    for (let i = 0; t && i < 12; i++) {
      const f = this.byKey.get(`${t}.${key}`);
      if (f) return f;
      t = this.types.get(t)?.superclass;
    }
    return undefined;
  }

  /** A method member by base name and the labels written at the call. */
  method(type: string, base: string, labels: string[], trailing: boolean): Fact | undefined {
    const exact = this.member(type, `${base}(${labels.map((l) => `${l}:`).join("")})`);
    if (exact || !trailing) return exact;
    let t: string | undefined = type;
    for (let i = 0; t && i < 12; i++) {
      for (const f of this.table.symbols) {
        const m = new RegExp(`^${t.replace(/\./g, "\\.")}\\.${base}\\(((?:\\w+:)*)\\)$`).exec(
          f.swift,
        );
        if (!m) continue;
        const have = m[1].split(":").filter(Boolean);
        if (
          have.length === labels.length + 1 && labels.every((l, j) => have[j] === l)
        ) return f;
      }
      t = this.types.get(t)?.superclass;
    }
    return undefined;
  }

  /** The shim's own functions by name, with the VZ type they return (unambiguous ones). */
  readonly returns = new Map<string, Ty | null>();

  async check(sources: Source[]): Promise<string[]> {
    const p = await swiftParser();
    this.problems = [];
    const trees = sources.map((s) => ({ s, root: p.parse(s.text).rootNode }));
    for (const { root } of trees) this.collectReturns(root);
    for (const { s, root } of trees) new FileCheck(this, s, root).run();
    return this.problems;
  }

  private collectReturns(n: Node) {
    if (n.type === "function_declaration") {
      const name = n.namedChildren.find((c) => c.type === "simple_identifier")?.text;
      const arrow = n.children.findIndex((c) => c.type === "->");
      const ret = arrow >= 0 ? n.children.slice(arrow + 1).find((c) => c.isNamed) : undefined;
      const t = ret ? tyOf(ret.text) : undefined;
      if (name) {
        const known = this.returns.get(name);
        const vz = t && this.types.has(t.name) ? t : null;
        this.returns.set(
          name,
          known === undefined || (known && vz && known.name === vz.name) ? vz : null,
        );
      }
    }
    for (const c of n.namedChildren) this.collectReturns(c);
  }
}

class FileCheck {
  readonly arm: boolean[];
  constructor(readonly c: Checker, readonly src: Source, readonly root: Node) {
    this.arm = arm64Lines(src.text);
  }

  where(n: Node): string {
    return `${this.src.path}:${n.startPosition.row + 1}`;
  }

  run() {
    this.visit(this.root);
  }

  visit(n: Node) {
    switch (n.type) {
      case "type_identifier":
      case "simple_identifier":
        this.identifier(n);
        break;
      case "call_expression":
        this.call(n);
        break;
      case "navigation_expression":
        this.navigation(n);
        break;
      case "class_declaration":
        this.classDecl(n);
        break;
      case "pattern":
      case "prefix_expression":
        this.implicitMember(n);
        break;
    }
    for (const child of n.namedChildren) this.visit(child);
  }

  /** Records a use of a fact at a node and checks its gates. */
  use(n: Node, key: string, fact: Fact | undefined) {
    if (!fact) {
      this.c.problems.push(
        `${
          this.where(n)
        }: ${key} is a Virtualization symbol missing from swift-shim/sdk-facts.json`,
      );
      return;
    }
    this.c.used.add(fact.swift);
    if (cmpVersion(fact.introduced, this.c.target) > 0) {
      const have = this.availableAt(n);
      if (!have || cmpVersion(have, fact.introduced) < 0) {
        this.c.problems.push(
          `${
            this.where(n)
          }: ${fact.swift} needs macOS ${fact.introduced} (deployment target ${this.c.target}) but is not inside #available(macOS ${fact.introduced}, *)`,
        );
      }
    }
    if (fact.arm64Only && !this.arm[n.startPosition.row]) {
      this.c.problems.push(
        `${
          this.where(n)
        }: ${fact.swift} is arm64-only (${fact.header}) but is not inside #if arch(arm64)`,
      );
    }
  }

  /** The newest macOS version that the enclosing #available / @available guarantee. */
  availableAt(n: Node): string | undefined {
    let best: string | undefined;
    const take = (text: string) => {
      const m = /macOS\s+(\d+(?:\.\d+)*)/.exec(text);
      if (!m) return;
      const v = m[1].includes(".") ? m[1] : `${m[1]}.0`;
      if (!best || cmpVersion(v, best) > 0) best = v;
    };
    let child = n;
    for (let a = n.parent; a; child = a, a = a.parent) {
      if (a.type === "if_statement") {
        const cond = a.children.find((c) => c.type === "availability_condition");
        const close = a.children.find((c) => c.type === "}");
        if (
          cond && cond.startIndex < child.startIndex && close &&
          child.endIndex <= close.startIndex && !cond.text.startsWith("#unavailable")
        ) take(cond.text);
      }
      if (a.type === "statements") {
        for (const s of a.namedChildren) {
          if (s.startIndex >= child.startIndex) break;
          if (s.type === "guard_statement") {
            const cond = s.children.find((c) => c.type === "availability_condition");
            if (cond && !cond.text.startsWith("#unavailable")) take(cond.text);
          }
        }
      }
      const mods = a.namedChildren.find((c) => c.type === "modifiers");
      for (const attr of mods?.namedChildren ?? []) {
        if (attr.type === "attribute" && attr.text.startsWith("@available")) take(attr.text);
      }
    }
    return best;
  }

  /** VZ type names, including nested ones (VZVirtualMachine.State). */
  identifier(n: Node) {
    if (!/^VZ[A-Z]\w*$/.test(n.text)) return;
    const parent = n.parent;
    // The nested type is checked as one name.
    if (parent?.type === "user_type") {
      const ids = parent.namedChildren.filter((c) => c.type === "type_identifier");
      if (ids.length > 1) {
        if (ids[0].id !== n.id) return;
        const name = ids.map((i) => i.text).join(".");
        this.use(n, name, this.c.types.get(name));
        return;
      }
    }
    if (parent?.type === "navigation_expression" && parent.namedChildren[0]?.id === n.id) {
      const suffix = this.suffixName(parent);
      if (suffix && /^[A-Z]/.test(suffix) && this.c.types.has(`${n.text}.${suffix}`)) {
        this.use(n, `${n.text}.${suffix}`, this.c.types.get(`${n.text}.${suffix}`));
        return;
      }
    }
    this.use(n, n.text, this.c.types.get(n.text));
  }

  suffixName(nav: Node): string | undefined {
    const suffix = nav.namedChildren.find((c) => c.type === "navigation_suffix");
    return suffix?.namedChildren.find((c) => c.type === "simple_identifier")?.text;
  }

  callParts(call: Node): { labels: string[]; trailing: boolean } {
    const suffix = call.namedChildren.find((c) => c.type === "call_suffix");
    const labels: string[] = [];
    let trailing = false;
    for (const c of suffix?.namedChildren ?? []) {
      if (c.type === "value_arguments" && c.children[0]?.type === "[") {
        labels.push("[]");
      } else if (c.type === "value_arguments") {
        for (const arg of c.namedChildren.filter((a) => a.type === "value_argument")) {
          const label = arg.namedChildren.find((x) => x.type === "value_argument_label");
          labels.push(label ? label.text : "_");
        }
      } else if (c.type === "lambda_literal") trailing = true;
    }
    return { labels, trailing };
  }

  /** `VZType(...)`: an initializer. */
  call(n: Node) {
    const callee = n.namedChildren[0];
    const t = this.typeOf(callee);
    if (!t || !t.meta || !this.c.types.has(t.name)) return;
    const { labels, trailing } = this.callParts(n);
    const key = `init(${labels.map((l) => `${l}:`).join("")})`;
    const fact = this.c.member(t.name, key) ??
      (trailing ? this.c.method(t.name, "init", labels, true) : undefined);
    this.use(n, `${t.name}.${key}`, fact);
  }

  /** `receiver.member`, with the receiver's type resolved where the source says it. */
  navigation(n: Node) {
    const target = n.namedChildren[0];
    const name = this.suffixName(n);
    if (!target || !name) return;
    const t = this.typeOf(target);
    if (!t || t.array || !this.c.types.has(t.name)) return;
    if (t.meta && /^[A-Z]/.test(name) && this.c.types.has(`${t.name}.${name}`)) return;
    const parent = n.parent;
    if (parent?.type === "call_expression" && parent.namedChildren[0]?.id === n.id) {
      const { labels, trailing } = this.callParts(parent);
      if (labels[0] === "[]") {
        // obj.prop[i]: the property, then its type's subscript.
        this.use(n, `${t.name}.${name}`, this.c.member(t.name, name));
        const pt = this.c.member(t.name, name)?.type;
        if (pt) this.use(parent, `${pt}.subscript(_:)`, this.c.member(pt, "subscript(_:)"));
        return;
      }
      if (t.name !== "" && FOUNDATION_NSOBJECT.has(name)) return;
      const key = `${name}(${labels.map((l) => `${l}:`).join("")})`;
      this.use(n, `${t.name}.${key}`, this.c.method(t.name, name, labels, trailing));
      return;
    }
    this.use(n, `${t.name}.${name}`, this.c.member(t.name, name));
  }

  /** `.saving` in a pattern or expression: only gated enum cases can be told apart by name. */
  implicitMember(n: Node) {
    const first = n.children[0];
    if (first?.type !== "." || n.namedChildren.length !== 1) return;
    const id = n.namedChildren[0];
    if (id.type !== "simple_identifier") return;
    const gated = this.c.table.symbols.filter((f) =>
      f.kind === "case" && f.swift.endsWith(`.${id.text}`) &&
      (f.arm64Only || cmpVersion(f.introduced, this.c.target) > 0)
    );
    if (gated.length === 1) this.use(id, gated[0].swift, gated[0]);
  }

  /** NSObject subclasses: no method named like an NSObject member; delegate methods gated. */
  classDecl(n: Node) {
    const inherits = n.namedChildren.filter((c) => c.type === "inheritance_specifier").map((c) =>
      c.text.trim()
    );
    const objc = inherits.some((s) => s === "NSObject" || /^(NS|VZ)[A-Z]\w*$/.test(s));
    const body = n.namedChildren.find((c) => c.type === "class_body");
    if (!objc || !body) return;
    const protocols = inherits.filter((s) => this.c.types.get(s)?.kind === "protocol");
    for (const d of body.namedChildren) {
      if (d.type !== "function_declaration") continue;
      const name = d.namedChildren.find((c) => c.type === "simple_identifier")?.text ?? "";
      const override = d.namedChildren.find((c) => c.type === "modifiers")?.text.includes(
        "override",
      ) ?? false;
      if (NSOBJECT_MEMBERS.has(name) && (!override || ARC_UNAVAILABLE.has(name))) {
        this.c.problems.push(
          `${this.where(d)}: ${name}() in NSObject subclass ${
            n.namedChildren.find((c) => c.type === "type_identifier")?.text
          } has the Swift name of an NSObject member (its Objective-C selector collides); rename it`,
        );
      }
      const labels = d.namedChildren.filter((c) => c.type === "parameter").map((p) => {
        const ids = p.namedChildren.filter((c) => c.type === "simple_identifier");
        return ids[0]?.text ?? "_";
      });
      for (const proto of protocols) {
        const key = `${proto}.${name}(${labels.map((l) => `${l}:`).join("")})`;
        const f = this.c.byKey.get(key);
        if (f) this.use(d, key, f);
      }
    }
  }

  // MARK: types of expressions

  typeOf(e: Node, depth = 0): Ty | undefined {
    if (depth > 12) return undefined;
    switch (e.type) {
      case "simple_identifier":
      case "type_identifier": {
        if (this.c.types.has(e.text)) return { name: e.text, array: false, meta: true };
        return this.binding(e.text, e, depth + 1);
      }
      case "self_expression": {
        const cls = this.enclosing(e, "class_declaration");
        const name = cls?.namedChildren.find((c) => c.type === "type_identifier")?.text;
        return name ? { name: `self:${name}`, array: false, meta: false } : undefined;
      }
      case "navigation_expression": {
        const target = e.namedChildren[0];
        const name = this.suffixName(e);
        if (!target || !name) return undefined;
        const t = this.typeOf(target, depth + 1);
        if (!t) return undefined;
        if (t.name.startsWith("self:")) {
          return this.storedProperty(t.name.slice(5), name, e, depth + 1);
        }
        if (t.array) {
          return name === "first" || name === "last" ? { ...t, array: false } : undefined;
        }
        if (t.meta && this.c.types.has(`${t.name}.${name}`)) {
          return { name: `${t.name}.${name}`, array: false, meta: true };
        }
        const f = this.c.member(t.name, name);
        return f?.type ? tyOf(f.type) : undefined;
      }
      case "call_expression": {
        const callee = e.namedChildren[0];
        const t = this.typeOf(callee, depth + 1);
        if (t?.meta) return { ...t, meta: false };
        // One of the shim's own functions (self.f(), Type.f(), f()): its declared result.
        const name = callee.type === "simple_identifier"
          ? callee.text
          : callee.type === "navigation_expression"
          ? this.suffixName(callee)
          : undefined;
        const r = name ? this.c.returns.get(name) : undefined;
        return r ? { ...r, meta: false } : undefined;
      }
      case "try_expression":
      case "await_expression":
      case "tuple_expression":
      case "parenthesized_expression":
        return e.namedChildren.length > 0
          ? this.typeOf(e.namedChildren[e.namedChildren.length - 1], depth + 1)
          : undefined;
      case "as_expression": {
        const type = e.namedChildren[e.namedChildren.length - 1];
        return type ? tyOf(type.text) : undefined;
      }
      case "postfix_expression":
      case "optional_chaining_expression":
        return e.namedChildren[0] ? this.typeOf(e.namedChildren[0], depth + 1) : undefined;
    }
    return undefined;
  }

  enclosing(n: Node, ...types: string[]): Node | undefined {
    for (let a = n.parent; a; a = a.parent) if (types.includes(a.type)) return a;
    return undefined;
  }

  /** A stored property's declared type in one of the file's classes. */
  storedProperty(cls: string, name: string, at: Node, depth: number): Ty | undefined {
    const decl = this.findClass(cls);
    const body = decl?.namedChildren.find((c) => c.type === "class_body");
    for (const d of body?.namedChildren ?? []) {
      if (d.type !== "property_declaration") continue;
      const t = this.declaredType(d, name, depth);
      if (t) return t;
    }
    void at;
    return undefined;
  }

  findClass(name: string): Node | undefined {
    let found: Node | undefined;
    const walk = (n: Node) => {
      if (found) return;
      if (
        n.type === "class_declaration" &&
        n.namedChildren.find((c) => c.type === "type_identifier")?.text === name
      ) found = n;
      for (const c of n.namedChildren) walk(c);
    };
    walk(this.root);
    return found;
  }

  /** The type a property_declaration gives `name`, by annotation or initial value. */
  declaredType(d: Node, name: string, depth: number): Ty | undefined {
    const pattern = d.namedChildren.find((c) => c.type === "pattern");
    if (pattern?.text !== name) return undefined;
    const annot = d.namedChildren.find((c) => c.type === "type_annotation");
    if (annot) return tyOf(annot.text.replace(/^:\s*/, ""));
    const eq = d.children.findIndex((c) => c.type === "=");
    const value = eq >= 0 ? d.children.slice(eq + 1).find((c) => c.isNamed) : undefined;
    return value ? this.typeOf(value, depth + 1) : undefined;
  }

  /** Where `name` was bound in the enclosing functions, closures or class. */
  binding(name: string, at: Node, depth: number): Ty | undefined {
    for (let scope = at.parent; scope; scope = scope.parent) {
      if (scope.type === "statements") {
        for (const s of scope.namedChildren) {
          if (s.startIndex >= at.startIndex) break;
          if (s.type === "property_declaration") {
            const t = this.declaredType(s, name, depth);
            if (t) return t;
          }
          if (s.type === "guard_statement") {
            const t = this.conditionBinding(s, name, depth);
            if (t) return t;
          }
        }
      }
      if (scope.type === "if_statement" || scope.type === "guard_statement") {
        const t = this.conditionBinding(scope, name, depth);
        if (t) return t;
      }
      if (scope.type === "function_declaration" || scope.type === "init_declaration") {
        for (const p of scope.namedChildren.filter((c) => c.type === "parameter")) {
          const ids = p.namedChildren.filter((c) => c.type === "simple_identifier");
          if (ids[ids.length - 1]?.text === name) {
            const type = p.namedChildren[p.namedChildren.length - 1];
            return type ? tyOf(type.text) : undefined;
          }
        }
      }
      if (scope.type === "class_body") {
        const cls = scope.parent?.namedChildren.find((c) => c.type === "type_identifier")?.text;
        if (cls) return this.storedProperty(cls, name, at, depth);
      }
    }
    return undefined;
  }

  /** `if let x = expr` / `guard let x = expr`. */
  conditionBinding(s: Node, name: string, depth: number): Ty | undefined {
    const kids = s.children;
    for (let i = 0; i < kids.length; i++) {
      if (
        kids[i].type === "simple_identifier" && kids[i].text === name && kids[i + 1]?.type === "="
      ) {
        const value = kids.slice(i + 2).find((c) => c.isNamed);
        return value ? this.typeOf(value, depth + 1) : undefined;
      }
    }
    return undefined;
  }
}

async function checkShim(
  sources?: Source[],
  table?: FactsFile,
): Promise<{ problems: string[]; used: Set<string> }> {
  const target = deploymentTarget(await Deno.readTextFile(packagePath));
  const c = new Checker(table ?? await facts(), target);
  const problems = await c.check(sources ?? await shimSources());
  return { problems, used: c.used };
}

function tamper(sources: Source[], file: string, from: string, to: string): Source[] {
  let hit = false;
  const out = sources.map((s) => {
    if (s.path !== file) return s;
    assert(s.text.includes(from), `${file} contains the text to tamper with: ${from}`);
    hit = true;
    return { ...s, text: s.text.replace(from, to) };
  });
  assert(hit, `${file} is a shim source`);
  return out;
}

// MARK: the shim as it is

Deno.test("the deployment target is read from Package.swift", async () => {
  assertEquals(deploymentTarget(await Deno.readTextFile(packagePath)), "13.0");
  assertEquals(deploymentTarget(`platforms: [.macOS("13.3")]`), "13.3");
  assertEquals(deploymentTarget(`platforms: [.macOS(.v14)]`), "14.0");
});

Deno.test("every table row is well formed and named once", async () => {
  const t = await facts();
  const seen = new Set<string>();
  for (const f of t.symbols) {
    assert(!seen.has(f.swift), `${f.swift} is listed once`);
    seen.add(f.swift);
    assert(/^\d+\.\d+(\.\d+)?$/.test(f.introduced), `${f.swift}: introduced ${f.introduced}`);
    assert(typeof f.arm64Only === "boolean" && typeof f.throws === "boolean", f.swift);
    assert(f.header.endsWith(".h") || f.header.endsWith(".swiftinterface"), f.swift);
    if (f.superclass) {
      assert(
        f.superclass === "NSObject" || f.superclass === "NSView" || seen.has(f.superclass) ||
          t.symbols.some((g) => g.swift === f.superclass),
        `${f.swift}: superclass ${f.superclass} is in the table`,
      );
    }
  }
});

Deno.test("the shim uses only tabled Virtualization symbols, each behind its version and arch gates", async () => {
  const { problems, used } = await checkShim();
  assertEquals(problems, []);
  // The checker really resolved members, not just type names.
  for (
    const key of [
      "VZVirtualMachine.saveMachineStateTo(url:completionHandler:)",
      "VZVirtualMachineConfiguration.validateSaveRestoreSupport()",
      "VZGenericPlatformConfiguration.isNestedVirtualizationSupported",
      "VZVirtualMachineView.automaticallyReconfiguresDisplay",
      "VZVirtioSocketDevice.connect(toPort:completionHandler:)",
      "VZMacOSInstaller.install(completionHandler:)",
      "VZVirtioSocketConnection.fileDescriptor",
      "VZVirtualMachineDelegate.virtualMachine(_:networkDevice:attachmentWasDisconnectedWithError:)",
      "VZVirtioSocketDevice.setSocketListener(_:forPort:)",
      "VZVirtualMachineConfiguration.validate()",
    ]
  ) assert(used.has(key), `the checker saw ${key}`);
});

// MARK: tampering

Deno.test("tampering: an arm64-only call outside #if arch(arm64) fails", async () => {
  const sources = tamper(
    await shimSources(),
    "Machine.swift",
    "  func installCancel() throws {\n",
    "  func installCancel() throws {\n    _ = VZMacOSBootLoader()\n",
  );
  const { problems } = await checkShim(sources);
  assert(
    problems.some((p) => /Machine\.swift:\d+: VZMacOSBootLoader.* is arm64-only/.test(p)),
    problems.join("\n"),
  );
});

Deno.test("tampering: save/restore without #if arch(arm64) fails", async () => {
  const src = await shimSources();
  const m = src.find((s) => s.path === "Machine.swift")!;
  const start = m.text.indexOf("  func save(to url: URL) throws {");
  const region = m.text.slice(start, m.text.indexOf("  func setBalloonTarget", start));
  const stripped = region.replace(/#if arch\(arm64\)\n/g, "").replace(
    /#else\n[^\n]*\n\s*#endif\n/g,
    "",
  );
  const { problems } = await checkShim(tamper(src, "Machine.swift", region, stripped));
  assert(
    problems.some((p) =>
      p.includes("VZVirtualMachine.saveMachineStateTo(url:completionHandler:) is arm64-only")
    ),
    problems.join("\n"),
  );
  assert(
    problems.some((p) =>
      p.includes("VZVirtualMachine.restoreMachineStateFrom(url:completionHandler:) is arm64-only")
    ),
    problems.join("\n"),
  );
});

Deno.test("tampering: a macOS 15 API without #available fails", async () => {
  const sources = tamper(
    await shimSources(),
    "Build.swift",
    `guard #available(macOS 15, *) else {
          throw ShimError.needs("nested virtualization", macOS: "15.0")
        }`,
    "",
  );
  const { problems } = await checkShim(sources);
  assert(
    problems.some((p) =>
      /Build\.swift:\d+: VZGenericPlatformConfiguration\.isNestedVirtualizationSupported needs macOS 15\.0/
        .test(p)
    ),
    problems.join("\n"),
  );
  assert(
    problems.some((p) => p.includes("isNestedVirtualizationEnabled needs macOS 15.0")),
    problems.join("\n"),
  );
});

Deno.test("an @available declaration or a guard #available covers the API it gates", async () => {
  const sources = tamper(
    await shimSources(),
    "Host.swift",
    "  static func rosettaAvailability() -> String {",
    `  @available(macOS 15, *)
  static func nested() -> Bool { VZGenericPlatformConfiguration.isNestedVirtualizationSupported }

  static func nested2() -> Bool {
    guard #available(macOS 15, *) else { return false }
    return VZGenericPlatformConfiguration.isNestedVirtualizationSupported
  }

  static func nested3() -> Bool {
    if #available(macOS 15, *) { return true } else {
      return VZGenericPlatformConfiguration.isNestedVirtualizationSupported
    }
  }

  static func rosettaAvailability() -> String {`,
  );
  const { problems } = await checkShim(sources);
  // Only the else branch of if #available is unguarded.
  assertEquals(problems.length, 1, problems.join("\n"));
  assert(problems[0].includes("isNestedVirtualizationSupported needs macOS 15.0"), problems[0]);
});

Deno.test("tampering: an #available for an older macOS than the API needs fails", async () => {
  const sources = tamper(
    await shimSources(),
    "Window.swift",
    "if #available(macOS 14, *) {",
    "if #available(macOS 13.5, *) {",
  );
  const { problems } = await checkShim(sources);
  assert(
    problems.some((p) =>
      p.includes("VZVirtualMachineView.automaticallyReconfiguresDisplay needs macOS 14.0")
    ),
    problems.join("\n"),
  );
});

Deno.test("tampering: a Virtualization symbol missing from the table fails", async () => {
  const sources = tamper(
    await shimSources(),
    "Build.swift",
    "    config.cpuCount = c.cpuCount\n",
    "    config.cpuCount = c.cpuCount\n    config.usbControllers = [VZXHCIControllerConfiguration()]\n",
  );
  const { problems } = await checkShim(sources);
  assert(
    problems.some((p) =>
      p.includes("VZXHCIControllerConfiguration is a Virtualization symbol missing")
    ),
    problems.join("\n"),
  );
  assert(
    problems.some((p) =>
      p.includes("VZVirtualMachineConfiguration.usbControllers is a Virtualization symbol missing")
    ),
    problems.join("\n"),
  );
});

Deno.test("tampering: a table fact changed to a newer macOS makes its unguarded use fail", async () => {
  const t = await facts();
  const symbols = t.symbols.map((f) =>
    f.swift === "VZVirtioSocketDevice.connect(toPort:completionHandler:)"
      ? { ...f, introduced: "14.0" }
      : f
  );
  const { problems } = await checkShim(undefined, { ...t, symbols });
  assert(
    problems.some((p) =>
      p.includes("VZVirtioSocketDevice.connect(toPort:completionHandler:) needs macOS 14.0")
    ),
    problems.join("\n"),
  );
});

Deno.test("tampering: a method named release() in an NSObject subclass fails", async () => {
  let sources = tamper(await shimSources(), "Machine.swift", "func tearDown()", "func release()");
  sources = tamper(sources, "Window.swift", "  func close() {", "  func description() {");
  const { problems } = await checkShim(sources);
  assert(
    problems.some((p) => /Machine\.swift:\d+: release\(\) in NSObject subclass Machine/.test(p)),
    problems.join("\n"),
  );
  assert(
    problems.some((p) =>
      /Window\.swift:\d+: description\(\) in NSObject subclass WindowController/.test(p)
    ),
    problems.join("\n"),
  );
});

Deno.test("tampering: a macOS 14 enum case matched outside #available fails", async () => {
  const sources = tamper(
    await shimSources(),
    "Machine.swift",
    '  case .stopped: return "stopped"\n',
    '  case .stopped: return "stopped"\n  case .saving: return "saving"\n',
  );
  const { problems } = await checkShim(sources);
  assert(
    problems.some((p) => p.includes("VZVirtualMachine.State.saving needs macOS 14.0")),
    problems.join("\n"),
  );
});

// MARK: the regenerating script, on headers written here in Apple's declaration style

const fakeHeader = `
#import <Virtualization/VZDefines.h>
/*! @abstract A thing. */
VZ_EXPORT API_AVAILABLE(macos(11.0))
@interface VZThing : NSObject
- (instancetype)initWithURL:(NSURL *)url
    readOnly:(BOOL)readOnly error:(NSError **)error NS_DESIGNATED_INITIALIZER API_AVAILABLE(macos(12.0));
@property (class, readonly, getter=isShiny) BOOL shiny API_AVAILABLE(macos(15.0));
@property (readwrite) NSUInteger CPUCount;
#if defined(__arm64__)
- (BOOL)saveWithError:(NSError **)error API_AVAILABLE(macos(14.0));
#endif
- (void)close;
@end
typedef NS_ENUM(NSInteger, VZThingState) {
    VZThingStateIdle,
    VZThingStateBusy API_AVAILABLE(macos(14.0)),
} NS_SWIFT_NAME(VZThing.State) API_AVAILABLE(macos(11.0));
`;
const fakeArmHeader = `
#ifdef __arm64__
VZ_EXPORT API_AVAILABLE(macos(13.0))
@interface VZArmThing : VZThing
@end
#endif
`;

Deno.test("sdk_facts: headers are read for availability, arm64-only regions and throwing", () => {
  const p = parseHeader("VZThing.h", fakeHeader);
  assertEquals(p.owners.map((o) => [o.name, o.introduced, o.arm64]), [["VZThing", "11.0", false]]);
  assertEquals(p.enums[0].cases.get("VZThingStateBusy"), "14.0");
  const row = (swift: string, kind: Fact["kind"], objc: string, extra: Partial<Fact> = {}) => ({
    swift,
    kind,
    objc,
    introduced: "0.0",
    arm64Only: false,
    throws: false,
    header: "?",
    ...extra,
  } as Fact);
  const table: FactsFile = {
    about: "",
    symbols: [
      row("VZThing", "class", "VZThing"),
      row("VZThing.init(url:readOnly:)", "init", "-initWithURL:readOnly:error:"),
      row("VZThing.isShiny", "property", "shiny", { static: true }),
      row("VZThing.cpuCount", "property", "CPUCount"),
      row("VZThing.save()", "method", "-saveWithError:"),
      row("VZThing.close()", "method", "-close"),
      row("VZThing.State.busy", "case", "VZThingStateBusy"),
      row("VZArmThing", "class", "VZArmThing"),
      row("VZArmThing.init()", "init", "-init"),
      row("VZThing.gone()", "method", "-gone"),
    ],
  };
  const { problems, table: next } = regenerate({
    headers: new Map([["VZThing.h", fakeHeader], ["VZArmThing.h", fakeArmHeader]]),
    interfaces: {},
  }, table);
  const by = Object.fromEntries(next.symbols.map((f) => [f.swift, f]));
  assertEquals(
    [by["VZThing"].introduced, by["VZThing"].superclass, by["VZThing"].header],
    ["11.0", "NSObject", "VZThing.h"],
  );
  assertEquals([
    by["VZThing.init(url:readOnly:)"].introduced,
    by["VZThing.init(url:readOnly:)"].throws,
  ], [
    "12.0",
    true,
  ]);
  assertEquals(by["VZThing.isShiny"].introduced, "15.0");
  assertEquals(by["VZThing.cpuCount"].introduced, "11.0");
  assertEquals([
    by["VZThing.save()"].arm64Only,
    by["VZThing.save()"].throws,
    by["VZThing.save()"].introduced,
  ], [
    true,
    true,
    "14.0",
  ]);
  assertEquals([by["VZThing.close()"].arm64Only, by["VZThing.close()"].throws], [false, false]);
  assertEquals(by["VZThing.State.busy"].introduced, "14.0");
  assertEquals([by["VZArmThing"].arm64Only, by["VZArmThing"].superclass], [true, "VZThing"]);
  assertEquals([by["VZArmThing.init()"].arm64Only, by["VZArmThing.init()"].introduced], [
    true,
    "13.0",
  ]);
  assert(problems.includes("VZThing.gone(): no method -gone in VZThing or its superclasses"));
});

Deno.test("sdk_facts: a class's availability is found above attribute macro lines (macOS 27 headers)", () => {
  const p = parseHeader(
    "VZNew.h",
    `#ifdef __arm64__
VZ_EXPORT API_AVAILABLE(macos(27.0))
NS_REQUIRES_PROPERTY_DEFINITIONS
NS_SWIFT_SENDABLE
@interface VZNew : NSObject <NSCopying>
@property (readwrite, copy) NSString *name;
@end
#endif
`,
  );
  assertEquals(p.owners.map((o) => [o.name, o.introduced, o.arm64]), [["VZNew", "27.0", true]]);
});

Deno.test("sdk_facts: a Swift overlay is arm64-only when only the arm64e interface has it", () => {
  const arm = `@available(macOS 12.0, *)
extension Virtualization.VZThing {
  public func install(completionHandler: @escaping (Swift.Result<Swift.Void, any Swift.Error>) -> Swift.Void)
}
`;
  const table: FactsFile = {
    about: "",
    symbols: [{
      swift: "VZThing.install(completionHandler:)",
      kind: "method",
      objc: "func install(completionHandler:",
      introduced: "0.0",
      arm64Only: false,
      throws: true,
      header: "?",
      source: "swiftinterface",
    }],
  };
  const { table: next } = regenerate(
    { headers: new Map(), interfaces: { arm64: arm, x86_64: "" } },
    table,
  );
  assertEquals(
    [next.symbols[0].introduced, next.symbols[0].arm64Only, next.symbols[0].throws],
    ["12.0", true, false],
  );
});

Deno.test("sdk_facts: a symbol newer than the SDK read is not reported missing", () => {
  const table: FactsFile = {
    about: "",
    symbols: [{
      swift: "VZThing.isShiny2",
      kind: "property",
      objc: "shiny2",
      introduced: "15.0",
      arm64Only: false,
      throws: false,
      header: "VZThing.h",
      static: true,
    }],
  };
  const headers = new Map([["VZThing.h", fakeHeader]]);
  assertEquals(regenerate({ headers, interfaces: {}, version: "14.5" }, table).problems, []);
  assertEquals(regenerate({ headers, interfaces: {}, version: "15.0" }, table).problems, [
    "VZThing.isShiny2: no property shiny2 in VZThing or its superclasses",
  ]);
});

Deno.test("sdk_facts: an SDK is read from git objects without a work tree", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cove-sdk-git-" });
  const git = async (...args: string[]) => {
    const out = await new Deno.Command("git", {
      args: ["-C", dir, "-c", "user.name=t", "-c", "user.email=t@t", ...args],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
  };
  try {
    const fw =
      `${dir}/MacOSX14.5.sdk/System/Library/Frameworks/Virtualization.framework/Versions/A`;
    await Deno.mkdir(`${fw}/Headers`, { recursive: true });
    await Deno.writeTextFile(`${fw}/Headers/VZThing.h`, fakeHeader);
    await Deno.writeTextFile(
      `${dir}/MacOSX14.5.sdk/SDKSettings.json`,
      JSON.stringify({ Version: "14.5" }),
    );
    await git("init", "-q");
    await git("add", "-A");
    await git("commit", "-qm", "sdk");
    const sdk = await loadSdkGit(`${dir}/.git`, "HEAD", "MacOSX14.5.sdk");
    assertEquals([...sdk.headers.keys()], ["VZThing.h"]);
    assertEquals(sdk.version, "14.5");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
