/**
 * Bad input and host problems, through the real CLI: each gives one clear
 * line and a documented exit code, and leaves no lock, socket, runtime
 * directory or process behind. Also: a COVE_HOME longer than the unix
 * socket limit still works.
 */
import { join } from "node:path";
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import {
  assertNothingLeft,
  cleanupHome,
  createGuestVm,
  freePort,
  getJson,
  guest,
  run,
} from "./qemu_helpers.ts";
import { linuxTest } from "../helpers/guard.ts";

/** Why these tests run on Linux only. */
const LINUX_GUEST =
  "builds the tiny test guest with Debian's apt-get and dpkg-deb, and finds QEMU processes through /proc";

interface Case {
  name: string;
  /** Prepares the VM; returns extra env for the command. */
  setup: (home: string) => Promise<Record<string, string> | void>;
  message: RegExp;
  exit: number;
}

let held: Deno.Listener | undefined;

const CASES: Case[] = [
  {
    name: "no qemu binary",
    setup: async (home) => {
      await createGuestVm(home, "vm");
      return { PATH: "/nonexistent" };
    },
    message:
      /^cove: qemu-system-x86_64 is not installed \(no QEMU binary for x86_64 guests\) \(install QEMU/,
    exit: 5,
  },
  {
    name: "no EFI firmware",
    setup: async (home) => {
      await guest();
      const r = await run(home, [
        "create",
        "vm",
        "--engine",
        "qemu",
        "--memory",
        "256MiB",
        "--disk-size",
        "1GiB",
      ]);
      if (r.code !== 0) throw new Error(r.stderr);
      return { COVE_FIRMWARE_DIRS: "/nonexistent" };
    },
    message: /^cove: no EFI firmware for x86_64 guests was found \(install it/,
    exit: 5,
  },
  {
    name: "a kernel file that is not a kernel",
    setup: async (home) => {
      await guest();
      const fake = join(home, "not-a-kernel");
      await Deno.writeTextFile(fake, "#!/bin/sh\necho I am not a kernel\n");
      const r = await run(home, [
        "create",
        "vm",
        "--engine",
        "qemu",
        "--kernel",
        fake,
        "--memory",
        "256MiB",
      ]);
      if (r.code !== 0) throw new Error(r.stderr);
    },
    message:
      /^cove: boot\.kernel: '.*vmlinuz' is not a Linux kernel \(no bzImage, arm64 Image, gzip or ELF header\)/,
    exit: 2,
  },
  {
    name: "a host port already in use",
    setup: async (home) => {
      const port = freePort();
      held = Deno.listen({ hostname: "127.0.0.1", port });
      await createGuestVm(home, "vm", { forwards: [{ host: port, guest: 8080 }] });
    },
    message: /^cove: networks\[0\]\.forwards\[0\]: host port 127\.0\.0\.1:\d+ is already in use/,
    exit: 5,
  },
  {
    name: "a share path that does not exist",
    setup: async (home) => {
      await createGuestVm(home, "vm", {
        shares: [{ path: join(home, "no-such-dir"), tag: "gone" }],
      });
    },
    message: /^cove: shares\[0\]: '.*no-such-dir' does not exist/,
    exit: 2,
  },
  {
    name: "a cove-network NIC whose forward NIC would have another NIC's MAC",
    setup: async (home) => {
      const g = await guest();
      const net = await run(home, ["network", "create", "lab", "--subnet", "10.251.0.0/24"]);
      if (net.code !== 0) throw new Error(net.stderr);
      const file = join(home, "vm.yaml");
      await Deno.writeTextFile(
        file,
        JSON.stringify({
          engine: "qemu",
          cpus: 1,
          memory: "256MiB",
          disks: [],
          boot: { loader: "kernel", kernel: g.kernel, initrd: g.initrd, cmdline: g.cmdline },
          networks: [
            { mode: "network", network: "lab", mac: "52:54:00:12:34:56" },
            { mode: "user", mac: "52:55:00:12:34:56" },
          ],
        }),
      );
      const r = await run(home, ["create", "vm", "--config", file]);
      if (r.code !== 0) throw new Error(r.stderr);
    },
    message:
      /^cove: networks\[0\]: the MAC of its forward NIC, 52:55:00:12:34:56, is the MAC of networks\[1\] \(give networks\[1\] another MAC/,
    exit: 2,
  },
];

for (const c of CASES) {
  for (const cmd of ["start", "run"] as const) {
    linuxTest(
      LINUX_GUEST,
      `cove ${cmd} with ${c.name} fails with one line and leaves nothing behind`,
      async () => {
        const home = await Deno.makeTempDir({ prefix: "cove-e2e-bad-" });
        try {
          const env = (await c.setup(home)) ?? {};
          const r = await run(home, [cmd, "vm"], { env });
          assertEquals(r.code, c.exit, r.stderr);
          const lines = r.stderr.trim().split("\n");
          assertEquals(lines.length, 1, r.stderr);
          assertMatch(lines[0], c.message);
          await assertNothingLeft(home, "vm");
          const d = await getJson(home, "vm");
          assertEquals(d.state, "stopped");
          assertMatch(d.error ?? "", /^failed to start: /);
        } finally {
          held?.close();
          held = undefined;
          await cleanupHome(home);
        }
      },
    );
  }
}

linuxTest(LINUX_GUEST, "a COVE_HOME longer than the unix socket limit still runs VMs", async () => {
  const base = await Deno.makeTempDir({ prefix: "cove-e2e-long-" });
  const home = join(base, "a-very-long-directory-name-".repeat(5));
  try {
    await createGuestVm(home, "vm");
    const r = await run(home, ["start", "vm"]);
    assertEquals(r.code, 0, r.stderr);
    const st = await Deno.lstat(join(home, "vms", "vm", "control.sock"));
    assertEquals(st.isSymlink, true);
    assertEquals((await getJson(home, "vm")).state, "running");
    const s = await run(home, ["stop", "vm", "--force"]);
    assertEquals(s.code, 0, s.stderr);
    await assertNothingLeft(home, "vm");
  } finally {
    await cleanupHome(home);
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
});
