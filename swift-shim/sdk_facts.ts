/**
 * sdk_facts.ts: regenerates (or checks) swift-shim/sdk-facts.json from an
 * Apple SDK read at run time. No SDK file is ever committed.
 *
 *   deno run -A swift-shim/sdk_facts.ts --sdk "$(xcrun --show-sdk-path)" [--check]
 *   deno run -A swift-shim/sdk_facts.ts --git DIR.git --rev REV --prefix MacOSX26.0.sdk [--check]
 *
 * The table lists every Virtualization symbol the shim uses, each with its
 * Swift spelling and the Objective-C declaration it is imported from (or,
 * for Swift-only overlays, the swiftinterface declaration). For each one this
 * script reads the SDK's Virtualization.framework headers and recomputes:
 * the header, the macOS version that introduced it (API_AVAILABLE on the
 * declaration, else on its @interface or enum), whether it is declared only
 * under __arm64__, whether it imports as throwing (a trailing NSError **
 * parameter), and a class's superclass. --check prints every difference and
 * exits 1 instead of writing. Swift spellings are not derived (Swift's import
 * rules are the compiler's); they are checked by swift build on a Mac.
 */

export interface Fact {
  swift: string;
  kind: "class" | "protocol" | "enum" | "case" | "init" | "method" | "property" | "subscript";
  objc: string;
  superclass?: string;
  introduced: string;
  arm64Only: boolean;
  throws: boolean;
  header: string;
  static?: boolean;
  type?: string;
  source?: "swiftinterface";
}

export interface FactsFile {
  about: string;
  symbols: Fact[];
}

/** One declaration statement of a header, with its #if context. */
interface Decl {
  text: string;
  arm64: boolean;
  header: string;
  /** The @interface/@protocol it is in, if any. */
  owner?: Owner;
}

interface Owner {
  name: string;
  kind: "class" | "protocol";
  superclass?: string;
  category: boolean;
  introduced?: string;
  arm64: boolean;
  header: string;
}

interface EnumInfo {
  name: string;
  swiftName?: string;
  introduced?: string;
  arm64: boolean;
  header: string;
  cases: Map<string, string | undefined>;
}

export interface Sdk {
  headers: Map<string, string>;
  interfaces: { arm64?: string; x86_64?: string };
  /** The SDK's macOS version (SDKSettings.json), when known. */
  version?: string;
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

const FRAMEWORK = "System/Library/Frameworks/Virtualization.framework";

function stripComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, (m) => m.replace(/[^\n]/g, " ")).replace(
    /\/\/[^\n]*/g,
    "",
  );
}

function availability(text: string): string | undefined {
  const m = /API_AVAILABLE\([^)]*macos\((\d+(?:\.\d+)*)\)/.exec(text);
  if (!m) return undefined;
  return m[1].includes(".") ? m[1] : `${m[1]}.0`;
}

/** Whether an #if line opens an arm64-only region. */
function isArm64Cond(line: string): boolean {
  return /^#\s*ifdef\s+__arm64__/.test(line) ||
    /^#\s*if\s+defined\s*\(\s*__arm64__\s*\)/.test(line);
}

