/**
 * End to end, under TCG: the key install of a macOS guest's first boot,
 * against a real sshd. A Debian 12 cloud guest (tests/fixtures/
 * debian_cloud_guest.ts) stands in for the Mac: its cloud-init seed gives
 * the user a password and turns sshd's password login on, and does NOT get
 * cove's key (provision.sshKeys holds an unrelated key). The bundle is
 * left as a provisioned macOS first boot leaves it (install record, 0600
 * password); then `cove start`'s supervisor runs what it runs after a
 * provisioning first boot on a Mac (runFirstBootKeyInstall): waits for ssh,
 * installs cove's key over one password session through the SSH_ASKPASS
 * helper, proves the key alone logs in and deletes the password. The test
 * waits with the bounded wait `cove create` uses; `cove exec` then works
 * with the key alone (BatchMode: no password possible).
 *
 * What only a Mac with macOS 27 shows: that the guest's account and Remote
 * Login came from VZMacGuestProvisioningOptions rather than from cloud-init.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals } from "../helpers/assert.ts";
import { type CliResult, cove } from "../helpers/cli.ts";
import { createFlags, ensureDebianCloudGuest } from "../fixtures/debian_cloud_guest.ts";
import { Bundle } from "../../core/store/bundle.ts";
import { readLiveStatus } from "../../core/access/status.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { detectHost } from "../../core/host.ts";
import { runFirstBootKeyInstall } from "../../core/provision/macos_firstboot.ts";
import {
  readInstallRecord,
  storePassword,
  waitFirstBoot,
  writeInstallRecord,
} from "../../core/provision/macos.ts";
import { linuxTest } from "../helpers/guard.ts";

const ENV = { COVE_QEMU_ACCEL: "tcg" };
/** A TCG boot with cloud-init takes 2-3 minutes on a quiet 2-core machine; allow for a busy one. */
const BOOT_WAIT_S = 900;
const PASSWORD = "Askpass-Test-7q2x";

function haveTool(name: string): boolean {
  for (const d of [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/bin", "/usr/sbin", "/sbin"]) {
    try {
      if (Deno.statSync(join(d, name)).isFile) return true;
    } catch { /* next */ }
  }
  return false;
}

function run(home: string, args: string[], timeoutMs = 120_000): Promise<CliResult> {
  return cove(home, args, { env: { ...ENV, COVE_HOME: home }, timeoutMs });
}

linuxTest({
  name:
    "the first boot's askpass session installs cove's key with the password, then the key alone logs in and the password is gone",
  // A Mac runs the VZ path instead.
  needs: "builds the Debian guest with debootstrap and boots it under QEMU",
  root: true,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    for (const tool of ["qemu-system-x86_64", "debootstrap", "mkfs.ext4", "ssh", "ssh-keygen"]) {
      if (!haveTool(tool)) throw new Error(`${tool} is not installed: run make setup`);
    }
    const g = await ensureDebianCloudGuest();
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-askpass-" });
    const name = "askvm";
    // An unrelated key, so the seed does not install cove's own.
    const other = join(home, "other_key");
    const kg = await new Deno.Command("ssh-keygen", {
      args: ["-q", "-t", "ed25519", "-N", "", "-C", "not-cove", "-f", other],
    }).output();
    assert(kg.success);
    const otherPub = (await Deno.readTextFile(`${other}.pub`)).trim();
    const config = join(home, "vm.yaml");
    await Deno.writeTextFile(
      config,
      JSON.stringify({
        engine: "qemu",
        cpus: 2,
        memory: "1GiB",
        disks: [{ path: "disk.img", size: "4GiB" }],
        networks: [{ mode: "user" }],
        provision: {
          user: "cove",
          sshKeys: [otherPub],
          commands: [
            `echo 'cove:${PASSWORD}' | chpasswd`,
            "printf 'PasswordAuthentication yes\\nKbdInteractiveAuthentication yes\\n' > /etc/ssh/sshd_config.d/01-cove-test.conf",
            "systemctl restart ssh",
          ],
        },
      }),
    );
    let started = false;
    const bundle = new Bundle(name, join(home, "vms", name));
    try {
      await t.step(
        "create the guest, left as a provisioned macOS first boot leaves it",
        async () => {
          const c = await run(home, [
            "create",
            name,
            "--config",
            config,
            ...createFlags(g),
          ], 300_000);
          assertEquals(c.code, 0, c.stderr);
          // What create and the engine's start leave for a macOS 27 guest: the
          // record (started with provisioning options) and the 0600 password.
          await writeInstallRecord(bundle, {
            restoreImage: { version: "27.0", build: "test" },
            hostIdentity: "test",
            installedAt: new Date().toISOString(),
            provisioning: true,
            guestProvisionedAt: new Date().toISOString(),
            waitSeconds: BOOT_WAIT_S,
          });
          await storePassword(bundle, PASSWORD);
        },
      );

      await t.step(
        "cove start: the supervisor installs cove's key over askpass and deletes the password",
        async () => {
          const s = await run(home, ["start", name], 300_000);
          assertEquals(s.code, 0, s.stderr);
          started = true;
          // The same bounded wait cove create uses.
          await waitFirstBoot(bundle, BOOT_WAIT_S + 60);
          let gone = false;
          try {
            await Deno.stat(bundle.provisionPasswordPath);
          } catch (e) {
            gone = e instanceof Deno.errors.NotFound;
          }
          assert(gone, "the password file is deleted");
          assert((await readInstallRecord(bundle))?.keysInstalledAt, "recorded");
          const log = await Deno.readTextFile(bundle.supervisorLog);
          assert(log.includes("first boot: cove's key is installed"), log);
          assert(!log.includes(PASSWORD), "the password is never logged");
        },
      );

      await t.step("a direct second run finds nothing left to do", async () => {
        const spec = applyDefaults(await bundle.readParsedSpec(), detectHost(), name);
        await runFirstBootKeyInstall(bundle, spec, {
          status: readLiveStatus,
          home,
          waitSeconds: 5,
        });
        assertEquals(
          (await readInstallRecord(bundle))?.lastProvisionError,
          undefined,
          "no password: no session, no error",
        );
      });

      await t.step("cove exec then logs in with the key alone", async () => {
        const r = await run(home, [
          "exec",
          name,
          "--",
          "sh",
          "-c",
          "id -un; cat ~/.ssh/authorized_keys",
        ]);
        assertEquals(r.code, 0, r.stderr);
        const [user, ...keys] = r.stdout.trim().split("\n");
        assertEquals(user, "cove");
        const covePub = (await Deno.readTextFile(join(home, "ssh", "id_ed25519.pub"))).trim();
        assertEquals(keys.filter((k) => k.trim() === covePub).length, 1, "cove's key, once");
        assert(keys.some((k) => k.trim() === otherPub), "the seed's key is kept");
      });
    } finally {
      if (started) await run(home, ["stop", name, "--force"], 120_000).catch(() => undefined);
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
