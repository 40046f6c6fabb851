/**
 * ABI drift: the C header (swift-shim/include/cove_vz.h, the source of
 * truth), the Deno symbol table (ffi/cove_vz.ts) and the Swift @_cdecl
 * exports (swift-shim/Sources/CoveVZ/*.swift) must name the same functions
 * with the same arity and types, and agree on the ABI version and the
 * shim's error codes.
 *
 * The Swift side is parsed with tree-sitter-swift (the prebuilt WASM from
 * the npm package tree-sitter-wasms, run by web-tree-sitter 0.22.6; newer
 * web-tree-sitter releases refuse that older WASM format). The header is a
 * plain C declaration list written in one style, so a small parser reads it.
 */
import Parser from "web-tree-sitter";
import pkg from "tree-sitter-wasms/package.json" with { type: "json" };
import { createRequire } from "node:module";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import {
  COVE_VZ_ABI_VERSION,
  COVE_VZ_ERROR_DOMAIN,
  CoveVzErr,
  symbols,
} from "../../ffi/cove_vz.ts";

const root = new URL("../../", import.meta.url).pathname;
const headerPath = `${root}swift-shim/include/cove_vz.h`;
const swiftDir = `${root}swift-shim/Sources/CoveVZ`;

/** A C-level signature: the types are normalized C spellings. */
interface Signature {
  name: string;
  params: string[];
  result: string;
}

function normC(t: string): string {
  return t.replace(/\s+/g, " ").replace(/\s*\*\s*/g, " *").trim();
}

/** Parses the function declarations of the header. */
export function parseHeader(text: string): Signature[] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/\/\/.*$/gm, " ").replace(
    /^#.*$/gm,
    " ",
  );
  const out: Signature[] = [];
  const re = /([A-Za-z_][\w ]*?[\s*]+)(cove_\w+)\s*\(([^)]*)\)\s*;/g;
  for (const m of code.matchAll(re)) {
    const params = m[3].trim() === "void" || m[3].trim() === ""
      ? []
      : m[3].split(",").map((p) => normC(p.trim().replace(/[A-Za-z_]\w*$/, "")));
    out.push({ name: m[2], params, result: normC(m[1]) });
  }
  return out;
}

/** The Deno symbol table as C signatures. */
export function tsSignatures(
  table: Record<string, { parameters: readonly string[]; result: string }>,
): Signature[] {
  const param: Record<string, string> = {
    u32: "uint32_t",
    i32: "int32_t",
    u64: "uint64_t",
    i64: "int64_t",
    buffer: "const char *",
    pointer: "char *",
  };
  const result: Record<string, string> = { ...param, void: "void" };
  return Object.entries(table).map(([name, s]) => ({
    name,
    params: s.parameters.map((p) => param[p] ?? `?${p}`),
    result: result[s.result] ?? `?${s.result}`,
  }));
}

const swiftToC: Record<string, string> = {
  "UInt32": "uint32_t",
  "Int32": "int32_t",
  "UInt64": "uint64_t",
  "Int64": "int64_t",
  "UnsafePointer<CChar>?": "const char *",
  "UnsafeMutablePointer<CChar>?": "char *",
  "UnsafeMutablePointer<CChar>": "char *",
};

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

/** The @_cdecl exports of Swift source, with their Swift types mapped to C. */
export async function swiftSignatures(sources: string[]): Promise<Signature[]> {
  const p = await swiftParser();
  const out: Signature[] = [];
  for (const source of sources) {
    const tree = p.parse(source);
    const visit = (node: Parser.SyntaxNode) => {
      if (node.type === "function_declaration") {
        const sig = cdeclOf(node);
        if (sig) out.push(sig);
      }
      for (const child of node.namedChildren) visit(child);
    };
    visit(tree.rootNode);
  }
  return out;
}

function cdeclOf(fn: Parser.SyntaxNode): Signature | undefined {
  const modifiers = fn.namedChildren.find((c) => c.type === "modifiers");
  const attr = modifiers?.namedChildren.find((c) =>
    c.type === "attribute" && c.text.startsWith("@_cdecl")
  );
  if (!attr) return undefined;
  const name = /@_cdecl\(\s*"([^"]+)"\s*\)/.exec(attr.text)?.[1];
  if (!name) return undefined;
  const params: string[] = [];
  let result = "void";
  let afterParams = false;
  for (const child of fn.children) {
    if (child.type === "parameter") {
      const type = child.namedChildren[child.namedChildren.length - 1];
      params.push(swiftToC[type.text.replace(/\s+/g, "")] ?? `?${type.text}`);
    } else if (child.type === ")") {
      afterParams = true;
    } else if (afterParams && child.isNamed && child.type !== "function_body") {
      result = swiftToC[child.text.replace(/\s+/g, "")] ?? `?${child.text}`;
      afterParams = false;
    }
  }
  return { name, params, result };
}

