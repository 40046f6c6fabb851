/**
 * Snapshots and suspend on real boots of the tiny guest under TCG, through
 * the CLI: the guest's once-a-second console counter (`cove.counter=1`)
 * continues from the saved value after a memory restore and after
 * suspend/start; a disk snapshot brings back the disk bytes it saw; a kill
 * -9 of `cove snapshot save` (or of the supervisor) at several points of a
 * save leaves no half snapshot and a VM that runs; a full disk during a save
 * leaves no snapshot and the VM running; each refusal is one line.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, ROOT } from "../helpers/cli.ts";
import {
  cleanupHome,
  consoleLog,
  COUNTER_MARKER,
  createGuestVm,
  getJson,
  run,
  supervisorPids,
  TEST_ENV,
  typeUntil,
  waitFor,
} from "./qemu_helpers.ts";
import { linuxTest } from "../helpers/guard.ts";

/** Every counter value on the console, in order. */
function counts(log: string): number[] {
  const re = new RegExp(`${COUNTER_MARKER} (\\d+)`, "g");
  return [...log.matchAll(re)].map((m) => Number(m[1]));
}

async function lastCount(home: string, name: string): Promise<number> {
  const c = counts(await consoleLog(home, name));
  return c.length ? c[c.length - 1] : -1;
}

/** Waits until the counter has reached at least `n`. */
async function waitCount(home: string, name: string, n: number, timeoutMs = 120_000) {
  await waitFor(
    `${name}'s counter to reach ${n}`,
    async () => (await lastCount(home, name)) >= n,
    timeoutMs,
  );
}

/**
 * Runs a shell command in the guest and waits for the marker it prints when done, typing it
 * again if the guest's shell was not reading yet (the command must be safe to run twice).
 */
async function guestRun(home: string, name: string, cmd: string, marker: string): Promise<void> {
  // The marker is printed with $((...)), so the echoed command line does not contain it.
  const [pre, n] = marker.split("#");
  await typeUntil(home, name, `\n${cmd}; echo ${pre}$((${n}+0))`, `${pre}${n}`);
}