/** Splits a header into declarations, owners and enums. */
export function parseHeader(
  header: string,
  raw: string,
): { decls: Decl[]; owners: Owner[]; enums: EnumInfo[] } {
  const lines = stripComments(raw).split("\n");
  const stack: { arm: boolean; active: boolean }[] = [];
  const armNow = () => stack.some((f) => f.arm && f.active);
  const decls: Decl[] = [];
  const owners: Owner[] = [];
  const enums: EnumInfo[] = [];
  let owner: Owner | undefined;
  let pending = "";
  let pendingArm = false;
  let enumBuf: { text: string; arm: boolean } | undefined;
  let recent: string[] = [];
  for (const line0 of lines) {
    const line = line0.trim();
    if (line.startsWith("#")) {
      if (/^#\s*if/.test(line)) stack.push({ arm: isArm64Cond(line), active: true });
      else if (/^#\s*else/.test(line) || /^#\s*elif/.test(line)) {
        const top = stack[stack.length - 1];
        if (top) top.active = false;
      } else if (/^#\s*endif/.test(line)) stack.pop();
      continue;
    }
    if (line === "") continue;
    if (enumBuf) {
      enumBuf.text += " " + line;
      if (/^}/.test(line) && line.includes(";")) {
        enums.push(parseEnum(header, enumBuf.text, enumBuf.arm));
        enumBuf = undefined;
      }
      continue;
    }
    if (/typedef\s+NS_(?:ENUM|OPTIONS)\s*\(/.test(line)) {
      enumBuf = { text: line, arm: armNow() };
      if (/}.*;/.test(line)) {
        enums.push(parseEnum(header, enumBuf.text, enumBuf.arm));
        enumBuf = undefined;
      }
      continue;
    }
    const iface = /^@(interface|protocol)\s+(\w+)\s*(?::\s*(\w+))?\s*(\()?/.exec(line);
    if (iface && !line.endsWith(";")) {
      owner = {
        name: iface[2],
        kind: iface[1] === "interface" ? "class" : "protocol",
        superclass: iface[3],
        category: iface[4] !== undefined,
        // The class's API_AVAILABLE may stand a few attribute lines up
        // (NS_REQUIRES_PROPERTY_DEFINITIONS, NS_SWIFT_SENDABLE, as in macOS 27).
        introduced: availability(recent.slice(-4).join(" ") + " " + line),
        arm64: armNow(),
        header,
      };
      owners.push(owner);
      pending = "";
      recent = [];
      continue;
    }
    if (line.startsWith("@end")) {
      owner = undefined;
      pending = "";
      recent = [];
      continue;
    }
    if (owner) {
      if (pending === "") pendingArm = armNow();
      pending += (pending ? " " : "") + line;
      if (line.endsWith(";")) {
        decls.push({ text: pending, arm64: pendingArm, header, owner });
        pending = "";
      }
    } else {
      recent.push(line);
    }
  }
  return { decls, owners, enums };
}

function parseEnum(header: string, text: string, arm: boolean): EnumInfo {
  const name = /NS_(?:ENUM|OPTIONS)\s*\(\s*\w+\s*,\s*(\w+)\s*\)/.exec(text)?.[1] ?? "?";
  const body = text.slice(text.indexOf("{") + 1, text.lastIndexOf("}"));
  const tail = text.slice(text.lastIndexOf("}"));
  const cases = new Map<string, string | undefined>();
  for (const part of body.split(",")) {
    const m = /^\s*(\w+)/.exec(part);
    if (m) cases.set(m[1], availability(part));
  }
  return {
    name,
    swiftName: /NS_SWIFT_NAME\(([\w.]+)\)/.exec(tail)?.[1],
    introduced: availability(tail),
    arm64: arm,
    header,
    cases,
  };
}

/** Removes balanced parenthesized groups. */
function stripParens(s: string): string {
  let out = s;
  for (let i = 0; i < 8; i++) {
    const next = out.replace(/\([^()]*\)/g, " ");
    if (next === out) break;
    out = next;
  }
  return out;
}

function selectorOf(decl: string): string | undefined {
  const m = /^([-+])/.exec(decl);
  if (!m) return undefined;
  const body = stripParens(decl.slice(1));
  const pieces = [...body.matchAll(/(\w+)\s*:/g)].map((p) => p[1]);
  if (pieces.length > 0) return `${m[1]}${pieces.map((p) => `${p}:`).join("")}`;
  return `${m[1]}${/(\w+)/.exec(body)?.[1]}`;
}

function propertyOf(decl: string): { name: string; isClass: boolean } | undefined {
  if (!decl.startsWith("@property")) return undefined;
  const attrs = /^@property\s*\(([^)]*)\)/.exec(decl)?.[1] ?? "";
  let rest = decl.replace(/^@property\s*(\([^)]*\))?/, "").replace(/;\s*$/, "");
  rest = rest.replace(/\b[A-Z][A-Z0-9_]+\b\s*(\((?:[^()]|\([^()]*\))*\))?/g, " ");
  const ids = [...rest.matchAll(/(\w+)/g)].map((m) => m[1]);
  const name = ids[ids.length - 1];
  if (!name) return undefined;
  return { name, isClass: /\bclass\b/.test(attrs) };
}

export async function loadSdkDir(dir: string): Promise<Sdk> {
  const fw = dir.endsWith("Virtualization.framework") ? dir : `${dir}/${FRAMEWORK}`;
  const headers = new Map<string, string>();
  for await (const e of Deno.readDir(`${fw}/Headers`)) {
    if (e.name.endsWith(".h")) {
      headers.set(e.name, await Deno.readTextFile(`${fw}/Headers/${e.name}`));
    }
  }
  const mod = `${fw}/Modules/Virtualization.swiftmodule`;
  const read = async (p: string) => {
    try {
      return await Deno.readTextFile(p);
    } catch {
      return undefined;
    }
  };
  let version: string | undefined;
  const settings = fw === dir ? undefined : await read(`${dir}/SDKSettings.json`);
  if (settings) version = (JSON.parse(settings) as { Version?: string }).Version;
  return {
    headers,
    interfaces: {
      arm64: await read(`${mod}/arm64e-apple-macos.swiftinterface`),
      x86_64: await read(`${mod}/x86_64-apple-macos.swiftinterface`),
    },
    version,
  };
}

