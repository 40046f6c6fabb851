/**
 * Hangs and races around a real supervisor (QEMU under TCG): a supervisor
 * that does not answer (SIGSTOP) is listed as `unresponsive`, and `stop`,
 * `stop --force` and `delete --force` end within their timeout by killing
 * the engine's process themselves; ten concurrent `cove start` of one VM
 * give one "started" and nine "already running" (exit 4), and nothing stays
 * queued to boot the VM again after a stop.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import {
  alive,
  assertNothingLeft,
  BOOT_MARKER,
  cleanupHome,
  createGuestVm,
  getJson,
  qemuPids,
  run,
  supervisorPids,
  waitFor,
  waitForConsole,
} from "./qemu_helpers.ts";
import { linuxTest } from "../helpers/guard.ts";

async function withHome(prefix: string, fn: (home: string) => Promise<void>): Promise<void> {
  const home = await Deno.makeTempDir({ prefix });
  try {
    await fn(home);
  } finally {
    await cleanupHome(home);
  }
}

/** Starts the VM and freezes its supervisor; returns the supervisor's and QEMU's pids. */
async function startAndFreeze(home: string, name: string, dir: string) {
  const r = await run(home, ["start", name]);
  assertEquals(r.code, 0, r.stderr);
  await waitForConsole(home, name, BOOT_MARKER);
  const sup = (await getJson(home, name)).live!.supervisor!.pid;
  const qemu = qemuPids(dir);
  assertEquals(qemu.length, 1);
  Deno.kill(sup, "SIGSTOP");
  return { sup, qemu: qemu[0] };
}

for (
  const cmd of [
    ["stop", "NAME", "--timeout", "2s"],
    ["stop", "NAME", "--force", "--timeout", "2s"],
    ["delete", "NAME", "--force", "--timeout", "2s"],
  ]
) {
  linuxTest({
    name: `'cove ${
      cmd.join(" ")
    }' of a VM whose supervisor is SIGSTOPped ends by killing the engine's process, and says the supervisor did not answer`,
    needs: "reads /proc to find the QEMU and supervisor processes",
  }, async () => {
    await withHome("cove-e2e-hung-", async (home) => {
      const name = "hung";
      const dir = await createGuestVm(home, name);
      const { sup, qemu } = await startAndFreeze(home, name, dir);
      try {
        const list = await run(home, ["list", "--format", "json"]);
        assertEquals(list.code, 0, list.stderr);
        assertEquals(
          (JSON.parse(list.stdout) as { name: string; state: string }[]).map((v) => v.state),
          ["unresponsive"],
        );
        const r = await run(home, cmd.map((a) => (a === "NAME" ? name : a)), { timeoutMs: 40_000 });
        assertEquals(r.code, 0, r.stderr);
        assertMatch(
          r.stderr,
          /the supervisor of 'hung' did not answer within [\d.]+s; cove killed its engine process \(pid \d+\)/,
        );
        await waitFor("qemu to be gone", () => !alive(qemu), 10_000);
        assert(!alive(sup), "the frozen supervisor was killed too");
        if (cmd[0] === "delete") {
          assertEquals((await run(home, ["get", name])).code, 3);
        } else {
          const d = await getJson(home, name);
          assertEquals(d.state, "stopped");
          assertMatch(d.error ?? "", /did not answer/);
          // And it starts again, cleanly.
          const again = await run(home, ["start", name]);
          assertEquals(again.code, 0, again.stderr);
          assertEquals((await run(home, ["stop", name, "--force"])).code, 0);
          await assertNothingLeft(home, name);
        }
      } finally {
        try {
          Deno.kill(sup, "SIGCONT");
        } catch { /* gone */ }
      }
    });
  });
}

linuxTest({
  name:
    "ten concurrent 'cove start' of one VM: one starts it, nine fail at once with 'already running' (exit 4), and nothing boots it again after a stop",
  needs: "reads /proc to find the QEMU and supervisor processes",
}, async () => {
  await withHome("cove-e2e-race-", async (home) => {
    const name = "racy";
    const dir = await createGuestVm(home, name);
    const results = await Promise.all(
      Array.from({ length: 10 }, () => run(home, ["start", name], { timeoutMs: 180_000 })),
    );
    const ok = results.filter((r) => r.code === 0);
    assertEquals(ok.length, 1, results.map((r) => `${r.code} ${r.stderr}`).join("\n"));
    assertEquals(ok[0].stdout.trim(), `started ${name}`);
    for (const r of results.filter((r) => r.code !== 0)) {
      assertEquals(r.code, 4, r.stderr);
      assertMatch(r.stderr, /already running/);
    }
    await waitForConsole(home, name, BOOT_MARKER);
    assertEquals(qemuPids(dir).length, 1, "one QEMU");
    assertEquals(supervisorPids(home).length, 1, "one supervisor, none waiting");
    const stop = await run(home, ["stop", name, "--force"]);
    assertEquals(stop.code, 0, stop.stderr);
    // Nothing queued: a few seconds later the VM is still stopped.
    await new Promise((r) => setTimeout(r, 3000));
    assertEquals((await getJson(home, name)).state, "stopped");
    assertEquals(qemuPids(dir), []);
    assertEquals(supervisorPids(home), []);
    await assertNothingLeft(home, name);
  });
});