async function ok(home: string, args: string[], env: Record<string, string> = {}) {
  const r = await run(home, args, { env, timeoutMs: 180_000 });
  if (r.code !== 0) throw new Error(`cove ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
  return r;
}

/** Asserts a refusal: exit code, one line on stderr, matching `re`. */
async function refused(home: string, args: string[], code: number, re: RegExp) {
  const r = await run(home, args, { timeoutMs: 120_000 });
  assertEquals(r.code, code, `cove ${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assertEquals(lines.length, 1, `one line expected: ${r.stderr}`);
  assertMatch(lines[0], re);
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

async function snapshotTags(home: string, name: string): Promise<string[]> {
  const r = await ok(home, ["snapshot", "ls", name, "--format", "json"]);
  return (JSON.parse(r.stdout) as { tag: string }[]).map((s) => s.tag);
}

async function scratchLeft(home: string, name: string): Promise<string[]> {
  try {
    return (await Array.fromAsync(Deno.readDir(join(home, "vms", name, "snapshots"))))
      .map((e) => e.name).filter((n) => n.startsWith("."));
  } catch {
    return [];
  }
}

linuxTest({
  name:
    "snapshots: memory restore continues the counter, disk restore brings back the disk bytes, suspend/start resumes, refusals are one line",
  needs: "reads /proc and boots QEMU guests",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const home = await Deno.makeTempDir({ prefix: "cove-snap-" });
    const name = "snap";
    try {
      await createGuestVm(home, name, { cmdline: "cove.counter=1", disk: "16MiB" });
      const disk = join(home, "vms", name, "disk.img");

      await t.step("a stopped VM's snapshot holds its disks only", async () => {
        const r = JSON.parse(
          (await ok(home, ["snapshot", "save", name, "cold", "--format", "json"])).stdout,
        );
        assertEquals(r.memory, false);
        assertEquals(r.pausedMs, 0);
      });

      await ok(home, ["start", name]);
      await waitCount(home, name, 2);

      await t.step(
        "a disk-only snapshot of a running VM: later writes are gone after its restore",
        async () => {
          await guestRun(
            home,
            name,
            "echo DISK-BEFORE | dd of=/dev/vda bs=512 seek=0 conv=notrunc,fsync",
            "WROTE-#1",
          );
          const r = JSON.parse(
            (await ok(home, ["snapshot", "save", name, "disk1", "--disk-only", "--format", "json"]))
              .stdout,
          );
          assertEquals(r.memory, false);
          await guestRun(
            home,
            name,
            "echo DISK-AFTER | dd of=/dev/vda bs=512 seek=8 conv=notrunc,fsync",
            "WROTE-#2",
          );
        },
      );

      let a = 0;
      let b = 0;
      await t.step("a memory snapshot pauses the guest only and lists with memory", async () => {
        a = await lastCount(home, name);
        const out = await ok(home, ["snapshot", "save", name, "mem1"]);
        b = await lastCount(home, name);
        assertMatch(
          out.stdout,
          /saved snapshot mem1 of snap \(memory and disks, .*\); paused \d+ ms/,
        );
        const ls = JSON.parse(
          (await ok(home, ["snapshot", "ls", name, "--format", "json"])).stdout,
        ) as {
          tag: string;
          memory: boolean;
          allocated: number;
        }[];
        const m = ls.find((s) => s.tag === "mem1");
        assert(m && m.memory && m.allocated > 0, JSON.stringify(ls));
        const text = (await ok(home, ["snapshot", "ls", name])).stdout;
        assertMatch(text, /mem1\s+\S+\s+yes\s+\d/);
      });

      await t.step("restore of a running VM without --force exits 4 with one line", async () => {
        await refused(
          home,
          ["snapshot", "restore", name, "mem1"],
          4,
          /cannot restore 'snap': it is running/,
        );
      });

      await t.step("a memory restore continues the counter from the saved value", async () => {
        await waitCount(home, name, b + 5);
        const later = await lastCount(home, name);
        const r = await ok(home, ["snapshot", "restore", name, "mem1", "--force"]);
        assertMatch(r.stdout, /runs from where it was saved/);
        await waitFor(
          "the counter after the restore",
          async () => counts(await consoleLog(home, name)).length >= 2,
          60_000,
        );
        const after = counts(await consoleLog(home, name));
        // The first value printed after the restore follows the saved one: not 0, not the later value.
        assert(
          after[0] >= a && after[0] <= b + 1,
          `saved between ${a} and ${b}, resumed at ${after[0]}`,
        );
        assert(after[0] < later, `resumed at ${after[0]}, the VM had counted on to ${later}`);
        assertEquals(after[1], after[0] + 1);
      });

      await t.step(
        "a disk restore of a stopped VM: the file before is there, the one after is gone",
        async () => {
          await ok(home, ["stop", name, "--force"]);
          const r = await ok(home, ["snapshot", "restore", name, "disk1"]);
          assertMatch(r.stdout, /disks; the VM is stopped/);
          assertEquals((await readAt(disk, 0, 12)).trim(), "DISK-BEFORE");
          assertEquals((await readAt(disk, 8 * 512, 12)).trim(), "");
          // The memory snapshot's disk had both.
          await ok(home, ["snapshot", "restore", name, "mem1", "--disk-only"]);
          assertEquals((await readAt(disk, 8 * 512, 12)).trim(), "DISK-AFTER");
        },
      );

      await t.step(
        "a memory restore under a different spec is refused naming the fields",
        async () => {
          await ok(home, ["set", name, "--memory", "256MiB", "--cpus", "2"]);
          await refused(
            home,
            ["snapshot", "restore", name, "mem1"],
            2,
            /cannot restore the memory of snapshot 'mem1' of 'snap': cpus, memory differ/,
          );
          await ok(home, ["snapshot", "restore", name, "mem1", "--disk-only"]);
          await ok(home, ["set", name, "--memory", "384MiB", "--cpus", "1"]);
        },
      );

      await t.step(
        "bad tags, an existing tag and a missing tag are refused with one line",
        async () => {
          await refused(
            home,
            ["snapshot", "save", name, "a/b"],
            2,
            /'a\/b' is not a valid snapshot tag/,
          );
          await refused(
            home,
            ["snapshot", "save", name, ".."],
            2,
            /'\.\.' is not a valid snapshot tag/,
          );
          await refused(home, ["snapshot", "save", "../x", "t"], 2, /not a valid VM name/);
          await refused(
            home,
            ["snapshot", "save", name, "disk1"],
            2,
            /already has a snapshot 'disk1'/,
          );
          await refused(home, ["snapshot", "restore", name, "nope"], 3, /has no snapshot 'nope'/);
          await refused(
            home,
            ["snapshot", "rm", name, "cold", "nope"],
            3,
            /has no snapshot 'nope'/,
          );
          assert((await snapshotTags(home, name)).includes("cold"), "a failed rm removes nothing");
        },
      );

      await t.step(
        "suspend then start continues the counter; list and get show suspended",
        async () => {
          await ok(home, ["start", name]);
          await waitCount(home, name, 3);
          const before = await lastCount(home, name);
          await ok(home, ["suspend", name]);
          const list = (await ok(home, ["list"])).stdout;
          assertMatch(list, /snap\s+suspended/);
          assertEquals((await getJson(home, name)).state, "suspended");
          await ok(home, ["start", name]);
          await waitFor(
            "the counter after resume",
            async () => counts(await consoleLog(home, name)).length >= 1,
            60_000,
          );
          const after = counts(await consoleLog(home, name));
          assert(
            after[0] >= before && after[0] <= before + 3,
            `suspended at ${before}, resumed at ${after[0]}`,
          );
          assertEquals((await getJson(home, name)).state, "running");
          await ok(home, ["stop", name, "--force"]);
        },
      );

      await t.step("rm removes snapshots; delete removes them with the VM", async () => {
        await ok(home, ["snapshot", "rm", name, "cold", "disk1"]);
        assertEquals(await snapshotTags(home, name), ["mem1"]);
        await ok(home, ["delete", name]);
        await Deno.stat(join(home, "vms", name)).then(
          () => assert(false, "the bundle is still there"),
          () => {},
        );
      });
    } finally {
      await cleanupHome(home);
    }
  },
});

/** Spawns `cove snapshot save NAME TAG`, to be killed. */
function spawnSave(home: string, name: string, tag: string): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, "snapshot", "save", name, tag],
    env: { COVE_HOME: home, NO_COLOR: "1", ...TEST_ENV },
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
}

