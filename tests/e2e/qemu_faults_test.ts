/**
 * Faults and concurrency with real VMs under TCG: kill -9 of the
 * supervisor takes QEMU with it (through setpriv's parent-death signal and
 * through the portable watchdog), QEMU dying shows as a crash quoting the
 * console, a forced stop, two VMs at once (one sharing over 9p), Ctrl-C of
 * a foreground `cove run`, and `--ephemeral`.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, ROOT } from "../helpers/cli.ts";
import {
  alive,
  assertNothingLeft,
  BOOT_MARKER,
  cleanupHome,
  consoleLog,
  createGuestVm,
  getJson,
  POWEROFF_MARKER,
  qemuPids,
  READY_MARKER,
  run,
  TEST_ENV,
  waitFor,
  waitForConsole,
} from "./qemu_helpers.ts";
import { linuxTest } from "../helpers/guard.ts";

/** Why these tests run on Linux only. */
const LINUX_GUEST =
  "builds the tiny test guest with Debian's apt-get and dpkg-deb, and finds QEMU processes through /proc";

async function withHome(prefix: string, fn: (home: string) => Promise<void>): Promise<void> {
  const home = await Deno.makeTempDir({ prefix });
  try {
    await fn(home);
  } finally {
    await cleanupHome(home);
  }
}

for (const reaper of ["pdeathsig", "sh"] as const) {
  linuxTest(
    LINUX_GUEST,
    `kill -9 of the supervisor leaves no qemu process (${
      reaper === "sh" ? "portable watchdog" : "setpriv pdeathsig"
    })`,
    async () => {
      await withHome("cove-e2e-kill-", async (home) => {
        const name = "victim";
        const dir = await createGuestVm(home, name);
        const env: Record<string, string> = reaper === "sh" ? { COVE_REAPER: "sh" } : {};
        const r = await run(home, ["start", name], { env });
        assertEquals(r.code, 0, r.stderr);
        await waitForConsole(home, name, BOOT_MARKER);
        const d = await getJson(home, name);
        const sup = d.live!.supervisor!;
        assertEquals(sup.info.reaper, reaper === "sh" ? "watchdog" : "pdeathsig");
        const qemu = qemuPids(dir);
        assertEquals(qemu.length, 1);
        Deno.kill(sup.pid, "SIGKILL");
        await waitFor("qemu to die with its supervisor", () => !alive(qemu[0]), 10_000);
        assertEquals(qemuPids(dir), []);
        // The lock went with the supervisor. get and list only read: the stale
        // socket stays until the next start of the VM, which sweeps it.
        assertEquals((await getJson(home, name)).state, "stopped");
        assertEquals((await run(home, ["list", "--format", "json"])).code, 0);
        // And the VM starts again.
        const again = await run(home, ["start", name], { env });
        assertEquals(again.code, 0, again.stderr);
        const stop = await run(home, ["stop", name, "--force"]);
        assertEquals(stop.code, 0, stop.stderr);
        await assertNothingLeft(home, name);
      });
    },
  );
}

linuxTest(
  LINUX_GUEST,
  "qemu dying shows the VM stopped with an error quoting the last console lines",
  async () => {
    await withHome("cove-e2e-crash-", async (home) => {
      const name = "crashy";
      const dir = await createGuestVm(home, name);
      assertEquals((await run(home, ["start", name])).code, 0);
      await waitForConsole(home, name, READY_MARKER);
      const [pid] = qemuPids(dir);
      Deno.kill(pid, "SIGKILL");
      await waitFor(
        "the supervisor to notice",
        async () => (await getJson(home, name)).state === "stopped",
        15_000,
      );
      const d = await getJson(home, name);
      assertMatch(
        d.error ?? "",
        /^crashed: qemu was killed by SIGKILL.*\(last console lines: .+\)$/,
      );
      const text = await run(home, ["get", name]);
      assertMatch(text.stdout, /error: crashed: qemu was killed by SIGKILL/);
      await assertNothingLeft(home, name);
    });
  },
);

