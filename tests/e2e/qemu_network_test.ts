// cove networks with real TCG boots: two QEMU VMs on one `cove network` reach each other through
// cove's switch (no root: QEMU's stream netdev over unix sockets), a third VM on another network
// cannot reach them, a forward on a cove network NIC serves the guest's port on 127.0.0.1
// (through QEMU's private forward NIC), and the refusals are one line each.
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { ensureNetGuest } from "../fixtures/netguest.ts";
import { canBuildNetGuest } from "../fixtures/netguest.ts";
import {
  BOOT_TIMEOUT_MS,
  consoleLog,
  READY_MARKER,
  run,
  typeInto,
  typeUntil,
  waitForConsole,
} from "./qemu_helpers.ts";
import { freePort } from "../helpers/oci_registry.ts";
import { linuxTest } from "../helpers/guard.ts";

/** What of this test's tools this Linux host lacks (make setup installs them), if anything. */
function hostLacks(): string | undefined {
  if (Deno.build.arch !== "x86_64") return "the tiny guest is built for x86_64 Linux hosts";
  try {
    Deno.statSync("/usr/bin/qemu-system-x86_64");
  } catch {
    return "needs qemu-system-x86_64";
  }
  if (!canBuildNetGuest()) return "the network guest needs a C compiler (cc)";
  return undefined;
}

async function createOn(
  home: string,
  name: string,
  network: string,
  addr: string,
  forwards: { host: number; guest: number }[] = [],
) {
  const g = await ensureNetGuest();
  const spec = {
    engine: "qemu",
    cpus: 1,
    memory: "256MiB",
    disks: [],
    boot: {
      loader: "kernel",
      kernel: g.kernel,
      initrd: g.initrd,
      cmdline: `${g.cmdline} cove.net=${addr},10.252.0.1`,
    },
    networks: [{ mode: "network", network, forwards }],
  };
  const file = join(home, `${name}.yaml`);
  await Deno.writeTextFile(file, JSON.stringify(spec));
  const r = await run(home, ["create", name, "--config", file]);
  if (r.code !== 0) throw new Error(`cove create ${name}: ${r.stderr}`);
}

