/**
 * The shape of the tree, enforced: the CLI is a client of mod.ts and of
 * nothing else in the product, and it loads the library per command, so
 * `cove --version`, help and completions start without the spec (zod,
 * yaml), the registry code or any engine.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../helpers/assert.ts";
import { ROOT } from "../helpers/cli.ts";

const CLI_DIR = join(ROOT, "cli");
const TOP = join(ROOT, "."); // without a trailing slash

async function* tsFiles(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* tsFiles(p);
    else if (e.name.endsWith(".ts")) yield p;
  }
}

/** Every module specifier a file names: static imports and exports, and dynamic imports. */
function specifiers(text: string): { spec: string; typeOnly: boolean; dynamic: boolean }[] {
  const out: { spec: string; typeOnly: boolean; dynamic: boolean }[] = [];
  for (const m of text.matchAll(/^\s*(import|export)\s+(type\s+)?[^;]*?\bfrom\s+"([^"]+)"/gms)) {
    out.push({ spec: m[3], typeOnly: !!m[2], dynamic: false });
  }
  for (const m of text.matchAll(/^\s*import\s+"([^"]+)"/gm)) {
    out.push({ spec: m[1], typeOnly: false, dynamic: false });
  }
  for (const m of text.matchAll(/\bimport\(\s*"([^"]+)"\s*\)/g)) {
    out.push({ spec: m[1], typeOnly: false, dynamic: true });
  }
  return out;
}

Deno.test("layering: no file in cli/ imports core/, engines/ or ffi/; only mod.ts, npm packages and cli/ files", async () => {
  const bad: string[] = [];
  for await (const f of tsFiles(CLI_DIR)) {
    const text = await Deno.readTextFile(f);
    for (const { spec } of specifiers(text)) {
      if (!spec.startsWith(".")) continue; // a package from deno.json's import map
      const target = new URL(spec, `file://${f}`).pathname;
      const ok = target === join(ROOT, "mod.ts") || target.startsWith(CLI_DIR + "/") ||
        target === join(ROOT, "deno.json");
      if (!ok) bad.push(`${f.slice(ROOT.length)} imports ${spec}`);
    }
  }
  assertEquals(bad, []);
});

/** The static (non-dynamic, non-type) import graph of a module, as Deno resolves it. */
async function staticGraph(
  entry: string,
): Promise<{ local: string[]; packages: string[]; builtins: string[] }> {
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(info.code, 0, new TextDecoder().decode(info.stderr));
  const graph = JSON.parse(new TextDecoder().decode(info.stdout)) as {
    modules: {
      specifier: string;
      dependencies?: { code?: { specifier: string }; isDynamic?: boolean }[];
    }[];
  };
  const byName = new Map(graph.modules.map((m) => [m.specifier, m]));
  const root = new URL(`file://${entry}`).href;
  const seen = new Set<string>([root]);
  const todo = [root];
  while (todo.length) {
    const m = byName.get(todo.pop()!);
    for (const d of m?.dependencies ?? []) {
      if (!d.code || d.isDynamic || seen.has(d.code.specifier)) continue;
      seen.add(d.code.specifier);
      todo.push(d.code.specifier);
    }
  }
  return {
    local: [...seen].filter((s) => s.startsWith("file://")).map((s) =>
      new URL(s).pathname.slice(TOP.length)
    ),
    builtins: [...seen].filter((s) => s.startsWith("node:")),
    packages: [...seen].filter((s) => s.startsWith("npm:")).map((s) =>
      s.replace(/^npm:\/?(@?[^@/]+(?:\/[^@/]+)?)@.*$/, "$1")
    ),
  };
}

Deno.test("layering: cove --version loads only cli/ files and deno.json: no library, no argument parser", async () => {
  const g = await staticGraph(join(CLI_DIR, "main.ts"));
  assertEquals(g.packages, [], "npm packages at startup");
  for (const s of g.local) {
    assert(s.startsWith("/cli/") || s === "/deno.json", `startup loads ${s}`);
  }
});

Deno.test("layering: the command tree (help) reaches neither mod.ts nor zod, yaml, tab completion, OCI or an engine", async () => {
  const g = await staticGraph(join(CLI_DIR, "program.ts"));
  assert(g.local.includes("/cli/commands/vm.ts"), g.local.join(", "));
  for (const s of g.local) {
    assert(s.startsWith("/cli/") || s === "/deno.json", `the command tree loads ${s}`);
  }
  assertEquals([...new Set(g.packages)], ["@commander-js/extra-typings"]);
});

Deno.test("layering: cli/ files loaded at startup import mod.ts only for types (commands load it when they run)", async () => {
  const bad: string[] = [];
  for await (const f of tsFiles(CLI_DIR)) {
    if (f === join(CLI_DIR, "progress.ts")) continue; // loaded by `create` when it runs
    for (const s of specifiers(await Deno.readTextFile(f))) {
      if (s.spec.endsWith("/mod.ts") && !s.typeOnly && !s.dynamic) {
        bad.push(`${f.slice(ROOT.length)}: ${s.spec}`);
      }
    }
  }
  assertEquals(bad, []);
  for await (const f of tsFiles(CLI_DIR)) {
    for (const s of specifiers(await Deno.readTextFile(f))) {
      if (s.spec.endsWith("progress.ts")) {
        assert(s.dynamic, `${f.slice(ROOT.length)} imports progress.ts statically`);
      }
    }
  }
});

Deno.test("layering: importing mod.ts loads no npm package (zod, yaml), no node:crypto, no OCI transfer code, no image source and no engine", async () => {
  const g = await staticGraph(join(ROOT, "mod.ts"));
  assertEquals(g.packages, [], "npm packages loaded by importing mod.ts");
  assert(!g.builtins.includes("node:crypto"), "node:crypto is slow to load; load it when needed");
  const heavy = g.local.filter((s) =>
    /^\/core\/(spec\/(load|schema|compose)|images\/(source|qcow2|download|catalog|ipsw)|oci\/(?!reference))/
      .test(s) ||
    (s.startsWith("/engines/") && s !== "/engines/select.ts" && s !== "/engines/engine.ts")
  );
  assertEquals(heavy, []);
  assert(g.local.includes("/core/store/store.ts"), g.local.join(", "));
});
