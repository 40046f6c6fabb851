/**
 * Spec summaries (`summary.json`, see core/store/bundle.ts) make `cove
 * list` and `cove get` fast and must change nothing they show: output is
 * the same with and without them, a spec edited by hand shows at once, a
 * corrupt summary is ignored by reads and rewritten by the next command
 * that writes, and with fresh summaries the listing loads neither the YAML
 * parser nor the validator.
 */
import { join } from "node:path";
import { assert, assertEquals } from "../helpers/assert.ts";
import { cove, ROOT, withTempDir } from "../helpers/cli.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Store } from "../../core/store/store.ts";

/** A store with VMs of a few kinds, and one whose spec does not validate. */
async function populate(home: string): Promise<Store> {
  const store = new Store(home);
  await store.create("plain", { spec: parseSpec("disks: [{ path: disk.img, size: 1MiB }]\n") });
  await store.create("Big", {
    spec: parseSpec(
      "cpus: 3\nmemory: 3GiB\nengine: qemu\ndisks: [{ path: root.raw, size: 2MiB }]\n",
    ),
  });
  await store.create("mac-1", {
    spec: parseSpec("os: macos\ndisks: [{ path: disk.img, size: 1MiB }]\n"),
  });
  await store.create("bad", { spec: parseSpec("disks: [{ path: disk.img, size: 1MiB }]\n") });
  await Deno.writeTextFile(store.bundle("bad").specPath, "cpus: [not, a, number]\n");
  return store;
}

/** What the reading commands print. */
async function views(home: string): Promise<string[]> {
  const out: string[] = [];
  for (
    const args of [
      ["list"],
      ["list", "--format", "json"],
      ["list", "-q"],
      ["get", "Big", "--format", "json"],
      ["get", "mac-1"],
      ["get", "bad", "--format", "json"],
    ]
  ) {
    const r = await cove(home, args);
    out.push(`${args.join(" ")} -> ${r.code}\n${r.stdout}${r.stderr}`);
  }
  return out;
}

async function removeSummaries(store: Store): Promise<void> {
  for (const name of await store.names()) {
    await Deno.remove(store.bundle(name).file("summary")).catch(() => {});
  }
}

Deno.test("summary: list and get print the same with fresh summaries, without any, and with corrupt ones", () =>
  withTempDir(async (home) => {
    const store = await populate(home);
    for (const n of ["plain", "Big", "mac-1"]) {
      assert(store.bundle(n).freshSummary(), `${n} has a fresh summary after create`);
    }
    assertEquals(store.bundle("bad").freshSummary(), undefined, "a hand-broken spec has none");
    const fresh = await views(home);
    assert(fresh[0].includes("plain"), fresh[0]);
    assert(/Big\s+stopped\s+linux\s+\S+\s+3\s+3GiB\s+2MiB\s+qemu/.test(fresh[0]), fresh[0]);
    await removeSummaries(store);
    assertEquals(await views(home), fresh, "without summaries");
    for (const n of ["plain", "Big", "mac-1"]) {
      await Deno.writeTextFile(store.bundle(n).file("summary"), '{"format":1,"cove":');
    }
    assertEquals(await views(home), fresh, "with corrupt summaries");
  }));

Deno.test("summary: a spec edited by hand, in place and at the same size, shows at once", () =>
  withTempDir(async (home) => {
    const store = await populate(home);
    const b = store.bundle("Big");
    const text = await Deno.readTextFile(b.specPath);
    assert(/^cpus: 3$/m.test(text), text);
    // In place (same inode), same size: only the text tells the edit apart.
    const f = await Deno.open(b.specPath, { write: true });
    await f.write(new TextEncoder().encode(text.replace(/^cpus: 3$/m, "cpus: 1")));
    f.close();
    const rows = JSON.parse((await cove(home, ["list", "--format", "json"])).stdout) as {
      name: string;
      cpus?: number;
    }[];
    assertEquals(rows.find((r) => r.name === "Big")?.cpus, 1);
    assertEquals((await store.summary(b)).cpus, 1);
    const get = JSON.parse((await cove(home, ["get", "Big", "--format", "json"])).stdout) as {
      spec: { cpus: number };
    };
    assertEquals(get.spec.cpus, 1);
    assertEquals(b.freshSummary(), undefined, "reads rewrote nothing");
    // A hand edit that breaks the spec shows as broken at once, too.
    await Deno.writeTextFile(b.specPath, "cpus: lots\n");
    const broken = JSON.parse((await cove(home, ["list", "--format", "json"])).stdout) as {
      name: string;
      state: string;
      error?: string;
    }[];
    const row = broken.find((r) => r.name === "Big")!;
    assertEquals(row.state, "broken");
    assert(row.error?.includes("cpus"), row.error);
  }));

