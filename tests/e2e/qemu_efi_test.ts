/**
 * EFI boot: an x86_64 VM with the default efi loader boots Debian's OVMF
 * (from the ovmf package) under TCG to the UEFI shell on its serial
 * console, with its own copy of the variable store in the bundle, which
 * snapshots and clones of the running VM take with its disks.
 */
import { join } from "node:path";
import { assertEquals } from "../helpers/assert.ts";
import {
  assertNothingLeft,
  cleanupHome,
  requireTool,
  run,
  waitForConsole,
} from "./qemu_helpers.ts";
import { linuxTest } from "../helpers/guard.ts";

/** Why this test runs on Linux only. */
const LINUX_GUEST_OVMF =
  "boots Debian's OVMF from /usr/share/OVMF with the tiny test guest (Debian's apt-get and dpkg-deb)";

linuxTest(
  LINUX_GUEST_OVMF,
  "an EFI VM boots OVMF to the UEFI shell with its own variable store, which a snapshot and a clone of it take and a restore puts back",
  async () => {
    requireTool("qemu-system-x86_64", "qemu-system-x86");
    try {
      Deno.statSync("/usr/share/OVMF/OVMF_CODE_4M.fd");
    } catch {
      throw new Error("OVMF is not installed: this test needs the 'ovmf' package (run make setup)");
    }
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-efi-" });
    try {
      const c = await run(home, [
        "create",
        "efi",
        "--engine",
        "qemu",
        "--memory",
        "256MiB",
        "--disk-size",
        "64MiB",
      ]);
      assertEquals(c.code, 0, c.stderr);
      const vars = join(home, "vms", "efi", "efi-vars.fd");
      const s = await run(home, ["start", "efi"]);
      assertEquals(s.code, 0, s.stderr);
      await waitForConsole(home, "efi", "UEFI Interactive Shell");
      const template = await Deno.stat("/usr/share/OVMF/OVMF_VARS_4M.fd");
      assertEquals((await Deno.stat(vars)).size, template.size);
      assertEquals((await Deno.stat(vars)).mode! & 0o777, 0o600);
      // A snapshot and a clone of the running VM take the variable store with the disks, while
      // QEMU is paused; a restore puts it back.
      const snap = await run(home, ["snapshot", "save", "efi", "boot", "--disk-only"]);
      assertEquals(snap.code, 0, snap.stderr);
      const taken = await Deno.readFile(join(home, "vms", "efi", "snapshots", "boot", "firmware0"));
      assertEquals(taken.length, template.size);
      const clone = await run(home, ["clone", "efi", "efi2"]);
      assertEquals(clone.code, 0, clone.stderr);
      assertEquals(
        (await Deno.stat(join(home, "vms", "efi2", "efi-vars.fd"))).size,
        template.size,
      );
      const stop = await run(home, ["stop", "efi", "--force"]);
      assertEquals(stop.code, 0, stop.stderr);
      await assertNothingLeft(home, "efi");
      await Deno.writeFile(vars, new Uint8Array(template.size));
      const back = await run(home, ["snapshot", "restore", "efi", "boot"]);
      assertEquals(back.code, 0, back.stderr);
      assertEquals(await Deno.readFile(vars), taken);
    } finally {
      await cleanupHome(home);
    }
  },
);
