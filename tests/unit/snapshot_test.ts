/**
 * Snapshots of stopped VMs, without a hypervisor: tags, the records and
 * listing, the spec comparison of memory restores, copy-on-write copies that
 * restore the disk bytes, refusals of non-raw disks, and kill -9 in the
 * middle of a save or a restore (old state or complete snapshot, never half
 * a one; disks never half replaced).
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { Store } from "../../core/store/store.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { CoveError } from "../../core/errors.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { detectHost } from "../../core/host.ts";
import {
  defaultTag,
  listSnapshots,
  recoverBundle,
  restoreStopped,
  saveStopped,
  snapshotDisks,
  specDifferences,
  validateTag,
} from "../../core/snapshot/snapshot.ts";

async function rejects(fn: () => Promise<unknown> | unknown): Promise<CoveError> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof CoveError) return e;
    throw e;
  }
  throw new Error("expected a CoveError");
}

async function makeVm(home: string, name = "vm") {
  const store = new Store(home);
  const b = await store.create(name, {
    spec: parseSpec("engine: qemu\ndisks: [{ path: disk.img, size: 4MiB }]\n"),
  });
  return { store, b, disk: join(b.dir, "disk.img") };
}

async function writeAt(path: string, offset: number, text: string): Promise<void> {
  const f = await Deno.open(path, { write: true });
  try {
    await f.seek(offset, Deno.SeekMode.Start);
    await f.write(new TextEncoder().encode(text));
  } finally {
    f.close();
  }
}

async function readAt(path: string, offset: number, len: number): Promise<string> {
  const f = await Deno.open(path, { read: true });
  try {
    await f.seek(offset, Deno.SeekMode.Start);
    const buf = new Uint8Array(len);
    const n = (await f.read(buf)) ?? 0;
    return new TextDecoder().decode(buf.subarray(0, n)).replace(/\0/g, "");
  } finally {
    f.close();
  }
}

async function spawnAt(home: string, args: string[], phase: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      new URL("./fixtures/snapshot_worker.ts", import.meta.url).pathname,
      ...args,
      phase,
    ],
    env: { COVE_HOME: home },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes(`at ${phase}`)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the worker exited before ${phase}: ${seen}`);
    seen += value;
  }
  reader.releaseLock();
  child.kill("SIGKILL");
  await child.status;
  await child.stdout.cancel().catch(() => {});
}

Deno.test("snapshot tags: a tag with '/' or '..' is refused with exit 2; the default is the UTC time", async () => {
  for (const bad of ["a/b", "..", "a..b", "", ".hidden", "x".repeat(65)]) {
    const e = await rejects(() => validateTag(bad));
    assertEquals(e.exit, 2);
    assertEquals(e.code, "snapshot.bad_tag");
  }
  validateTag("before-upgrade_1.2");
  assertEquals(defaultTag(new Date("2026-12-01T21:30:02.123Z")), "20261201-213002");
  validateTag(defaultTag());
});

Deno.test("snapshot spec check: memory restores name the machine fields that differ", () => {
  const host = detectHost();
  const a = applyDefaults(parseSpec("cpus: 2\nmemory: 1GiB\n"), host, "vm");
  const b = applyDefaults(parseSpec("cpus: 4\nmemory: 1024MiB\nvsock: false\n"), host, "vm");
  assertEquals(specDifferences(a, b), ["cpus", "vsock"]);
  assertEquals(specDifferences(a, a), []);
});

Deno.test("snapshot of a stopped VM: restore brings back the disk bytes, and the snapshot stays intact", () =>
  withTempDir(async (home) => {
    const { b, disk } = await makeVm(home);
    const spec = await b.readSpec();
    await writeAt(disk, 0, "BEFORE");
    const r = await saveStopped(b, spec, "qemu", { tag: "one" });
    assertEquals(r.memory, false);
    await writeAt(disk, 4096, "AFTER");
    await restoreStopped(b, "one", spec, "qemu");
    assertEquals(await readAt(disk, 0, 6), "BEFORE");
    assertEquals(await readAt(disk, 4096, 5), "");
    await writeAt(disk, 4096, "AGAIN");
    await restoreStopped(b, "one", spec, "qemu");
    assertEquals(await readAt(disk, 4096, 5), "", "a second restore from the same snapshot");
    const list = await listSnapshots(b);
    assertEquals(list.map((s) => [s.tag, s.memory]), [["one", false]]);
    assert(list[0].allocated > 0);
    const st = await Deno.stat(b.snapshotDir("one"));
    assertEquals(st.mode! & 0o777, 0o700);
    assertEquals((await Deno.stat(join(b.snapshotDir("one"), "disk0.img"))).mode! & 0o777, 0o600);
    const e = await rejects(() => saveStopped(b, spec, "qemu", { tag: "one" }));
    assertEquals([e.code, e.exit], ["snapshot.exists", 2]);
    const m = await rejects(() => restoreStopped(b, "two", spec, "qemu"));
    assertEquals([m.code, m.exit], ["snapshot.not_found", 3]);
  }));

Deno.test("snapshot CLI: a qcow2 disk is refused with one line; ls, rm and missing tags through cove", () =>
  withTempDir(async (home) => {
    const img = join(home, "x.qcow2");
    await Deno.writeFile(img, new Uint8Array(1024));
    const cfg = join(home, "q.yaml");
    await Deno.writeTextFile(cfg, `engine: qemu\ndisks: [{ path: ${img}, format: qcow2 }]\n`);
    assertEquals((await cove(home, ["create", "q", "--config", cfg])).code, 0);
    const r = await cove(home, ["snapshot", "save", "q", "t"]);
    assertEquals(r.code, 2);
    assertEquals(r.stderr.trim().split("\n").length, 1);
    assertMatch(r.stderr, /disks\[0\] \('.*x\.qcow2'\) is qcow2, not raw/);

    assertEquals(
      (await cove(home, ["create", "r", "--disk-size", "1MiB", "--engine", "qemu"])).code,
      0,
    );
    assertEquals((await cove(home, ["snapshot", "save", "r", "a"])).code, 0);
    assertEquals((await cove(home, ["snapshot", "save", "r", "b"])).code, 0);
    const ls = JSON.parse((await cove(home, ["snapshot", "ls", "r", "--format", "json"])).stdout);
    assertEquals(ls.map((s: { tag: string }) => s.tag), ["a", "b"]);
    const rm = await cove(home, ["snapshot", "rm", "r", "a", "zzz"]);
    assertEquals(rm.code, 3);
    assertMatch(rm.stderr, /has no snapshot 'zzz'/);
    assertEquals((await cove(home, ["snapshot", "rm", "r", "a", "b"])).code, 0);
    assertEquals(
      JSON.parse((await cove(home, ["snapshot", "ls", "r", "--format", "json"])).stdout),
      [],
    );
    const bad = await cove(home, ["snapshot", "restore", "r", "../etc"]);
    assertEquals(bad.code, 2);
    // clone leaves snapshots out
    assertEquals((await cove(home, ["snapshot", "save", "r", "c"])).code, 0);
    assertEquals((await cove(home, ["clone", "r", "r2"])).code, 0);
    assertEquals(
      JSON.parse((await cove(home, ["snapshot", "ls", "r2", "--format", "json"])).stdout),
      [],
    );
  }));

Deno.test("snapshot save killed with SIGKILL mid-copy or before publishing lists nothing; the next save sweeps it", () =>
  withTempDir(async (home) => {
    const { b } = await makeVm(home);
    for (const phase of ["disk-copy", "before-publish"]) {
      await spawnAt(home, ["save", "vm", "k"], phase);
      assertEquals(await listSnapshots(b), []);
    }
    const lock = (await b.tryLock())!;
    try {
      await recoverBundle(b);
    } finally {
      lock.release();
    }
    assertEquals((await Array.fromAsync(Deno.readDir(b.snapshotsDir))).map((e) => e.name), []);
  }));

Deno.test("snapshot restore killed with SIGKILL at any phase leaves the old disk or the new one, and recovery finishes it", () =>
  withTempDir(async (home) => {
    const { b, disk } = await makeVm(home);
    const spec = await b.readSpec();
    await writeAt(disk, 0, "SNAP");
    await saveStopped(b, spec, "qemu", { tag: "s" });
    for (
      const [phase, expect] of [["disk-copy", "LIVE"], ["before-swap", "LIVE"], ["swap", "SNAP"]]
    ) {
      await writeAt(disk, 0, "LIVE");
      await spawnAt(home, ["restore", "vm", "s"], phase);
      // Whole disks only: the killed restore left the old one in place.
      assertEquals(await readAt(disk, 0, 4), "LIVE", phase);
      const lock = (await b.tryLock())!;
      try {
        await recoverBundle(b);
      } finally {
        lock.release();
      }
      assertEquals(await readAt(disk, 0, 4), expect, `after recovery from a kill at ${phase}`);
      const names = (await Array.fromAsync(Deno.readDir(b.dir))).map((e) => e.name);
      assert(
        !names.some((n) => n.startsWith(".restore-") || n === "restore-journal.json"),
        names.join(),
      );
    }
  }));

Deno.test("snapshot free-space check reads the same free bytes as df", async () => {
  const { freeBytes } = await import("../../core/snapshot/snapshot.ts");
  const dir = await Deno.makeTempDir();
  try {
    const ours = await freeBytes(dir);
    const out = await new Deno.Command("df", { args: ["-Pk", dir], stdout: "piped" }).output();
    const kib = Number(
      new TextDecoder().decode(out.stdout).trim().split("\n").pop()!.split(/\s+/)[3],
    );
    assert(ours !== undefined);
    // Other processes write meanwhile: agree within 64 MiB.
    assert(Math.abs(ours - kib * 1024) < 64 * 2 ** 20, `${ours} vs df ${kib * 1024}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a memory snapshot the engine cannot save is refused before the guest is paused", () =>
  withTempDir(async (home) => {
    const { saveRunning } = await import("../../core/snapshot/snapshot.ts");
    const { b } = await makeVm(home);
    const spec = await b.readSpec();
    const calls: string[] = [];
    // A MOCK running VM (the refusal comes before any engine call but this one).
    const vm = {
      state: () => "running" as const,
      pause: () => (calls.push("pause"), Promise.resolve()),
      resume: () => (calls.push("resume"), Promise.resolve()),
      saveState: () => (calls.push("save"), Promise.resolve()),
      saveStateSupport: () => ({
        available: false,
        reason: "Saving is not supported with USB input.",
      }),
    };
    const e = await rejects(() => saveRunning(b, spec, "vz", vm, { tag: "m" }));
    assertEquals(e.code, "snapshot.no_memory");
    assertMatch(
      e.message,
      /cannot save the memory of 'vm': Saving is not supported with USB input\./,
    );
    assertEquals(calls, []);
    const r = await saveRunning(b, spec, "vz", vm, { tag: "d", diskOnly: true });
    assertEquals(r.memory, false);
    assertEquals(calls, ["pause", "resume"]);
  }));

Deno.test("a running VM's qcow2 disk refuses a clone or push as a copy, saying a stopped VM clones", async () => {
  const b = new Store("/nonexistent").bundle("q");
  const spec = applyDefaults(
    parseSpec("engine: qemu\ndisks: [{ path: x.qcow2, format: qcow2 }]\n"),
    detectHost(),
    "q",
  );
  const snap = await rejects(() => snapshotDisks(b, spec));
  assertMatch(snap.message, /^cannot snapshot 'q': disks\[0\] \('x\.qcow2'\) is qcow2, not raw$/);
  const copy = await rejects(() => snapshotDisks(b, spec, true));
  assertEquals([copy.code, copy.exit], ["snapshot.disk_format", 2]);
  assertMatch(copy.message, /^cannot copy the disks of 'q' while it runs: disks\[0\]/);
  assertMatch(
    copy.hint ?? "",
    /stop 'q' to clone it \(a stopped VM is cloned whatever its disks; a push needs raw/,
  );
});

Deno.test("snapshots take the firmware's variables with the disks: a running VM's while it is paused, and a restore puts them back", () =>
  withTempDir(async (home) => {
    const { saveRunning } = await import("../../core/snapshot/snapshot.ts");
    const store = new Store(home);
    const b = await store.create("efi", {
      spec: parseSpec(
        "engine: qemu\nboot: { loader: efi }\ndisks: [{ path: disk.img, size: 1MiB }]\n",
      ),
    });
    const spec = await b.readSpec();
    const vars = join(b.dir, "efi-vars.fd");
    assertEquals(b.firmwareFiles(spec), ["efi-vars.fd"]);
    await Deno.writeTextFile(vars, "BootOrder=disk");
    // A MOCK running VM whose firmware writes its variables once the pause is over.
    let paused = false;
    const vm = {
      state: () => (paused ? "paused" as const : "running" as const),
      pause: () => {
        paused = true;
        return Promise.resolve();
      },
      resume: async () => {
        paused = false;
        await Deno.writeTextFile(vars, "BootOrder=net (after the snapshot)");
      },
      saveState: () => Promise.resolve(),
    };
    const r = await saveRunning(b, spec, "qemu", vm, { tag: "live", diskOnly: true });
    assertEquals(r.memory, false);
    const meta = JSON.parse(await Deno.readTextFile(b.snapshotMetaPath("live")));
    assertEquals(meta.firmware.map((f: { path: string }) => f.path), ["efi-vars.fd"]);
    await restoreStopped(b, "live", spec, "qemu");
    assertEquals(await Deno.readTextFile(vars), "BootOrder=disk");
    // A stopped VM's too; a snapshot from before firmware was recorded restores the disks alone.
    await saveStopped(b, spec, "qemu", { tag: "off" });
    await Deno.writeTextFile(vars, "changed");
    await restoreStopped(b, "off", spec, "qemu");
    assertEquals(await Deno.readTextFile(vars), "BootOrder=disk");
    delete meta.firmware;
    await Deno.writeTextFile(b.snapshotMetaPath("live"), JSON.stringify(meta));
    await Deno.writeTextFile(vars, "kept");
    await restoreStopped(b, "live", spec, "qemu");
    assertEquals(await Deno.readTextFile(vars), "kept");
    // A kernel boot has no firmware files.
    assertEquals(b.firmwareFiles({ ...spec, boot: { ...spec.boot, loader: "kernel" } }), []);
  }));
