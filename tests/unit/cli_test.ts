/**
 * CLI golden tests: help texts, JSON output and one-line errors, through the
 * real `cove` entry point. Set UPDATE_GOLDEN=1 to rewrite the golden files.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { assertOneLineError, CLI, cove, ROOT, withTempDir } from "../helpers/cli.ts";
import { linuxTest } from "../helpers/guard.ts";

const GOLDEN = join(ROOT, "tests", "unit", "golden");

async function golden(name: string, actual: string): Promise<void> {
  const path = join(GOLDEN, name);
  if (Deno.env.get("UPDATE_GOLDEN")) {
    await Deno.mkdir(GOLDEN, { recursive: true });
    await Deno.writeTextFile(path, actual);
    return;
  }
  assertEquals(
    actual,
    await Deno.readTextFile(path),
    `golden ${name} (UPDATE_GOLDEN=1 rewrites it)`,
  );
}

for (const args of [["--help"], ["create", "--help"], ["list", "--help"]]) {
  Deno.test(`cli: 'cove ${args.join(" ")}' matches its golden text`, () =>
    withTempDir(async (home) => {
      const r = await cove(home, args, { env: { COLUMNS: "100" } });
      assertEquals(r.code, 0);
      await golden(`help-${args.filter((a) => a !== "--help").join("-") || "main"}.txt`, r.stdout);
    }));
}

Deno.test("cli: help, completions and the TAB callback run without FFI permission, so they never load a native library", () =>
  withTempDir(async (home) => {
    for (
      const args of [
        ["--help"],
        ["completions", "bash"],
        ["completions", "zsh"],
        ["completions", "fish"],
        ["complete", "--", ""],
        ["--version", "--debug"], // the full parser's path
      ]
    ) {
      const p = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--quiet",
          "--allow-read",
          "--allow-env",
          "--allow-write",
          "--deny-ffi",
          CLI,
          ...args,
        ],
        env: { COVE_HOME: home, COVE_VZ_LIBRARY: "/nonexistent/libcove_vz.dylib" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(p.stderr);
      assertEquals(p.code, 0, `${args.join(" ")}: ${err}`);
      assert(p.stdout.length > (args[0] === "--version" ? 4 : 100), args.join(" "));
    }
  }));

Deno.test("cli: completion scripts name cove and complete commands and VM names", () =>
  withTempDir(async (home) => {
    for (const shell of ["bash", "zsh", "fish"]) {
      const r = await cove(home, ["completions", shell]);
      assertEquals(r.code, 0);
      assertMatch(r.stdout, /cove complete --/);
    }
    const madeAlpha = await cove(home, ["create", "alpha", "--disk-size", "1GiB"]);
    assertEquals(madeAlpha.code, 0, madeAlpha.stderr);
    const cmds = await cove(home, ["complete", "--", "cr"]);
    assertMatch(cmds.stdout, /^create\t/m);
    const names = await cove(home, ["complete", "--", "delete", ""]);
    assertMatch(names.stdout, /^alpha\tVM$/m);
  }));

Deno.test("cli: list, create and get speak stable JSON", () =>
  withTempDir(async (home) => {
    assertEquals(JSON.parse((await cove(home, ["list", "--format", "json"])).stdout), []);
    const c = await cove(home, [
      "create",
      "web",
      "--cpus",
      "2",
      "--memory",
      "1GiB",
      "--disk-size",
      "2GiB",
      "--format",
      "json",
    ]);
    assertEquals(c.code, 0, c.stderr);
    const created = JSON.parse(c.stdout);
    assertEquals([created.name, created.state, created.cpus, created.memory, created.disk], [
      "web",
      "stopped",
      2,
      2 ** 30,
      2 * 2 ** 30,
    ]);
    const list = JSON.parse((await cove(home, ["list", "--format", "json"])).stdout);
    assertEquals(Object.keys(list[0]).sort(), [
      "arch",
      "cpus",
      "disk",
      "engine",
      "memory",
      "name",
      "os",
      "state",
    ]);
    const q = await cove(home, ["list", "-q"]);
    assertEquals(q.stdout, "web\n");
    const set = await cove(home, [
      "set",
      "web",
      "--cpus",
      "3",
      "--disk-size",
      "3GiB",
      "--format",
      "json",
    ]);
    assertEquals(set.code, 0, set.stderr);
    assertEquals([JSON.parse(set.stdout).cpus, JSON.parse(set.stdout).disk], [3, 3 * 2 ** 30]);
  }));

Deno.test("cli: bad input gets one line, exit code 2 and changes nothing", () =>
  withTempDir(async (home) => {
    const cfg = join(home, "bad.yaml");
    await Deno.writeTextFile(cfg, "cpus: 2\nmemory: [oops\n");
    const cases: [string[], number, RegExp][] = [
      [["create", "a/b"], 2, /^cove: 'a\/b' is not a valid VM name \(use 1 to 64 letters/],
      [["create", ".."], 2, /^cove: '\.\.' is not a valid VM name/],
      [["create", "x", "--cpus", "0"], 2, /^cove: --cpus: 0 is less than 1 \(use 1 to 256\)$/],
      [["create", "x", "--memory", "lots"], 2, /^cove: --memory: 'lots' is not a size/],
      [
        ["create", "x", "--config", join(home, "missing.yaml")],
        2,
        /^cove: --config: '.*missing\.yaml' does not exist/,
      ],
      [["create", "x", "--config", cfg], 2, /^cove: .*bad\.yaml:3:1: YAML syntax error/],
      [["create", "x", "--bogus"], 2, /^cove: unknown option '--bogus'/],
      [
        ["list", "--format", "xml"],
        2,
        /^cove: --format: 'xml' is not a format \(use text or json\)$/,
      ],
      [["completions", "tcsh"], 2, /^cove: 'tcsh' is not a supported shell/],
      [["stop", "x", "--timeout", "9999999999s"], 2, /^cove: --timeout: .* is more than 24d/],
      [["get", "nope"], 3, /^cove: no VM named 'nope' \(run 'cove list' to see your VMs\)$/],
    ];
    for (const [args, code, re] of cases) assertOneLineError(await cove(home, args), code, re);
    assertEquals(JSON.parse((await cove(home, ["list", "--format", "json"])).stdout), []);
    const madeDup = await cove(home, ["create", "dup", "--disk-size", "1GiB"]);
    assertEquals(madeDup.code, 0, madeDup.stderr);
    assertOneLineError(
      await cove(home, ["create", "dup"]),
      2,
      /^cove: a VM named 'dup' already exists/,
    );
  }));

Deno.test("cli: deleting or renaming a running VM is refused with exit code 4", () =>
  withTempDir(async (home) => {
    const madeRun1 = await cove(home, ["create", "run1", "--disk-size", "1GiB"]);
    assertEquals(madeRun1.code, 0, madeRun1.stderr);
    const holder = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        join(ROOT, "tests/unit/fixtures/hold_lock.ts"),
        join(home, "vms/run1/lock"),
      ],
      stdout: "piped",
    }).spawn();
    const reader = holder.stdout.getReader();
    await reader.read();
    try {
      assertOneLineError(
        await cove(home, ["delete", "run1"]),
        4,
        /^cove: cannot delete 'run1': it is running/,
      );
      assertOneLineError(
        await cove(home, ["rename", "run1", "run2"]),
        4,
        /^cove: cannot rename 'run1': it is running/,
      );
      assertOneLineError(
        await cove(home, ["set", "run1", "--disk-size", "2GiB"]),
        4,
        /it is running/,
      );
    } finally {
      holder.kill("SIGKILL");
      await holder.status;
      reader.releaseLock();
      await holder.stdout.cancel().catch(() => {});
    }
    assertEquals((await cove(home, ["rename", "run1", "run2"])).code, 0);
    assertEquals((await cove(home, ["delete", "run2"])).code, 0);
  }));

linuxTest(
  "uses /proc, which no one can write to, as COVE_HOME",
  "cli: an unwritable COVE_HOME is one line",
  async () => {
    const r = await cove("/proc/nope", ["create", "x"]);
    assertOneLineError(r, 5, /^cove: COVE_HOME '\/proc\/nope' is not writable/);
  },
);

Deno.test("cli: 'cove schema' prints a JSON Schema of cove.yaml", () =>
  withTempDir(async (home) => {
    const s = JSON.parse((await cove(home, ["schema"])).stdout);
    assertEquals(s.$schema, "https://json-schema.org/draft/2020-12/schema");
    assert(s.properties.disks && s.properties.networks && s.properties.shares);
  }));
