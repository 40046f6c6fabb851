/** The store: atomic create, locks, copy-on-write clone, names and permissions. */
import { join } from "node:path";
import { assert, assertCoveError, assertEquals, assertMatch } from "../helpers/assert.ts";
import { allocatedBytes, withTempDir } from "../helpers/cli.ts";
import { compareNames, Store, validateName } from "../../core/store/store.ts";
import { Bundle } from "../../core/store/bundle.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { CoveError } from "../../core/errors.ts";
import { cloneFile, ensureSparseFile } from "../../core/store/fsutil.ts";
import { linuxTest } from "../helpers/guard.ts";

const MiB = 2 ** 20;
const GiB = 2 ** 30;

async function spawnReady(
  script: string,
  args: string[],
  env: Record<string, string>,
  ready: string,
) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", new URL(script, import.meta.url).pathname, ...args],
    env,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes(ready)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${script} exited before saying '${ready}': ${seen}`);
    seen += value;
  }
  reader.releaseLock();
  return child;
}

Deno.test("store: a process killed with SIGKILL mid-create leaves nothing listed, and the name stays free", () =>
  withTempDir(async (home) => {
    const child = await spawnReady(
      "./fixtures/slow_create.ts",
      ["half"],
      { COVE_HOME: home },
      "populating",
    );
    child.kill("SIGKILL");
    await child.status;
    await child.stdout.cancel().catch(() => {});
    const store = new Store(home);
    assertEquals(await store.list(), []);
    const leftovers = await Array.fromAsync(Deno.readDir(store.tmpDir));
    assertEquals(leftovers.length, 1, "the killed create's staging dir is under tmp/");
    await store.create("half", { spec: parseSpec("") });
    assertEquals((await store.list()).map((v) => v.name), ["half"]);
    assertEquals(
      await Array.fromAsync(Deno.readDir(store.tmpDir)),
      [],
      "the stale staging dir was swept",
    );
  }));

Deno.test("store: bundles and their files are private (0700/0600) and disks are sparse", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    const b = await store.create("p", {
      spec: parseSpec("disks: [{ path: disk.img, size: 64GiB }]\n"),
    });
    assertEquals((await Deno.stat(b.dir)).mode! & 0o777, 0o700);
    for (const f of ["cove.yaml", "disk.img", "machine.json"]) {
      assertEquals((await Deno.stat(join(b.dir, f))).mode! & 0o777, 0o600, f);
    }
    assertEquals((await Deno.stat(join(b.dir, "disk.img"))).size, 64 * GiB);
    assert((await allocatedBytes(join(b.dir, "disk.img"))) < MiB);
  }));

Deno.test("store: a lock held by another process blocks delete, rename and disk changes", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    const b = await store.create("busy", { spec: parseSpec("") });
    const holder = await spawnReady("./fixtures/hold_lock.ts", [b.lockPath], {}, "locked");
    try {
      assert(await b.isRunning());
      const del = await assertCoveError(() => store.delete("busy"));
      assertEquals(
        del.line(),
        "cannot delete 'busy': it is running (stop it first with 'cove stop busy')",
      );
      assertEquals(del.exit, 4);
      const ren = await assertCoveError(() => store.rename("busy", "other"));
      assertEquals(ren.code, "vm.running");
      const grow = await assertCoveError(() => store.resizeRootDisk("busy", 32 * GiB));
      assertEquals(grow.message, "cannot change the disk of 'busy': it is running");
      assertEquals((await store.list()).map((v) => [v.name, v.state]), [["busy", "running"]]);
    } finally {
      holder.kill("SIGKILL");
      await holder.status;
      await holder.stdout.cancel().catch(() => {});
    }
    assertEquals(await b.isRunning(), false, "a dead holder releases the lock");
    await store.delete("busy");
    assertEquals(await store.list(), []);
  }));

Deno.test("store: cloning a 64GiB disk holding 100MiB writes about 100MiB and keeps the data", () =>
  withTempDir(async (dir) => {
    const src = join(dir, "src.img");
    await ensureSparseFile(src, 64 * GiB);
    const f = await Deno.open(src, { write: true });
    const chunk = new Uint8Array(MiB);
    for (let i = 0; i < MiB; i += 65536) crypto.getRandomValues(chunk.subarray(i, i + 65536));
    for (let i = 0; i < 100; i++) {
      await f.seek(i * 600 * MiB + 12345, Deno.SeekMode.Start); // scattered, unaligned
      await f.write(chunk);
    }
    f.close();
    const dst = join(dir, "dst.img");
    const method = await cloneFile(src, dst);
    assert(method === "reflink" || method === "sparse", method);
    assertEquals((await Deno.stat(dst)).size, 64 * GiB);
    const alloc = await allocatedBytes(dst);
    assert(alloc <= 110 * MiB, `clone allocated ${alloc / MiB} MiB`);
    const r = await Deno.open(dst, { read: true });
    const back = new Uint8Array(MiB);
    await r.seek(99 * 600 * MiB + 12345, Deno.SeekMode.Start);
    let off = 0;
    while (off < MiB) off += (await r.read(back.subarray(off)))!;
    r.close();
    assertEquals(back, chunk);
  }));

Deno.test("store: a clone gets a new MAC address and a new machine identity", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    const a = await store.create("a", {
      spec: parseSpec("disks: [{ path: disk.img, size: 1GiB }]\n"),
    });
    await Deno.writeTextFile(a.consoleLog, "old console\n");
    const { bundle: b } = await store.clone("a", "b");
    const [sa, sb] = [await a.readSpec(), await b.readSpec()];
    assert(sa.networks[0].mac && sb.networks[0].mac);
    assert(sa.networks[0].mac !== sb.networks[0].mac);
    assert((await a.readMachine()).uuid !== (await b.readMachine()).uuid);
    assertEquals(sb.provision.hostname, "b");
    assertEquals(
      await Deno.stat(b.consoleLog).catch(() => null),
      null,
      "instance files are not cloned",
    );
    assertEquals((await Deno.stat(join(b.dir, "disk.img"))).size, GiB);
  }));

Deno.test("store: names with a slash or '..', and duplicate names, are refused", () =>
  withTempDir(async (home) => {
    for (const bad of ["a/b", "..", "a..b", ".hidden", "", "x".repeat(65), "-rf"]) {
      let e: unknown;
      try {
        validateName(bad);
      } catch (err) {
        e = err;
      }
      assert(e instanceof CoveError && e.exit === 2, `'${bad}' must be refused`);
    }
    const store = new Store(home);
    await store.create("dup", { spec: parseSpec("") });
    const e = await assertCoveError(() => store.create("dup", { spec: parseSpec("") }));
    assertEquals(
      e.line(),
      "a VM named 'dup' already exists (choose another name, or delete the existing VM first)",
    );
  }));

Deno.test("store: disks only grow", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    await store.create("g", { spec: parseSpec("disks: [{ path: disk.img, size: 2GiB }]\n") });
    await store.resizeRootDisk("g", 3 * GiB);
    const b = await store.get("g");
    assertEquals((await Deno.stat(join(b.dir, "disk.img"))).size, 3 * GiB);
    assertEquals((await b.readSpec()).disks[0].size, "3GiB");
    const e = await assertCoveError(() => store.resizeRootDisk("g", GiB));
    assertMatch(e.message, /1GiB is smaller than the image \(3GiB\); disks only grow/);
  }));

linuxTest(
  "uses /proc, which no one can write to, as COVE_HOME",
  "store: an unwritable COVE_HOME gets one clear line",
  async () => {
    const e = await assertCoveError(() => new Store("/proc/cove-home").ensure());
    assertEquals(e.code, "home.unwritable");
    assertMatch(e.line(), /^COVE_HOME '\/proc\/cove-home' is not writable/);
  },
);

Deno.test("store: an ephemeral clone comes back locked; once its supervisor is gone list hides it and the next command that writes deletes it", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    await store.create("base", { spec: parseSpec("disks: [{ path: disk.img, size: 1GiB }]\n") });
    const { bundle, lock } = await store.clone("base", "base-eph-1", { ephemeral: true });
    assert(lock, "the clone is returned with its lock held");
    assertEquals((await store.list()).map((v) => [v.name, v.state]), [["base", "stopped"], [
      "base-eph-1",
      "running",
    ]]);
    lock.release(); // the supervisor died (kill -9 releases the lock the same way)
    assertEquals((await store.list()).map((v) => v.name), ["base"]);
    assert((await Deno.stat(bundle.dir)).isDirectory, "list only reads: the clone is still there");
    await store.create("other", { spec: parseSpec("") });
    assertEquals(await Deno.stat(bundle.dir).catch(() => null), null, "create reaped it");
  }));

Deno.test("store: probes take no lock: while another process holds it, holder() names its pid and purpose, and a push is never refused because someone looks", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    const b = await store.create("probed", { spec: parseSpec("") });
    const holder = await spawnReady("./fixtures/hold_lock.ts", [b.lockPath, "push"], {}, "locked");
    try {
      for (let i = 0; i < 20; i++) {
        assertEquals(await b.holder(), { pid: holder.pid, purpose: "push" });
        assertEquals(await b.state(), { state: "busy", pid: holder.pid, purpose: "push" });
      }
      assertEquals(await b.tryLock(), null, "a single try fails while the lock is held");
      const del = await assertCoveError(() => store.delete("probed"));
      assertEquals(
        del.line(),
        `cannot delete 'probed': busy: a push is in progress (wait for pid ${holder.pid} to finish, then retry)`,
      );
      assertEquals(del.exit, 4);
      assertEquals((await store.list()).map((v) => [v.name, v.state, v.busy]), [[
        "probed",
        "busy",
        "push",
      ]]);
    } finally {
      holder.kill("SIGKILL");
      await holder.status;
      await holder.stdout.cancel().catch(() => {});
    }
    assertEquals(await b.holder(), null, "a dead holder releases the lock");
    // Many probes at once, and a real lock taken among them: the lock never fails.
    const probes = Array.from({ length: 50 }, () => b.holder());
    const lock = await b.tryLock({ purpose: "push" });
    assert(lock, "probes never hold the lock, so a push takes it at once");
    await Promise.all(probes);
    lock.release();
    await store.delete("probed");
    assertEquals(await store.list(), []);
  }));

Deno.test("store: a running VM is cloned and copied from its supervisor's copy of its disks (a test double here), never from the live disk; without a copier it is refused", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    const b = await store.create("live", {
      spec: parseSpec("disks: [{ path: disk.img, size: 1MiB }]\n"),
    });
    await Deno.writeTextFile(join(b.dir, "disk.img"), "live bytes, mid-write");
    const holder = await spawnReady("./fixtures/hold_lock.ts", [b.lockPath, "run"], {}, "locked");
    // Stands in for copyRunningDisks (core/supervisor/client.ts), which asks the real supervisor.
    let released = 0;
    let diskPath = "disk.img";
    const copier = async () => {
      const dir = await Deno.makeTempDir({ dir: home });
      await Deno.writeTextFile(join(dir, "disk-0"), "the frozen copy");
      return {
        dir,
        frozen: true,
        disks: [{ index: 0, path: diskPath, file: "disk-0", method: "copy" as const }],
        release: async () => {
          released++;
          await Deno.remove(dir, { recursive: true }).catch(() => {});
        },
      };
    };
    try {
      const refused = await assertCoveError(() => store.clone("live", "nope"));
      assertEquals(
        refused.line(),
        "cannot clone 'live': it is running (stop it first with 'cove stop live')",
      );
      const r = await store.clone("live", "twin", { copyRunning: copier });
      assertEquals(r.frozen, true);
      assertEquals(await Deno.readTextFile(join(r.bundle.dir, "disk.img")), "the frozen copy");
      assert(released >= 1, "the copy was released");
      const seen = await store.withCopy(b, copier, async (copy, frozen) => {
        assert(frozen);
        assertEquals(
          (await copy.readMachine()).uuid,
          (await b.readMachine()).uuid,
          "same identity",
        );
        return await Deno.readTextFile(join(copy.dir, "disk.img"));
      });
      assertEquals(seen, "the frozen copy");
      assertEquals(await Deno.readTextFile(join(b.dir, "disk.img")), "live bytes, mid-write");
      assertEquals(
        (await Array.fromAsync(Deno.readDir(join(home, "tmp")))).map((e) => e.name),
        [],
        "the copy made for withCopy is gone",
      );
      // The same disk named by its absolute path, and a disk outside the bundle: never the live one.
      for (const where of [join(b.dir, "disk.img"), join(home, "outside.img")]) {
        if (where !== join(b.dir, "disk.img")) {
          await Deno.writeTextFile(where, "live outside bytes");
        }
        diskPath = where;
        const twin = `twin-${where === join(home, "outside.img") ? "out" : "abs"}`;
        const c = await store.clone("live", twin, { copyRunning: copier });
        const spec = await c.bundle.readSpec();
        const disk = c.bundle.resolve(spec.disks[0].path);
        assertEquals(await Deno.readTextFile(disk), "the frozen copy", where);
        assert(disk.startsWith(c.bundle.dir), "the clone owns its copy");
        const pushed = await store.withCopy(b, copier, async (copy) => {
          const s2 = await copy.readSpec();
          return await Deno.readTextFile(copy.resolve(s2.disks[0].path));
        });
        assertEquals(pushed, "the frozen copy", where);
      }
    } finally {
      holder.kill("SIGKILL");
      await holder.status;
      await holder.stdout.cancel().catch(() => {});
    }
  }));

Deno.test("store: a running VM's clone takes its firmware's variables from the supervisor's copy (a test double here), not from the live file", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    const b = await store.create("fw", {
      spec: parseSpec("boot: { loader: efi }\ndisks: [{ path: disk.img, size: 1MiB }]\n"),
    });
    await Deno.writeTextFile(join(b.dir, "efi-vars.fd"), "live variables");
    const holder = await spawnReady("./fixtures/hold_lock.ts", [b.lockPath, "run"], {}, "locked");
    const copier = async () => {
      const dir = await Deno.makeTempDir({ dir: home });
      await Deno.writeTextFile(join(dir, "disk-0"), "disk copy");
      await Deno.writeTextFile(join(dir, "fw-0"), "variables at the copy");
      return {
        dir,
        frozen: false,
        disks: [{ index: 0, path: "disk.img", file: "disk-0", method: "copy" as const }],
        firmware: [{ path: "efi-vars.fd", file: "fw-0", method: "copy" as const }],
        release: () => Deno.remove(dir, { recursive: true }).catch(() => {}),
      };
    };
    try {
      const c = await store.clone("fw", "fw2", { copyRunning: copier });
      assertEquals(
        await Deno.readTextFile(join(c.bundle.dir, "efi-vars.fd")),
        "variables at the copy",
      );
      assertEquals(await Deno.readTextFile(join(b.dir, "efi-vars.fd")), "live variables");
    } finally {
      holder.kill("SIGKILL");
      await holder.status;
      await holder.stdout.cancel().catch(() => {});
    }
  }));

Deno.test("store: a released lock names nobody, so a probe never reads the next holder as the last one (a finished create is not 'in progress')", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    const b = await store.create("relocked", { spec: parseSpec("") });
    const created = (await b.tryLock({ purpose: "create" }))!;
    assertEquals(await b.holder(), { pid: Deno.pid, purpose: "create" });
    created.release();
    assertEquals(await Deno.readTextFile(b.lockPath), "", "the create's name went with its lock");
    // Another process locks it: probes at any instant see it, never the create before it.
    const holder = spawnReady("./fixtures/hold_lock.ts", [b.lockPath, "run"], {}, "locked");
    const seen = new Set<string>();
    const probing = (async () => {
      for (let i = 0; i < 200; i++) {
        const h = await b.holder();
        if (h) seen.add(h.purpose);
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
    const p = await holder;
    try {
      await probing;
      assertEquals([...seen], ["run"]);
      assertEquals(await b.holder(), { pid: p.pid, purpose: "run" });
    } finally {
      p.kill("SIGKILL");
      await p.status;
      await p.stdout.cancel().catch(() => {});
    }
  }));

Deno.test("store: a lock this process holds is seen by its own probes and not taken twice", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    const b = await store.create("self", { spec: parseSpec("") });
    const lock = (await b.tryLock())!;
    assertEquals(await b.holder(), { pid: Deno.pid, purpose: "run" });
    assertEquals(await b.tryLock(), null);
    assertEquals(await b.holder(), { pid: Deno.pid, purpose: "run" }, "probing kept the lock");
    lock.release();
    assertEquals(await b.holder(), null);
    assertEquals((await b.state()).state, "stopped");
    await Deno.writeFile(b.savedStatePath, new Uint8Array(1));
    assertEquals((await b.state()).state, "suspended");
  }));

Deno.test("store: a VM whose lock cannot be opened is listed as broken, the others still list", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    await store.create("good", { spec: parseSpec("") });
    const bad = await store.create("bad", { spec: parseSpec("") });
    await Deno.remove(bad.lockPath).catch(() => {});
    await Deno.mkdir(bad.lockPath); // opening it for writing fails
    const list = await store.list();
    assertEquals(list.map((v) => [v.name, v.state]), [["bad", "broken"], ["good", "stopped"]]);
    assertMatch(list[0].error ?? "", /cannot check whether it runs/);
  }));

Deno.test("store: resizing a root disk that is not raw is refused with one line", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    await store.create("q", {
      spec: parseSpec("disks: [{ path: disk.qcow2, format: qcow2, size: 2GiB }]\n"),
    });
    const e = await assertCoveError(() => store.resizeRootDisk("q", 3 * GiB));
    assertEquals(e.code, "disk.format");
    assertMatch(e.message, /root disk is qcow2, not raw/);
  }));

Deno.test("store: VM names sort as localeCompare sorts them under English, without the collator", () => {
  const chars = "aAbBmMzZ0159._-";
  const collator = new Intl.Collator("en");
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const word = () => Array.from({ length: 1 + rand(5) }, () => chars[rand(chars.length)]).join("");
  for (let i = 0; i < 20_000; i++) {
    const a = word(), b = word();
    assertEquals(Math.sign(compareNames(a, b)), Math.sign(collator.compare(a, b)), `${a} ${b}`);
  }
  assertEquals(["b", "B", "a-1", "a_1", "a.1", "A1", "a1", "10", "9"].sort(compareNames), [
    "10",
    "9",
    "a_1",
    "a-1",
    "a.1",
    "a1",
    "A1",
    "b",
    "B",
  ]);
});

Deno.test("bundle: has() says whether a file exists, following a symlink as stat does, and never throws", () =>
  withTempDir(async (dir) => {
    const b = new Bundle("x", dir);
    assertEquals(b.has("savedState"), false);
    await Deno.writeTextFile(b.savedStatePath, "");
    assertEquals(b.has("savedState"), true);
    await Deno.symlink(join(dir, "nowhere"), b.ephemeralMark);
    assertEquals(b.has("ephemeral"), false, "a dangling symlink: stat fails too");
    assertEquals(new Bundle("y", join(dir, "no", "such")).has("spec"), false);
  }));
