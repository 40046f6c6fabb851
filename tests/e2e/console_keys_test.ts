/**
 * `cove run NAME --console` on a real QEMU guest (TCG): Ctrl-C typed on
 * the console goes to the guest and does not stop the VM; Ctrl-A x
 * detaches and stops it gracefully (the guest powers off on the ACPI
 * button), and cove exits 0.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, ROOT, withTempDir } from "../helpers/cli.ts";
import {
  BOOT_TIMEOUT_MS,
  consoleLog,
  createGuestVm,
  POWEROFF_MARKER,
  READY_MARKER,
  TEST_ENV,
} from "./qemu_helpers.ts";

Deno.test("cove run --console: Ctrl-C reaches the guest, Ctrl-A x stops the VM and cove exits 0", () =>
  withTempDir(async (home) => {
    await createGuestVm(home, "keys");
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", CLI, "run", "keys", "--console", "--stop-timeout", "60s"],
      env: { COVE_HOME: home, ...TEST_ENV },
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    let out = "";
    const reading = (async () => {
      for await (const b of child.stdout) out += new TextDecoder().decode(b);
    })();
    const errText = new Response(child.stderr).text();
    const until = async (what: string, ms: number) => {
      const deadline = Date.now() + ms;
      while (!out.includes(what)) {
        if (Date.now() > deadline) {
          throw new Error(`no '${what}' on the console: ${out.slice(-800)}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    let exited = false;
    const status = child.status.then((s) => (exited = true, s));
    try {
      await until(READY_MARKER, BOOT_TIMEOUT_MS);
      // The guest's shell starts a moment after the marker, and its line editor drops what was
      // typed before it read (seen under CI load): type again until the shell answers.
      const deadline = Date.now() + 60_000;
      while (!out.includes("STILL-42")) {
        await writer.write(new Uint8Array([3])); // Ctrl-C: the guest's, not cove's
        await writer.write(new TextEncoder().encode("\necho STILL-$((40+2))\n"));
        await until("STILL-42", Math.min(5_000, deadline - Date.now())).catch((e) => {
          if (Date.now() >= deadline) throw e;
        });
      }
      assert(!exited, "Ctrl-C on the console did not stop the VM");
      await writer.write(new Uint8Array([0x01, 0x78])); // Ctrl-A x
      const st = await Promise.race([
        status,
        new Promise<never>((_, rej) =>
          setTimeout(() => rej(new Error("cove run did not exit")), 90_000)
        ),
      ]);
      await reading;
      const err = await errText;
      assertEquals(st.code, 0, err);
      assertMatch(err, /stopping \(ACPI power button/);
      assertMatch(err, /keys stopped \(stopped by cove\)/);
      // Detached by then, so the guest's last words are in console.log, not on stdout.
      assert((await consoleLog(home, "keys")).includes(POWEROFF_MARKER), "the guest shut down");
    } finally {
      await writer.close().catch(() => {});
      if (!exited) child.kill("SIGKILL");
      await status;
    }
  }));