Deno.test("summary: a corrupt summary is left alone by list and rewritten by the next command that writes", () =>
  withTempDir(async (home) => {
    const store = await populate(home);
    const plain = store.bundle("plain");
    const big = store.bundle("Big");
    const good = await Deno.readTextFile(plain.file("summary"));
    const corrupt = good.replace(/"parsed":/, '"parsed": oops');
    await Deno.writeTextFile(plain.file("summary"), corrupt);
    await Deno.writeTextFile(big.file("summary"), "");
    assertEquals((await cove(home, ["list"])).code, 0);
    assertEquals(await Deno.readTextFile(plain.file("summary")), corrupt, "list wrote nothing");
    // A write of this VM's spec rewrites its summary ...
    const set = await cove(home, ["set", "Big", "--cpus", "2"]);
    assertEquals(set.code, 0, set.stderr);
    assertEquals(big.freshSummary()?.cpus, 2);
    // ... and any command that writes the store rewrites every stale one.
    assertEquals(plain.freshSummary(), undefined);
    const create = await cove(home, ["create", "another", "--disk-size", "1MiB"]);
    assertEquals(create.code, 0, create.stderr);
    assertEquals(await Deno.readTextFile(plain.file("summary")), good);
    assertEquals(store.bundle("bad").freshSummary(), undefined, "an invalid spec gets none");
  }));

Deno.test("summary: with fresh summaries, list, get and completion load neither yaml nor zod", () =>
  withTempDir(async (home) => {
    await populate(home);
    await Deno.remove(join(home, "vms", "bad"), { recursive: true });
    // The project's config, with the parser and the validator replaced by modules that fail.
    const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
    const poison = join(home, "poison.ts");
    await Deno.writeTextFile(poison, 'throw new Error("POISON: a parser module was loaded");\n');
    config.imports.yaml = `file://${poison}`;
    config.imports.zod = `file://${poison}`;
    const configPath = join(home, "deno.json");
    await Deno.writeTextFile(configPath, JSON.stringify(config));
    const run = async (args: string[]) => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "--quiet",
          "--no-lock",
          "--config",
          configPath,
          join(ROOT, "cli", "main.ts"),
          ...args,
        ],
        env: { COVE_HOME: join(home), NO_COLOR: "1" },
        cwd: home,
        stdout: "piped",
        stderr: "piped",
      }).output();
      return {
        code: r.code,
        out: new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr),
      };
    };
    for (
      const args of [["list"], ["list", "--format", "json"], ["get", "Big", "--format", "json"], [
        "get",
        "Big",
      ], [
        "complete",
        "--",
        "get",
        "",
      ]]
    ) {
      const r = await run(args);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.out}`);
      assert(!r.out.includes("POISON"), r.out);
    }
    // The check can fail: without summaries the listing needs the parser.
    await Deno.remove(new Store(home).bundle("plain").file("summary"));
    const r = await run(["list", "--format", "json"]);
    const rows = JSON.parse(r.out) as { name: string; state: string }[];
    assertEquals(rows.find((v) => v.name === "plain")?.state, "broken", r.out);
  }));

Deno.test("summary: the detached supervisor of `cove start` reads a fresh summary, loading neither yaml nor zod", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    // A kernel that does not exist: the engine's checks refuse it, after the spec is read.
    await store.create("k", {
      spec: parseSpec(
        "engine: qemu\nboot: { loader: kernel, kernel: no-such-vmlinuz }\n" +
          "disks: [{ path: disk.img, size: 1MiB }]\nagent: false\n",
      ),
    });
    assert(store.bundle("k").freshSummary(), "a fresh summary after create");
    const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
    const poison = join(home, "poison.ts");
    await Deno.writeTextFile(poison, 'throw new Error("POISON: a parser module was loaded");\n');
    config.imports.yaml = `file://${poison}`;
    config.imports.zod = `file://${poison}`;
    const configPath = join(home, "deno.json");
    await Deno.writeTextFile(configPath, JSON.stringify(config));
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        "--no-lock",
        "--config",
        configPath,
        join(ROOT, "cli", "main.ts"),
        // The command line startDetached gives its supervisor (the CLI's fast path).
        "run",
        "k",
        "--detached",
        "--no-graphics",
      ],
      env: { COVE_HOME: home, NO_COLOR: "1" },
      cwd: home,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(r.stderr);
    assert(!err.includes("POISON"), err);
    assert(r.code !== 0, err);
    const e = JSON.parse(err.trim().split("\n").pop()!).error as { code: string; message: string };
    assert(e.message.includes("no-such-vmlinuz"), err);
  }));