/** Every difference between two signature lists, as readable lines. */
export function compare(aName: string, a: Signature[], bName: string, b: Signature[]): string[] {
  const problems: string[] = [];
  const bBy = new Map(b.map((s) => [s.name, s]));
  const aNames = new Set(a.map((s) => s.name));
  for (const s of a) {
    const t = bBy.get(s.name);
    if (!t) {
      problems.push(`${s.name}: in ${aName}, missing from ${bName}`);
      continue;
    }
    if (s.params.length !== t.params.length) {
      problems.push(
        `${s.name}: ${s.params.length} parameters in ${aName}, ${t.params.length} in ${bName}`,
      );
    } else {
      s.params.forEach((p, i) => {
        if (p !== t.params[i]) {
          problems.push(
            `${s.name}: parameter ${i + 1} is ${p} in ${aName}, ${t.params[i]} in ${bName}`,
          );
        }
      });
    }
    if (s.result !== t.result) {
      problems.push(`${s.name}: returns ${s.result} in ${aName}, ${t.result} in ${bName}`);
    }
  }
  for (const t of b) {
    if (!aNames.has(t.name)) problems.push(`${t.name}: in ${bName}, missing from ${aName}`);
  }
  const dup = (xs: Signature[]) =>
    xs.map((s) => s.name).filter((n, i, all) => all.indexOf(n) !== i);
  for (const n of dup(a)) problems.push(`${n}: declared twice in ${aName}`);
  for (const n of dup(b)) problems.push(`${n}: declared twice in ${bName}`);
  return problems;
}

async function swiftSources(): Promise<{ path: string; text: string }[]> {
  const out = [];
  for await (const e of Deno.readDir(swiftDir)) {
    if (e.isFile && e.name.endsWith(".swift")) {
      out.push({
        path: `${swiftDir}/${e.name}`,
        text: await Deno.readTextFile(`${swiftDir}/${e.name}`),
      });
    }
  }
  return out;
}

Deno.test("the header declares the functions the design requires", async () => {
  const header = parseHeader(await Deno.readTextFile(headerPath));
  const names = header.map((s) => s.name);
  for (
    const required of [
      "cove_abi_version",
      "cove_free",
      "cove_vz_next_event",
      "cove_vz_pump",
      "cove_vz_host_info",
      "cove_vz_validate",
      "cove_vz_create",
      "cove_vz_start",
      "cove_vz_request_stop",
      "cove_vz_stop",
      "cove_vz_pause",
      "cove_vz_resume",
      "cove_vz_save",
      "cove_vz_restore",
      "cove_vz_set_balloon_target",
      "cove_vz_vsock_connect",
      "cove_vz_vsock_listen",
      "cove_vz_install_macos",
      "cove_vz_install_cancel",
      "cove_vz_restore_image_fetch_latest",
    ]
  ) assert(names.includes(required), `${required} is declared`);
  assertEquals(header.find((s) => s.name === "cove_vz_next_event"), {
    name: "cove_vz_next_event",
    params: ["uint64_t", "int32_t"],
    result: "char *",
  });
});

Deno.test("the Deno symbol table matches the header in name, arity and type", async () => {
  const header = parseHeader(await Deno.readTextFile(headerPath));
  assertEquals(compare("cove_vz.h", header, "ffi/cove_vz.ts", tsSignatures(symbols)), []);
});

Deno.test("the Swift @_cdecl exports match the header in name, arity and type", async () => {
  const header = parseHeader(await Deno.readTextFile(headerPath));
  const swift = await swiftSignatures((await swiftSources()).map((s) => s.text));
  assert(swift.length > 0, "found @_cdecl exports");
  assertEquals(compare("cove_vz.h", header, "Swift", swift), []);
});

