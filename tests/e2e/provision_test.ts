/**
 * End to end, under TCG, one boot: a Debian 12 guest with cloud-init and
 * openssh-server (built from Debian's packages by
 * tests/fixtures/debian_cloud_guest.ts) is created with `cove create --from
 * disk.img --kernel --initrd`, started with `cove start`, provisioned by
 * the seed cove writes (user, cove's key, hostname, a share mount), and
 * reached with `cove ssh` / `cove exec` through the automatic SSH forward.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { type CliResult, cove } from "../helpers/cli.ts";
import { createFlags, ensureDebianCloudGuest } from "../fixtures/debian_cloud_guest.ts";
import { linuxTest } from "../helpers/guard.ts";

const ENV = { COVE_QEMU_ACCEL: "tcg" };
/** A TCG boot with cloud-init takes 2-3 minutes on a quiet 2-core machine; allow for a busy one. */
const BOOT_WAIT_S = 900;

function requireTool(name: string, pkg: string): void {
  for (const d of [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/bin", "/usr/sbin", "/sbin"]) {
    try {
      if (Deno.statSync(join(d, name)).isFile) return;
    } catch { /* next */ }
  }
  throw new Error(
    `${name} is not installed: this test needs the '${pkg}' package (run make setup)`,
  );
}

function run(home: string, args: string[], timeoutMs = 120_000): Promise<CliResult> {
  return cove(home, args, { env: ENV, timeoutMs });
}

linuxTest({
  needs: "builds a Debian cloud guest with debootstrap and mkfs.ext4, as root",
  root: true,
  name:
    "a Debian cloud guest booted by cove gets its name, cove's key and its share from the seed, and cove ssh/exec reach it",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    for (
      const [tool, pkg] of [
        ["qemu-system-x86_64", "qemu-system-x86"],
        ["debootstrap", "debootstrap"],
        ["mkfs.ext4", "e2fsprogs"],
        ["ssh", "openssh-client"],
        ["ssh-keygen", "openssh-client"],
      ]
    ) requireTool(tool, pkg);
    const g = await ensureDebianCloudGuest();
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-prov-" });
    const share = join(home, "shared");
    await Deno.mkdir(share);
    await Deno.writeTextFile(join(share, "marker.txt"), "shared from the host\n");
    const name = "cloudvm";
    const config = join(home, "vm.yaml");
    await Deno.writeTextFile(
      config,
      JSON.stringify({
        engine: "qemu",
        cpus: 2,
        memory: "1GiB",
        disks: [{ path: "disk.img", size: "4GiB" }],
        networks: [{ mode: "user" }],
        shares: [{ path: share, tag: "work", mountPoint: "/srv/work" }],
      }),
    );
    let started = false;
    try {
      await t.step(
        "cove create --from a raw disk with --kernel attaches a cloud-init seed",
        async () => {
          const r = await run(home, [
            "create",
            name,
            "--config",
            config,
            ...createFlags(g),
          ], 300_000);
          assertEquals(r.code, 0, r.stderr);
          const get = await run(home, ["get", name, "--format", "json"]);
          const spec = JSON.parse(get.stdout).spec;
          assertEquals(spec.disks.map((d: { path: string }) => d.path), ["disk.img", "cidata.iso"]);
          assert((await Deno.stat(join(home, "vms", name, "cidata.iso"))).size > 0);
        },
      );

      await t.step("cove ssh to the stopped VM is one clear line", async () => {
        const r = await run(home, ["ssh", name, "--", "true"]);
        assertEquals(r.code, 4);
        assertEquals(
          r.stderr.trim(),
          `cove: VM '${name}' is not running (start it with 'cove start ${name}')`,
        );
      });

      await t.step("cove start boots it", async () => {
        const r = await run(home, ["start", name], 300_000);
        assertEquals(r.code, 0, r.stderr);
        started = true;
      });

      await t.step(
        "cove ssh before the guest's sshd is up is cove's one line, exit 4",
        async () => {
          // Right after start the guest is still booting under TCG: no SSH banner yet.
          const r = await run(home, ["ssh", name, "--", "true"]);
          assertEquals(r.code, 4, r.stderr);
          assertMatch(
            r.stderr.trim(),
            new RegExp(`^cove: VM '${name}' does not answer ssh at .* yet`),
          );
          assert(!r.stderr.includes("kex_exchange_identification"), r.stderr);
        },
      );

      await t.step("cove ssh NAME -- cat /etc/hostname prints the VM's name", async () => {
        const r = await run(home, [
          "ssh",
          name,
          "--wait",
          `${BOOT_WAIT_S}s`,
          "--",
          "cat",
          "/etc/hostname",
        ], (BOOT_WAIT_S + 60) * 1000);
        if (r.code !== 0) {
          const log = await Deno.readTextFile(join(home, "vms", name, "console.log")).catch(() =>
            ""
          );
          throw new Error(
            `cove ssh exited ${r.code}: ${r.stderr}\n--- console tail ---\n${
              log.split("\n").slice(-40).join("\n")
            }`,
          );
        }
        assertEquals(r.stdout.trim(), name);
      });

      await t.step("cove ip reports the host side of the SSH forward", async () => {
        const r = await run(home, ["ip", name]);
        assertEquals(r.code, 0, r.stderr);
        assertMatch(r.stdout.trim(), /^127\.0\.0\.1:\d+$/);
      });

      await t.step("the shared directory is mounted where the spec says", async () => {
        const r = await run(home, ["exec", name, "--", "cat", "/srv/work/marker.txt"]);
        if (r.code !== 0) {
          const diag = await run(home, [
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "sudo dmesg | grep -iE 'virtio|9p|fuse' | tail; sudo tail -25 /var/log/cloud-init-output.log; sudo sh -x /usr/local/sbin/cove-mounts 2>&1 | tail -20",
          ]);
          throw new Error(
            `the share is not mounted: ${r.stderr}\n--- guest ---\n${diag.stdout}${diag.stderr}`,
          );
        }
        assertEquals(r.stdout, "shared from the host\n");
        const m = await run(home, ["exec", name, "--", "sh", "-c", "mount | grep ' /srv/work '"]);
        assertEquals(m.code, 0, m.stderr);
      });

      await t.step(
        "the user has passwordless sudo, and the guest's exit code becomes cove's",
        async () => {
          const r = await run(home, ["exec", name, "--", "sudo", "-n", "id", "-u"]);
          assertEquals(r.stdout.trim(), "0");
          const e = await run(home, ["exec", name, "--", "sh", "-c", "exit 7"]);
          assertEquals(e.code, 7);
        },
      );
    } finally {
      if (started) await run(home, ["stop", name, "--force"], 120_000).catch(() => undefined);
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