linuxTest({
  needs:
    "builds the network guest from Debian's packages with apt-get, dpkg-deb and cc, and boots it under QEMU",
  name:
    "two VMs on one cove network ping each other and exchange a file; a VM on another network cannot reach them",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const lacks = hostLacks();
    if (lacks) throw new Error(`this host cannot run the test: ${lacks} (run make setup)`);
    const home = await Deno.makeTempDir({ prefix: "cove-net-" });
    try {
      const lab = await run(home, ["network", "create", "lab", "--subnet", "10.252.0.0/24"]);
      assertEquals(lab.code, 0, lab.stderr);
      const other = await run(home, ["network", "create", "other", "--subnet", "10.253.0.0/24"]);
      assertEquals(other.code, 0, other.stderr);
      const hostPort = freePort();
      await createOn(home, "a", "lab", "10.252.0.2/24", [{ host: hostPort, guest: 8080 }]);
      await createOn(home, "b", "lab", "10.252.0.3/24");
      let sumA: string | undefined;
      // c is on another network but claims an address of lab's subnet: only the switch separates it.
      await createOn(home, "c", "other", "10.252.0.9/24");

      await t.step(
        "refusals: a missing network, an overlapping subnet, rm with members",
        async () => {
          await createOn(home, "lost", "nowhere", "10.252.0.50/24");
          const r = await run(home, ["start", "lost"]);
          assertEquals(r.code, 3, r.stderr);
          assertMatch(r.stderr.trim(), /^cove: no cove network named 'nowhere'/);
          assertEquals(r.stderr.trim().split("\n").length, 1);
          await run(home, ["delete", "lost", "--force"]);
          const o = await run(home, ["network", "create", "dup", "--subnet", "10.252.0.128/25"]);
          assertEquals(o.code, 2, o.stderr);
          assertMatch(o.stderr, /overlaps cove network 'lab'/);
          const rm = await run(home, ["network", "rm", "lab"]);
          assertEquals(rm.code, 4, rm.stderr);
          assertMatch(rm.stderr, /still has members: a, b/);
        },
      );

      for (const vm of ["a", "b", "c"]) {
        const s = await run(home, ["start", vm]);
        assertEquals(s.code, 0, s.stderr);
      }
      for (const vm of ["a", "b", "c"]) {
        await waitForConsole(home, vm, READY_MARKER, BOOT_TIMEOUT_MS);
      }

      await t.step("each VM got its address from the network's subnet", async () => {
        const ls = JSON.parse((await run(home, ["network", "ls", "--format", "json"])).stdout) as {
          name: string;
          members: string[];
          addresses: Record<string, string>;
        }[];
        const l = ls.find((n) => n.name === "lab")!;
        assertEquals(l.members, ["a", "b"]);
        assertEquals(l.addresses, { a: "10.252.0.2", b: "10.252.0.3" });
      });

      await t.step("the two members ping each other", async () => {
        // The first lines typed after boot: typeUntil types again if the shell was not reading yet.
        await typeUntil(
          home,
          "a",
          "ping -c 3 -W 3 10.252.0.3 >/dev/null && echo PING-OK-$((40+2))",
          "PING-OK-42",
        );
        await typeUntil(
          home,
          "b",
          "ping -c 3 -W 3 10.252.0.2 >/dev/null && echo PING-OK-$((40+2))",
          "PING-OK-42",
        );
      });

      await t.step("a file served by one member arrives intact at the other", async () => {
        await typeInto(
          home,
          "a",
          "dd if=/dev/urandom of=/www/f bs=1k count=512 2>/dev/null; echo A-SUM $(sha256sum < /www/f)",
        );
        const logA = await waitForConsole(home, "a", "A-SUM ", 60_000).then(async () => {
          let text = "";
          const end = Date.now() + 30_000;
          while (!/A-SUM [0-9a-f]{64}/.test(text) && Date.now() < end) {
            text = await consoleLog(home, "a");
            await new Promise((r) => setTimeout(r, 200));
          }
          return text;
        });
        sumA = /A-SUM ([0-9a-f]{64})/.exec(logA)?.[1];
        assert(sumA, "a printed the file's checksum");
        await typeInto(
          home,
          "b",
          "wget -q -O /tmp/f http://10.252.0.2:8080/f && echo B-SUM $(sha256sum < /tmp/f)",
        );
        let logB = "";
        const end = Date.now() + 90_000;
        while (!/B-SUM [0-9a-f]{64}/.test(logB) && Date.now() < end) {
          logB = await consoleLog(home, "b");
          await new Promise((r) => setTimeout(r, 200));
        }
        assertEquals(/B-SUM ([0-9a-f]{64})/.exec(logB)?.[1], sumA);
      });

      await t.step(
        "a forward on a cove network NIC serves the guest's port on 127.0.0.1, through the NIC's private forward NIC",
        async () => {
          const port = JSON.parse((await run(home, ["port", "a", "--format", "json"])).stdout) as {
            host: number;
            guest: number;
            via: string;
          }[];
          assertEquals(
            port.filter((p) => p.guest === 8080).map((p) => [p.host, p.via]),
            [[hostPort, "engine"]],
          );
          // cove's own SSH forward rides on the same NIC: cove ip (ssh, exec) answers with it.
          const ssh = port.filter((p) => p.guest === 22);
          assertEquals(ssh.length, 1, JSON.stringify(port));
          const ip = await run(home, ["ip", "a", "--format", "json"]);
          assertEquals(ip.code, 0, ip.stderr);
          assertEquals(JSON.parse(ip.stdout), {
            name: "a",
            host: "127.0.0.1",
            port: ssh[0].host,
            via: "port-forward",
            mode: "network",
          });
          // The tiny guest has no cloud-init: give the forward NIC (eth1) the address the seed would.
          await typeInto(
            home,
            "a",
            "ip link set eth1 up && ip addr add 10.0.200.15/24 dev eth1 && echo FWD-UP-$((40+2))",
          );
          await waitForConsole(home, "a", "FWD-UP-42", 60_000);
          let body: Uint8Array<ArrayBuffer> | undefined;
          const end = Date.now() + 60_000;
          while (!body && Date.now() < end) {
            try {
              const r = await fetch(`http://127.0.0.1:${hostPort}/f`);
              if (r.ok) body = new Uint8Array(await r.arrayBuffer());
              else await r.body?.cancel();
            } catch { /* not up yet */ }
            if (!body) await new Promise((r) => setTimeout(r, 500));
          }
          assert(body, `nothing answered on 127.0.0.1:${hostPort}`);
          const sum = Array.from(
            new Uint8Array(await crypto.subtle.digest("SHA-256", body)),
            (b) => b.toString(16).padStart(2, "0"),
          ).join("");
          assertEquals(sum, sumA, "the host got the file the guest serves");
        },
      );

      await t.step("a VM that is not a member cannot reach them", async () => {
        await typeInto(
          home,
          "c",
          "ping -c 3 -W 2 10.252.0.2 >/dev/null && echo REACHED-$((40+2)) || echo UNREACHED-$((40+2))",
        );
        const log = await waitForConsole(home, "c", "ED-42", 60_000);
        assert(log.includes("UNREACHED-42"), "c must not reach a");
        assert(!log.includes("REACHED-42\n") || log.includes("UNREACHED-42"));
      });
    } finally {
      for (const vm of ["a", "b", "c"]) await run(home, ["stop", vm, "--force"]).catch(() => {});
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
