/**
 * The lifecycle of one real VM (the tiny Debian guest under TCG), driven
 * through the CLI from separate processes: `cove start` boots it, the
 * console, a shared directory and a forwarded port work, a second `cove run`
 * is refused at once, pause stops it and resume brings it back, and
 * `cove stop` shuts it down through the ACPI power button.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, ROOT } from "../helpers/cli.ts";
import {
  assertNothingLeft,
  BOOT_MARKER,
  cleanupHome,
  consoleLog,
  createGuestVm,
  freePort,
  getJson,
  GUEST_HTTP_PORT,
  HTTP_BODY,
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

async function httpGet(port: number, timeoutMs: number): Promise<string | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, {
      signal: AbortSignal.timeout(timeoutMs),
    });
    return await res.text();
  } catch {
    return undefined;
  }
}

/** Runs `cove console NAME` as its own process, types `line`, returns output once `expect` shows up. */
async function consoleRoundTrip(
  home: string,
  name: string,
  line: string,
  expect: RegExp,
): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, "console", name, "--replay", "0"],
    env: { COVE_HOME: home, ...TEST_ENV },
    cwd: ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  let out = "";
  const reader = child.stdout.getReader();
  const reading = (async () => {
    while (true) {
      const r = await reader.read();
      if (r.done) break;
      out += new TextDecoder().decode(r.value);
    }
  })();
  const deadline = Date.now() + 60_000;
  try {
    // A leading blank line: busybox's line editor may swallow the first key after its prompt.
    while (!expect.test(out)) {
      if (Date.now() > deadline) {
        throw new Error(`no ${expect} from the guest; got: ${out.slice(-500)}`);
      }
      await writer.write(new TextEncoder().encode(`\n ${line}\n`));
      const until = Date.now() + 5000;
      while (!expect.test(out) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    }
    return out;
  } finally {
    await writer.close();
    const st = await child.status;
    await reading;
    assertEquals(st.code, 0, "cove console exits 0 at the end of its input");
  }
}

linuxTest(
  LINUX_GUEST,
  "a VM started with cove start is driven by console, share, port forward, pause and stop from other processes",
  async (t) => {
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-life-" });
    const share = await Deno.makeTempDir({ prefix: "cove-share-" });
    const name = "life";
    const port = freePort();
    try {
      await Deno.writeTextFile(join(share, "hello.txt"), "shared-from-the-host-42\n");
      const dir = await createGuestVm(home, name, {
        shares: [{ path: share, tag: "hostshare" }],
        forwards: [{ host: port, guest: GUEST_HTTP_PORT }],
      });

      await t.step(
        "cove start returns once the VM runs, and the boot marker reaches console.log",
        async () => {
          const r = await run(home, ["start", name]);
          assertEquals(r.code, 0, r.stderr);
          assertEquals(r.stdout.trim(), `started ${name}`);
          const log = await waitForConsole(home, name, READY_MARKER);
          assert(log.includes(BOOT_MARKER));
          assertMatch(log, /Linux \S+ 6\.\d+\S* #1 SMP .* x86_64 GNU\/Linux/);
        },
      );

      await t.step("cove list and cove get show the VM running with its QEMU facts", async () => {
        const list = await run(home, ["list"]);
        assertMatch(list.stdout, new RegExp(`${name}\\s+running`));
        const d = await getJson(home, name);
        assertEquals(d.state, "running");
        const info = d.live!.supervisor!.info;
        assertEquals(info.accel, "tcg");
        assert(typeof info.pid === "number" && qemuPids(dir).includes(info.pid as number));
        assertEquals((info.forwards as { host: number }[])[0].host, port);
      });

      await t.step("a second cove run of the running VM is refused at once", async () => {
        const t0 = Date.now();
        const r = await run(home, ["run", name]);
        assertEquals(r.code, 4);
        assertEquals(r.stderr.trim().split("\n").length, 1);
        assertMatch(r.stderr, /VM 'life' is already running/);
        assert(Date.now() - t0 < 20_000, "refused without waiting for the VM");
        assertEquals((await getJson(home, name)).state, "running");
      });

      await t.step(
        "cove console from another process types into the guest and reads a shared file",
        async () => {
          const out = await consoleRoundTrip(
            home,
            name,
            "cat /mnt/hostshare/hello.txt",
            /shared-from-the-host-42/,
          );
          assert(out.includes("shared-from-the-host-42"));
          assert((await consoleLog(home, name)).includes("COVE-MOUNTED hostshare"));
        },
      );

      await t.step("a host port forward reaches the guest's listener", async () => {
        let body: string | undefined;
        await waitFor(
          "the forwarded port to answer",
          async () => (body = await httpGet(port, 3000)) !== undefined,
          60_000,
        );
        assertEquals(body!.trim(), HTTP_BODY);
      });

      await t.step(
        "cove ssh --wait against a guest with no sshd gives up at its bound with cove's one line, exit 4",
        async () => {
          // The tiny guest runs no sshd: the forward to its port 22 never shows an SSH banner.
          const t0 = Date.now();
          const r = await run(home, ["ssh", name, "--wait", "3s", "--", "true"]);
          const took = Date.now() - t0;
          assertEquals(r.code, 4, r.stderr);
          const lines = r.stderr.trim().split("\n");
          assertEquals(lines.length, 1, r.stderr);
          assertMatch(
            lines[0],
            new RegExp(
              `^cove: VM '${name}' did not accept ssh within 3s \\(wait longer with --wait`,
            ),
          );
          // Bounded by --wait, not by ssh's own timeouts or a hang (generous for a loaded host).
          assert(took < 60_000, `took ${took} ms`);
        },
      );

      await t.step("pause stops the guest and resume brings it back", async () => {
        const p = await run(home, ["pause", name]);
        assertEquals(p.code, 0, p.stderr);
        assertEquals((await getJson(home, name)).state, "paused");
        assertEquals(await httpGet(port, 2000), undefined, "a paused guest does not answer");
        const r = await run(home, ["resume", name]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals((await getJson(home, name)).state, "running");
        let body: string | undefined;
        await waitFor(
          "the resumed guest to answer",
          async () => (body = await httpGet(port, 3000)) !== undefined,
          30_000,
        );
        assertEquals(body!.trim(), HTTP_BODY);
      });

      await t.step(
        "cove stop powers the guest off through ACPI and leaves nothing behind",
        async () => {
          const r = await run(home, ["stop", name, "--format", "json"]);
          assertEquals(r.code, 0, r.stderr);
          const res = JSON.parse(r.stdout);
          assertEquals(res.forced, false);
          assertEquals(res.exit.reason, "host");
          const log = await consoleLog(home, name);
          assert(log.includes(POWEROFF_MARKER), "the guest's ACPI power-button handler ran");
          assertMatch(log, /reboot: Power down/);
          await assertNothingLeft(home, name);
          assertEquals((await getJson(home, name)).state, "stopped");
        },
      );

      await t.step("stop, console and pause on a stopped VM each give one line", async () => {
        for (const cmd of ["stop", "console", "pause"]) {
          const r = await run(home, [cmd, name]);
          assertEquals(r.code, 4, `${cmd}: ${r.stderr}`);
          assertEquals(r.stderr.trim().split("\n").length, 1);
          assertMatch(r.stderr, /it is not running/);
        }
        await assertNothingLeft(home, name);
      });
    } finally {
      await cleanupHome(home);
      await Deno.remove(share, { recursive: true }).catch(() => {});
    }
  },
);