linuxTest(
  LINUX_GUEST,
  "a forced stop powers the VM off at once without asking the guest",
  async () => {
    await withHome("cove-e2e-force-", async (home) => {
      const name = "forced";
      await createGuestVm(home, name);
      assertEquals((await run(home, ["start", name])).code, 0);
      await waitForConsole(home, name, READY_MARKER);
      const r = await run(home, ["stop", name, "--force", "--format", "json"]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(JSON.parse(r.stdout).forced, true);
      assert(
        !(await consoleLog(home, name)).includes(POWEROFF_MARKER),
        "the guest never saw a power button",
      );
      await assertNothingLeft(home, name);
    });
  },
);

linuxTest(
  LINUX_GUEST,
  "two VMs run at once, one sharing over 9p, and stop independently",
  async () => {
    await withHome("cove-e2e-two-", async (home) => {
      const share = join(home, "share");
      await Deno.mkdir(share);
      await Deno.writeTextFile(join(share, "x.txt"), "nine-pee\n");
      await createGuestVm(home, "one", { shares: [{ path: share, tag: "nine" }] });
      await createGuestVm(home, "two");
      const [a, b] = await Promise.all([
        run(home, ["start", "one"], { env: { COVE_QEMU_SHARES: "9p" } }),
        run(home, ["start", "two"]),
      ]);
      assertEquals(a.code, 0, a.stderr);
      assertEquals(b.code, 0, b.stderr);
      await Promise.all([
        waitForConsole(home, "one", READY_MARKER),
        waitForConsole(home, "two", READY_MARKER),
      ]);
      assertMatch(await consoleLog(home, "one"), /COVE-MOUNTED nine 9p/);
      const list = await run(home, ["list"]);
      assertMatch(list.stdout, /one\s+running/);
      assertMatch(list.stdout, /two\s+running/);
      assertEquals((await run(home, ["stop", "one"])).code, 0);
      assertEquals((await getJson(home, "two")).state, "running");
      assertEquals((await run(home, ["stop", "two"])).code, 0);
      await assertNothingLeft(home, "one");
      await assertNothingLeft(home, "two");
    });
  },
);

linuxTest(
  LINUX_GUEST,
  "Ctrl-C of a foreground cove run shuts the guest down through ACPI",
  async () => {
    await withHome("cove-e2e-fg-", async (home) => {
      const name = "fg";
      await createGuestVm(home, name);
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--quiet", CLI, "run", name],
        env: { COVE_HOME: home, ...TEST_ENV },
        cwd: ROOT,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      await waitForConsole(home, name, READY_MARKER);
      child.kill("SIGINT");
      const out = await child.output();
      const err = new TextDecoder().decode(out.stderr);
      assertEquals(out.code, 0, err);
      assertMatch(err, /stopping \(ACPI power button/);
      assert((await consoleLog(home, name)).includes(POWEROFF_MARKER));
      await assertNothingLeft(home, name);
    });
  },
);

linuxTest(LINUX_GUEST, "cove run --ephemeral runs a clone and deletes it on exit", async () => {
  await withHome("cove-e2e-eph-", async (home) => {
    const name = "base";
    await createGuestVm(home, name);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", CLI, "run", name, "--ephemeral"],
      env: { COVE_HOME: home, ...TEST_ENV },
      cwd: ROOT,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let clone = "";
    await waitFor("the clone to appear", async () => {
      const l = await run(home, ["list", "-q"]);
      clone = l.stdout.split("\n").find((n) => n.startsWith("base-eph-")) ?? "";
      return clone !== "";
    }, 30_000);
    await waitForConsole(home, clone, READY_MARKER);
    assertEquals((await getJson(home, name)).state, "stopped", "the original does not run");
    const stop = await run(home, ["stop", clone]);
    assertEquals(stop.code, 0, stop.stderr);
    const st = await child.status;
    assertEquals(st.code, 0);
    const l = await run(home, ["list", "-q"]);
    assertEquals(l.stdout.trim(), name);
    await assertNothingLeft(home, name);
  });
});