async function git(gitDir: string, args: string[]): Promise<string> {
  const out = await new Deno.Command("git", { args: ["--git-dir", gitDir, ...args] }).output();
  if (!out.success) {
    throw new Error(`git ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** Reads the SDK from git objects (a fetched SDK repository), without a work tree. */
export async function loadSdkGit(gitDir: string, rev: string, prefix: string): Promise<Sdk> {
  const base = `${prefix.replace(/\/$/, "")}/${FRAMEWORK}/Versions/A`;
  const names = (await git(gitDir, ["ls-tree", "-r", "--name-only", rev, "--", base])).split("\n")
    .filter(Boolean);
  const headers = new Map<string, string>();
  let arm64: string | undefined;
  let x86_64: string | undefined;
  for (const n of names) {
    if (n.includes("/Headers/") && n.endsWith(".h")) {
      headers.set(n.slice(n.lastIndexOf("/") + 1), await git(gitDir, ["show", `${rev}:${n}`]));
    } else if (n.endsWith("arm64e-apple-macos.swiftinterface")) {
      arm64 = await git(gitDir, ["show", `${rev}:${n}`]);
    } else if (n.endsWith("x86_64-apple-macos.swiftinterface")) {
      x86_64 = await git(gitDir, ["show", `${rev}:${n}`]);
    }
  }
  let version: string | undefined;
  try {
    const settings = await git(gitDir, [
      "show",
      `${rev}:${prefix.replace(/\/$/, "")}/SDKSettings.json`,
    ]);
    version = (JSON.parse(settings) as { Version?: string }).Version;
  } catch {
    version = /MacOSX(\d+(?:\.\d+)*)\.sdk/.exec(prefix)?.[1];
  }
  return { headers, interfaces: { arm64, x86_64 }, version };
}

interface Index {
  owners: Owner[];
  decls: Decl[];
  enums: EnumInfo[];
  sdk: Sdk;
}

export function indexSdk(sdk: Sdk): Index {
  const owners: Owner[] = [];
  const decls: Decl[] = [];
  const enums: EnumInfo[] = [];
  for (const [name, text] of sdk.headers) {
    const p = parseHeader(name, text);
    owners.push(...p.owners);
    decls.push(...p.decls);
    enums.push(...p.enums);
  }
  return { owners, decls, enums, sdk };
}

function ownerName(fact: Fact): string {
  const head = fact.swift.split("(")[0];
  return head.slice(0, head.lastIndexOf("."));
}

export function deriveFrom(ix: Index, fact: Fact): Fact | string {
  const out: Fact = { ...fact };
  const classOf = (name: string) => ix.owners.find((o) => o.name === name && !o.category);
  if (fact.kind === "class" || fact.kind === "protocol") {
    const o = ix.owners.find((o) => o.name === fact.objc && !o.category && o.kind === fact.kind);
    if (!o) {
      return `${fact.swift}: no @${
        fact.kind === "class" ? "interface" : "protocol"
      } ${fact.objc} in the SDK`;
    }
    out.header = o.header;
    out.introduced = o.introduced ?? "?";
    out.arm64Only = o.arm64;
    out.throws = false;
    if (fact.kind === "class") out.superclass = o.superclass;
    return out;
  }
  if (fact.kind === "enum") {
    const e = ix.enums.find((e) => e.name === fact.objc);
    if (!e) return `${fact.swift}: no NS_ENUM ${fact.objc} in the SDK`;
    out.header = e.header;
    out.introduced = e.introduced ?? "?";
    out.arm64Only = e.arm64;
    out.throws = false;
    return out;
  }
  if (fact.kind === "case") {
    const e = ix.enums.find((e) => e.cases.has(fact.objc));
    if (!e) return `${fact.swift}: no enum constant ${fact.objc} in the SDK`;
    out.header = e.header;
    out.introduced = e.cases.get(fact.objc) ?? e.introduced ?? "?";
    out.arm64Only = e.arm64;
    out.throws = false;
    return out;
  }
  const cls = ownerName(fact);
  if (fact.source === "swiftinterface") {
    const find = (text: string | undefined) => {
      if (!text) return undefined;
      const re = new RegExp(
        `@available\\(macOS (\\d+(?:\\.\\d+)*), \\*\\)\\s*\\nextension Virtualization\\.${cls} \\{([\\s\\S]*?)\\n\\}`,
        "g",
      );
      for (const m of text.matchAll(re)) {
        const line = m[2].split("\n").find((l) => l.includes(fact.objc));
        if (line) return { introduced: m[1], line };
      }
      return undefined;
    };
    const arm = find(ix.sdk.interfaces.arm64);
    const x86 = find(ix.sdk.interfaces.x86_64);
    const hit = arm ?? x86;
    if (!hit) {
      return `${fact.swift}: no '${fact.objc}' in an extension of ${cls} in the swiftinterface`;
    }
    out.introduced = hit.introduced.includes(".") ? hit.introduced : `${hit.introduced}.0`;
    out.arm64Only = arm !== undefined && x86 === undefined;
    out.throws = /\)\s*(re)?throws\b/.test(hit.line);
    out.header = "Virtualization.swiftinterface";
    return out;
  }
  // Members: search the class, its categories, then (for -init only) its superclasses.
  let name: string | undefined = cls;
  let first = true;
  while (name && name !== "NSObject" && name !== "NSView") {
    const candidates = ix.decls.filter((d) => d.owner?.name === name);
    for (const d of candidates) {
      let hit = false;
      if (fact.kind === "property") {
        const p = propertyOf(d.text);
        hit = p !== undefined && p.name === fact.objc && p.isClass === (fact.static === true);
      } else {
        hit = selectorOf(d.text) === fact.objc && !/NS_UNAVAILABLE/.test(d.text);
      }
      if (!hit) continue;
      const o = d.owner!;
      const base = o.category ? classOf(o.name) : o;
      out.header = d.header;
      out.introduced = availability(d.text) ?? o.introduced ?? base?.introduced ?? "?";
      out.arm64Only = d.arm64 || o.arm64 || (base?.arm64 ?? false);
      // An out-error parameter (NSError **) imports as `throws`; block
      // parameters take a single NSError *.
      out.throws = /NSError\s*\*\s*(?:_\w+\s*)?\*/.test(d.text) &&
        !/NS_SWIFT_NOTHROW/.test(d.text);
      if (!first) {
        // Inherited: available as of the class that uses it.
        const c = classOf(cls);
        out.header = c?.header ?? out.header;
        out.introduced = c?.introduced ?? out.introduced;
        out.arm64Only = c?.arm64 ?? out.arm64Only;
      }
      return out;
    }
    if (fact.objc !== "-init" && fact.kind !== "property") break;
    name = classOf(name)?.superclass;
    first = false;
  }
  if (fact.objc === "-init") {
    // NSObject's -init, inherited and not redeclared.
    const c = classOf(cls);
    if (!c) return `${fact.swift}: no class ${cls} in the SDK`;
    return {
      ...out,
      header: c.header,
      introduced: c.introduced ?? "?",
      arm64Only: c.arm64,
      throws: false,
    };
  }
  return `${fact.swift}: no ${fact.kind} ${fact.objc} in ${cls} or its superclasses`;
}

/** Differences between the table and the SDK, and the regenerated table. */
export function regenerate(sdk: Sdk, table: FactsFile): { problems: string[]; table: FactsFile } {
  const ix = indexSdk(sdk);
  const problems: string[] = [];
  const symbols = table.symbols.map((f) => {
    const d = deriveFrom(ix, f);
    if (typeof d === "string") {
      // An SDK older than the symbol cannot know it: not a difference.
      if (!(sdk.version && cmpVersion(f.introduced, sdk.version) > 0)) problems.push(d);
      return f;
    }
    for (const k of ["introduced", "arm64Only", "throws", "header", "superclass"] as const) {
      if (d[k] !== f[k]) {
        problems.push(`${f.swift}: ${k} is ${f[k]} in the table, ${d[k]} in the SDK`);
      }
    }
    return d;
  });
  return { problems, table: { ...table, symbols } };
}

if (import.meta.main) {
  const args = [...Deno.args];
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const tablePath = opt("--table") ?? new URL("./sdk-facts.json", import.meta.url).pathname;
  const check = args.includes("--check");
  let sdk: Sdk;
  if (opt("--sdk")) sdk = await loadSdkDir(opt("--sdk")!);
  else if (opt("--git")) {
    sdk = await loadSdkGit(opt("--git")!, opt("--rev") ?? "HEAD", opt("--prefix") ?? "");
  } else {
    console.error(
      "usage: sdk_facts.ts --sdk SDKDIR | --git GITDIR [--rev REV] --prefix MacOSX26.0.sdk [--check]",
    );
    Deno.exit(2);
  }
  if (sdk.headers.size === 0) {
    console.error("sdk_facts: no Virtualization headers found there");
    Deno.exit(2);
  }
  const table = JSON.parse(await Deno.readTextFile(tablePath)) as FactsFile;
  const { problems, table: next } = regenerate(sdk, table);
  if (sdk.version) console.log(`sdk_facts: SDK macOS ${sdk.version}`);
  for (const p of problems) console.log(p);
  if (check) {
    if (problems.length > 0) Deno.exit(1);
    console.log(`sdk_facts: ${table.symbols.length} symbols agree with the SDK`);
  } else {
    await Deno.writeTextFile(tablePath, JSON.stringify(next, null, 2) + "\n");
    console.log(`sdk_facts: wrote ${tablePath} (${problems.length} changes)`);
  }
}
