/**
 * Errors are part of the interface: every code is defined once, in
 * core/errors.ts's table, which the README lists; every code the tree
 * throws is in it; and with `--format json` a failing command prints
 * `{"error":{"code","message","hint","exit"}}` on stderr.
 */
import { join } from "node:path";
import { ERROR_CODES } from "../../mod.ts";
import { supervisorFailure } from "../../core/supervisor/start.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { cove, ROOT, withTempDir } from "../helpers/cli.ts";
import { onLinuxCi } from "../helpers/guard.ts";

async function* tsFiles(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* tsFiles(p);
    else if (e.name.endsWith(".ts")) yield p;
  }
}

/** zod's own issue codes (`ctx.addIssue({code: "custom"})`), which are not cove's. */
const ZOD_ISSUE_CODES = new Set(["custom"]);

/** Every error code written in the product's source, with a file that uses it. */
async function codesInSource(): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  const patterns = [
    /\b(?:CoveError|usageError|FlagError)\(\s*"([a-z][a-z0-9_.]*)"/g,
    /\bcode: "([a-z][a-z0-9_.]*)"/g,
    // new CoveError(cond ? "a.b" : "a.c", ...)
    /\bCoveError\(\s*[\w.!]+\s*\?\s*"([a-z][a-z0-9_.]*)"\s*:\s*"([a-z][a-z0-9_.]*)"/g,
  ];
  const files = [join(ROOT, "mod.ts")];
  for (const d of ["cli", "core", "engines", "ffi"]) {
    for await (const f of tsFiles(join(ROOT, d))) files.push(f);
  }
  for (const f of files) {
    const text = await Deno.readTextFile(f);
    for (const re of patterns) {
      for (const m of text.matchAll(re)) {
        for (const code of m.slice(1).filter((c) => c !== undefined)) {
          if (ZOD_ISSUE_CODES.has(code)) continue;
          if (!found.has(code)) found.set(code, f.slice(ROOT.length));
        }
      }
    }
  }
  return found;
}

Deno.test("errors: every code the source throws is in the table of core/errors.ts, and every entry is used", async () => {
  const used = await codesInSource();
  const missing = [...used].filter(([c]) => !(c in ERROR_CODES)).map(([c, f]) => `${c} (${f})`);
  assertEquals(missing, [], "codes thrown but not in ERROR_CODES");
  const unused = Object.keys(ERROR_CODES).filter((c) => !used.has(c));
  assertEquals(unused, [], "ERROR_CODES entries nothing throws");
});

/** The README's table of error codes, as core/errors.ts's table gives it. */
function readmeTable(): string {
  const entries = Object.entries(ERROR_CODES);
  const w1 = Math.max(4, ...entries.map(([c]) => c.length + 2));
  const w2 = Math.max(7, ...entries.map(([, m]) => m.length));
  const row = (a: string, b: string) => `| ${a.padEnd(w1)} | ${b.padEnd(w2)} |`;
  return [
    row("code", "meaning"),
    `| ${"-".repeat(w1)} | ${"-".repeat(w2)} |`,
    ...entries.map(([c, m]) => row(`\`${c}\``, m)),
  ].join("\n");
}

Deno.test("errors: the README's list of error codes is the table of core/errors.ts", async () => {
  let readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const start = readme.indexOf("<!-- error codes:");
  const end = readme.indexOf("<!-- end of error codes -->");
  assert(start > 0 && end > start, "the README has the error code section markers");
  if (Deno.env.get("UPDATE_GOLDEN") === "1") {
    const head = readme.indexOf("\n", start) + 1;
    readme = readme.slice(0, head) + readmeTable() + "\n" + readme.slice(end);
    await Deno.writeTextFile(join(ROOT, "README.md"), readme);
  }
  const rows = readme.slice(start, end).split("\n")
    .map((l) => /^\| `([^`]+)` +\| (.+?) +\|$/.exec(l))
    .filter((m) => m !== null)
    .map((m) => [m[1], m[2]]);
  assertEquals(Object.fromEntries(rows), { ...ERROR_CODES });
  assertEquals(rows.map((r) => r[0]), Object.keys(ERROR_CODES), "same order");
});

function jsonError(stderr: string): Record<string, unknown> {
  const lines = stderr.trimEnd().split("\n");
  assertEquals(lines.length, 1, `one line on stderr, got:\n${stderr}`);
  const v = JSON.parse(lines[0]);
  assertEquals(Object.keys(v), ["error"]);
  assertEquals(Object.keys(v.error).sort(), ["code", "exit", "hint", "message"]);
  return v.error;
}

Deno.test("cli: with --format json a failing command prints {error: {code, message, hint, exit}} on stderr", () =>
  withTempDir(async (home) => {
    const missing = await cove(home, ["get", "nope", "--format", "json"]);
    assertEquals(missing.code, 3);
    assertEquals(missing.stdout, "");
    assertEquals(jsonError(missing.stderr), {
      code: "vm.not_found",
      message: "no VM named 'nope'",
      hint: "run 'cove list' to see your VMs",
      exit: 3,
    });

    const flag = await cove(home, ["clone", "a", "b", "--format=json", "--concurrency", "x"]);
    assertEquals(flag.code, 2);
    assertEquals(jsonError(flag.stderr), {
      code: "usage.number",
      message: "--concurrency: 'x' is not a whole number",
      hint: "use 1 to 64",
      exit: 2,
    });

    const usage = await cove(home, ["list", "--format", "json", "--bogus"]);
    assertEquals(usage.code, 2);
    const u = jsonError(usage.stderr);
    assertEquals([u.code, u.exit], ["usage", 2]);
    assert(String(u.message).includes("--bogus"), String(u.message));

    // Without --format json the same failure is one plain line.
    const text = await cove(home, ["get", "nope"]);
    assertEquals(text.stderr.trim(), "cove: no VM named 'nope' (run 'cove list' to see your VMs)");
  }));

Deno.test("cove start reports the code of the detached supervisor's JSON error, not vm.start_failed", () => {
  const e = supervisorFailure(
    'noise\n{"error":{"code":"qemu.not_found","message":"qemu is not installed","hint":"install it","exit":5}}\n',
    5,
  );
  assertEquals([e.code, e.message, e.hint, e.exit], [
    "qemu.not_found",
    "qemu is not installed",
    "install it",
    5,
  ]);
  const plain = supervisorFailure("cove: something odd\n", 1);
  assertEquals([plain.code, plain.message, plain.exit], ["vm.start_failed", "something odd", 1]);
});

/** The QEMU binary for this host's architecture, when installed (the kernel check needs the qemu engine). */
const QEMU = `qemu-system-${Deno.build.arch === "aarch64" ? "aarch64" : "x86_64"}`;
const hasQemu = (Deno.env.get("PATH") ?? "").split(":").some((d) => {
  try {
    return Deno.statSync(join(d, QEMU)).isFile;
  } catch {
    return false;
  }
});

Deno.test({
  name:
    "cli: cove start --format json reports the detached supervisor's own code (boot.bad_kernel), not vm.start_failed",
  // The qemu engine is what checks the kernel: skipped without QEMU, except on Linux CI (make
  // setup installs it there), where a missing QEMU fails the test.
  ignore: !hasQemu && !onLinuxCi(),
  fn: () =>
    withTempDir(async (home) => {
      const kernel = join(home, "junk-kernel");
      await Deno.writeTextFile(kernel, "not a kernel\n");
      const made = await cove(home, [
        "create",
        "k",
        "--kernel",
        kernel,
        "--engine",
        "qemu",
        "--disk-size",
        "1MiB",
      ]);
      assertEquals(made.code, 0, made.stderr);
      const r = await cove(home, ["start", "k", "--format", "json"], {
        env: { COVE_QEMU_ACCEL: "tcg" },
      });
      assertEquals(r.code, 2, r.stderr);
      const e = jsonError(r.stderr);
      assertEquals([e.code, e.exit], ["boot.bad_kernel", 2]);
      assert(String(e.message).includes("is not a Linux kernel"), String(e.message));
    }),
});