Deno.test("the ABI version and the shim's error codes agree across header, Swift and TypeScript", async () => {
  const h = await Deno.readTextFile(headerPath);
  assertEquals(Number(/#define COVE_VZ_ABI_VERSION (\d+)/.exec(h)?.[1]), COVE_VZ_ABI_VERSION);
  assertEquals(/#define COVE_VZ_ERROR_DOMAIN "([^"]+)"/.exec(h)?.[1], COVE_VZ_ERROR_DOMAIN);
  const headerCodes = Object.fromEntries(
    [...h.matchAll(/#define COVE_VZ_ERR_(\w+) (\d+)/g)].map((m) => [m[1], Number(m[2])]),
  );
  const tsCodes: Record<string, number> = {
    BAD_REQUEST: CoveVzErr.BadRequest,
    NO_SUCH_HANDLE: CoveVzErr.NoSuchHandle,
    UNSUPPORTED: CoveVzErr.Unsupported,
    STATE: CoveVzErr.State,
    NOT_MAIN_THREAD: CoveVzErr.NotMainThread,
    IO: CoveVzErr.Io,
    TIMEOUT: CoveVzErr.Timeout,
    INTERNAL: CoveVzErr.Internal,
  };
  assertEquals(headerCodes, tsCodes);
  const swift = (await swiftSources()).map((s) => s.text).join("\n");
  assertEquals(Number(/let abiVersion: UInt32 = (\d+)/.exec(swift)?.[1]), COVE_VZ_ABI_VERSION);
  assertMatch(
    swift,
    new RegExp(`let shimDomain = "${COVE_VZ_ERROR_DOMAIN.replace(/\./g, "\\.")}"`),
  );
  const swiftCodes = Object.fromEntries(
    [...swift.matchAll(/case (\w+) = (\d+)/g)].map((m) => [m[1], Number(m[2])]),
  );
  assertEquals(swiftCodes, {
    badRequest: 1,
    noSuchHandle: 2,
    unsupported: 3,
    state: 4,
    notMainThread: 5,
    io: 6,
    timeout: 7,
    internalError: 99,
  });
  assertEquals(
    Object.values(swiftCodes).sort((a, b) => a - b),
    Object.values(headerCodes).sort((a, b) => a - b),
  );
});

Deno.test("the Swift sources parse without syntax errors (the check short of compiling)", async () => {
  const p = await swiftParser();
  const problems: string[] = [];
  for (const { path, text } of await swiftSources()) {
    const visit = (n: Parser.SyntaxNode) => {
      if (n.type === "ERROR" || n.isMissing) {
        problems.push(
          `${path.slice(root.length)}:${n.startPosition.row + 1}: ${n.text.slice(0, 50)}`,
        );
      }
      for (const c of n.children) visit(c);
    };
    visit(p.parse(text).rootNode);
  }
  assertEquals(problems, []);
});

Deno.test("the drift check catches a changed type, a missing export and a wrong arity", async () => {
  const header = parseHeader(await Deno.readTextFile(headerPath));
  const sources = (await swiftSources()).map((s) => s.text);
  const tampered = sources.map((t) =>
    t.replace(
      "_ port: UInt32) -> UnsafeMutablePointer<CChar> {\n  reply { try Registry.live(vm).vsockConnect",
      "_ port: UInt64) -> UnsafeMutablePointer<CChar> {\n  reply { try Registry.live(vm).vsockConnect",
    )
      .replace('@_cdecl("cove_vz_pump")', '@_cdecl("cove_vz_pump_renamed")')
      .replace(
        "public func cove_vz_stop(_ vm: UInt64)",
        "public func cove_vz_stop(_ vm: UInt64, _ extra: Int32)",
      )
  );
  assert(tampered.join() !== sources.join(), "the tampering applied");
  const problems = compare("cove_vz.h", header, "Swift", await swiftSignatures(tampered));
  assertEquals(problems.sort(), [
    "cove_vz_pump: in cove_vz.h, missing from Swift",
    "cove_vz_pump_renamed: in Swift, missing from cove_vz.h",
    "cove_vz_stop: 1 parameters in cove_vz.h, 2 in Swift",
    "cove_vz_vsock_connect: parameter 2 is uint32_t in cove_vz.h, uint64_t in Swift",
  ]);
  const ts = tsSignatures({
    ...symbols,
    cove_vz_next_event: { parameters: ["u64", "u32"], result: "pointer" },
  });
  assertEquals(compare("cove_vz.h", header, "ffi", ts), [
    "cove_vz_next_event: parameter 2 is int32_t in cove_vz.h, uint32_t in ffi",
  ]);
});
