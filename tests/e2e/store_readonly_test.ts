/**
 * `cove list`, `cove get` and TAB completion only read: they take no lock,
 * reap nothing and sweep nothing, whatever the store holds (a running VM,
 * a busy one, a dead ephemeral clone, a killed create's staging directory,
 * a spec edited by hand, a corrupt spec summary). The next command that
 * writes reaps what is dead and rewrites the summaries.
 */
import { join, relative } from "node:path";
import { assert, assertEquals } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Store } from "../../core/store/store.ts";

/** Every path under `dir` with its type, size, mode and modification time. */
async function snapshot(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      const st = await Deno.lstat(p);
      out.push(
        `${relative(dir, p)} ${e.isDirectory ? "d" : e.isSymlink ? "l" : "f"} ${st.size} ${
          (st.mode ?? 0).toString(8)
        } ${st.mtime?.getTime()}`,
      );
      if (e.isDirectory) await walk(p);
    }
  };
  await walk(dir);
  return out.sort();
}

async function holdLock(lockPath: string, purpose: string) {
  const script = new URL("../unit/fixtures/hold_lock.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", script, lockPath, purpose],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("locked")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`hold_lock exited: ${seen}`);
    seen += value;
  }
  reader.releaseLock();
  return child;
}

Deno.test("list, get and completion change nothing on disk; the next command that writes reaps a dead ephemeral clone and a killed create's staging and rewrites stale summaries", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    await store.create("base", { spec: parseSpec("disks: [{ path: disk.img, size: 64MiB }]\n") });
    await store.create("pushing", { spec: parseSpec("") });
    await store.create("edited", { spec: parseSpec("cpus: 2\n") });
    await store.create("corrupt", { spec: parseSpec("") });
    // An ephemeral clone whose supervisor died (kill -9 releases the lock like this).
    const eph = await store.clone("base", "base-eph-dead", { ephemeral: true });
    eph.lock!.release();
    // A create killed half-way leaves its staging directory (nobody holds its lock).
    await Deno.mkdir(join(store.tmpDir, "create-half-0000"), { recursive: true });
    await Deno.writeTextFile(join(store.tmpDir, "create-half-0000", "disk.img"), "x");
    // A spec edited by hand (its summary is stale) and a corrupt summary: reads parse in full
    // and rewrite neither.
    const edited = store.bundle("edited");
    await Deno.writeTextFile(
      edited.specPath,
      (await Deno.readTextFile(edited.specPath)).replace(/^cpus: 2$/m, "cpus: 1"),
    );
    const corrupt = store.bundle("corrupt");
    await Deno.writeTextFile(corrupt.file("summary"), "{ not json");
    const runner = await holdLock(store.bundle("base").lockPath, "run");
    const pusher = await holdLock(store.bundle("pushing").lockPath, "push");
    try {
      const before = await snapshot(home);
      const list = await cove(home, ["list", "--format", "json"]);
      assertEquals(list.code, 0, list.stderr);
      const rows = JSON.parse(list.stdout) as {
        name: string;
        state: string;
        busy?: string;
        cpus?: number;
      }[];
      assertEquals(
        rows.map((r) => [r.name, r.state, r.busy]),
        [
          ["base", "starting", undefined],
          ["corrupt", "stopped", undefined],
          ["edited", "stopped", undefined],
          ["pushing", "busy", "push"],
        ],
      );
      assertEquals(rows.find((r) => r.name === "edited")?.cpus, 1, "the hand edit shows");
      const text = await cove(home, ["list"]);
      assertEquals(text.code, 0, text.stderr);
      assert(/pushing\s+busy \(push\)/.test(text.stdout), text.stdout);
      assertEquals((await cove(home, ["get", "pushing"])).code, 0);
      assertEquals((await cove(home, ["get", "base", "--format", "json"])).code, 0);
      const comp = await cove(home, ["complete", "start", ""]);
      assertEquals(comp.code, 0, comp.stderr);
      assertEquals(await snapshot(home), before, "nothing on disk changed");

      // Start and delete refuse a VM that is being pushed, at once and with one line.
      const start = await cove(home, ["start", "pushing"]);
      assertEquals(start.code, 4, start.stderr);
      assert(/busy: a push is in progress/.test(start.stderr), start.stderr);
      const del = await cove(home, ["delete", "pushing", "--force"]);
      assertEquals(del.code, 4, del.stderr);
      assert(/busy: a push is in progress/.test(del.stderr), del.stderr);
    } finally {
      for (const c of [runner, pusher]) {
        c.kill("SIGKILL");
        await c.status;
        await c.stdout.cancel().catch(() => {});
      }
    }
    assert((await Deno.stat(eph.bundle.dir)).isDirectory, "still there before a write");
    const create = await cove(home, ["create", "other"]);
    assertEquals(create.code, 0, create.stderr);
    assertEquals(
      await Deno.stat(eph.bundle.dir).catch(() => null),
      null,
      "create reaped the clone",
    );
    assertEquals(
      await Deno.stat(join(store.tmpDir, "create-half-0000")).catch(() => null),
      null,
      "create swept the staging directory",
    );
    assertEquals(edited.freshSummary()?.cpus, 1, "create rewrote the stale summary");
    assert(corrupt.freshSummary(), "create rewrote the corrupt summary");
  }));