/** Waits until the supervisor has logged a new pause (the save passed before-pause). */
async function waitPaused(home: string, name: string, since: number): Promise<void> {
  const path = join(home, "vms", name, "supervisor.log");
  await waitFor("the save to pause the guest", async () => {
    const text = await Deno.readTextFile(path);
    return text.slice(since).includes("state paused");
  }, 30_000);
}

async function logLength(home: string, name: string): Promise<number> {
  return (await Deno.readTextFile(join(home, "vms", name, "supervisor.log"))).length;
}

const STALL = 1500;
const STALLS =
  `before-pause:${STALL},state-write:${STALL},disk-copy:${STALL},before-publish:${STALL}`;

linuxTest({
  name:
    "snapshot faults: kill -9 of save at every phase, a killed supervisor, no space and a full disk leave no half snapshot and a VM that runs",
  needs: "reads /proc, mounts a tmpfs for the full-disk faults and boots QEMU guests",
  root: true,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const home = await Deno.makeTempDir({ prefix: "cove-snapf-" });
    const name = "faulty";
    // A small file system of its own, so that "no space" and "full" are real.
    let mounted = false;
    try {
      const mount = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=420M,mode=0700", "tmpfs", home],
        stderr: "piped",
      }).output();
      if (!mount.success) {
        // The guard has made sure this is root on Linux: a mount that fails is a failure.
        throw new Error(
          `this test cannot mount a tmpfs: ${new TextDecoder().decode(mount.stderr).trim()}`,
        );
      }
      mounted = true;
      await createGuestVm(home, name, {
        cmdline: "cove.counter=1",
        disk: "8MiB",
        memory: "256MiB",
      });
      const env = { COVE_TEST_SNAPSHOT_STALL: STALLS };
      await ok(home, ["start", name], env);
      await waitCount(home, name, 1);

      const phases = ["before-pause", "state-write", "disk-copy", "before-publish"];
      for (const [i, phase] of phases.entries()) {
        await t.step(`kill -9 of 'cove snapshot save' at ${phase}`, async () => {
          const tag = `k${i}`;
          const since = await logLength(home, name);
          const child = spawnSave(home, name, tag);
          if (i === 0) await new Promise((r) => setTimeout(r, 1000));
          else {
            // Each stall is STALL ms: from the pause on, the phases follow one another.
            await waitPaused(home, name, since);
            await new Promise((r) => setTimeout(r, STALL * (i - 1) + STALL / 2));
          }
          child.kill("SIGKILL");
          await child.status;
          // The save is the supervisor's: it finishes, or leaves nothing.
          await waitFor(
            "the save to end",
            async () => (await scratchLeft(home, name)).length === 0,
            30_000,
          );
          const tags = await snapshotTags(home, name);
          if (tags.includes(tag)) {
            const dir = join(home, "vms", name, "snapshots", tag);
            for (const f of ["snapshot.json", "memory.state", "disk0.img"]) {
              await Deno.stat(join(dir, f));
            }
          }
          const st = await getJson(home, name);
          assertEquals(st.state, "running");
          const c = await lastCount(home, name);
          await waitCount(home, name, c + 1, 30_000);
          await run(home, ["snapshot", "rm", name, tag]);
        });
      }

      await t.step(
        "kill -9 of the supervisor during the state write: no snapshot, and the VM starts again",
        async () => {
          const since = await logLength(home, name);
          const child = spawnSave(home, name, "dead");
          await waitPaused(home, name, since);
          await new Promise((r) => setTimeout(r, STALL / 2));
          for (const pid of supervisorPids(home)) {
            if (pid !== child.pid) Deno.kill(pid, "SIGKILL");
          }
          await child.status;
          await waitFor(
            "the VM to stop",
            async () => (await getJson(home, name)).state === "stopped",
            20_000,
          );
          assert(!(await snapshotTags(home, name)).includes("dead"));
          await ok(home, ["start", name], env);
          assertEquals(
            await scratchLeft(home, name),
            [],
            "the next start sweeps the staging directory",
          );
          await waitCount(home, name, 1);
        },
      );

      await t.step("a save that cannot fit is refused before the guest is paused", async () => {
        const filler = join(home, "filler");
        const free = Number(
          (await new Deno.Command("df", { args: ["-Pk", home], stdout: "piped" })
            .output().then((o) => new TextDecoder().decode(o.stdout))).trim().split("\n").pop()!
            .split(/\s+/)[3],
        ) * 1024;
        // Leave less than the 256 MiB the memory image may need.
        await new Deno.Command("fallocate", {
          args: ["-l", String(free - 100 * 1024 * 1024), filler],
        })
          .output();
        const log0 = await Deno.readTextFile(join(home, "vms", name, "supervisor.log"));
        await refused(
          home,
          ["snapshot", "save", name, "big"],
          5,
          /not enough free space for the memory image/,
        );
        const log1 = await Deno.readTextFile(join(home, "vms", name, "supervisor.log"));
        assert(!log1.slice(log0.length).includes("state paused"), "the guest was paused");
        await Deno.remove(filler);
      });

      await t.step(
        "a disk that fills during the save leaves no snapshot and the VM running",
        async () => {
          const since = await logLength(home, name);
          const child = spawnSave(home, name, "full");
          // After the free-space check and the pause, before the state write: fill the file system.
          await waitPaused(home, name, since);
          const filler = join(home, "filler");
          const dd = await new Deno.Command("dd", {
            args: ["if=/dev/zero", `of=${filler}`, "bs=1M"],
            stderr: "null",
          }).output();
          assert(!dd.success, "the file system should be full");
          const st = await child.status;
          assert(!st.success, "the save must fail on a full disk");
          await Deno.remove(filler);
          assert(!(await snapshotTags(home, name)).includes("full"));
          assertEquals(await scratchLeft(home, name), []);
          assertEquals((await getJson(home, name)).state, "running");
          const c = await lastCount(home, name);
          await waitCount(home, name, c + 1, 30_000);
        },
      );
    } finally {
      await cleanupHome(home).catch(() => {});
      if (mounted) {
        await new Deno.Command("umount", { args: ["-l", home], stderr: "null" }).output();
        await Deno.remove(home, { recursive: true }).catch(() => {});
      }
    }
  },
});
