import { assert, assertCoveError, assertEquals, assertRejects } from "../helpers/assert.ts";
import {
  arpIpFor,
  leaseIpFor,
  normaliseMac,
  parseArp,
  parseLeases,
} from "../../core/access/leases.ts";
import { findForward, guestAddress } from "../../core/access/address.ts";
import { shellQuote, sshArgs } from "../../core/access/ssh.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Bundle } from "../../core/store/bundle.ts";
import { CoveError } from "../../core/errors.ts";

const HOST = { os: "linux" as const, arch: "x86_64" as const, cpus: 2, memory: 8 * 2 ** 30 };
const hex = (d: Date) => `0x${Math.floor(d.getTime() / 1000).toString(16)}`;
const NOW = Date.parse("2026-06-01T12:00:00Z");

function leaseFile(entries: { name: string; ip: string; mac: string; expires: number }[]): string {
  return entries.map((e) =>
    `{\n\tname=${e.name}\n\tip_address=${e.ip}\n\thw_address=1,${e.mac}\n\tidentifier=1,${e.mac}\n\tlease=${
      hex(new Date(e.expires))
    }\n}\n`
  ).join("");
}

Deno.test("MACs are normalised the way bootpd writes them (no leading zeros)", () => {
  assertEquals(normaliseMac("52:54:00:0A:0b:c0"), "52:54:0:a:b:c0");
  assertEquals(normaliseMac("02:00:00:00:00:01"), "2:0:0:0:0:1");
  assertEquals(normaliseMac("2:0:0:0:0:1"), "2:0:0:0:0:1");
});

Deno.test("the lease file is matched by MAC, newest unexpired lease first", () => {
  const text = leaseFile([
    { name: "old", ip: "192.168.64.2", mac: "52:54:0:a:b:c", expires: NOW - 3600_000 },
    { name: "dev", ip: "192.168.64.5", mac: "52:54:0:a:b:c", expires: NOW + 600_000 },
    { name: "dev", ip: "192.168.64.7", mac: "52:54:0:a:b:c", expires: NOW + 1800_000 },
    { name: "other", ip: "192.168.64.9", mac: "52:54:0:1:2:3", expires: NOW + 9999_000 },
  ]);
  const leases = parseLeases(text);
  assertEquals(leases.length, 4);
  assertEquals(leases[1], {
    name: "dev",
    ip: "192.168.64.5",
    mac: "52:54:0:a:b:c",
    expires: Math.floor((NOW + 600_000) / 1000) * 1000,
  });
  assertEquals(leaseIpFor(leases, "52:54:00:0A:0B:0C", NOW), "192.168.64.7");
  assertEquals(leaseIpFor(leases, "52:54:00:0a:0b:0c", NOW + 3600_000), undefined, "all expired");
  assertEquals(leaseIpFor(leases, "52:54:00:99:99:99", NOW), undefined);
});

Deno.test("malformed lease blocks are skipped, not fatal", () => {
  const text =
    "{\n\tname=x\n}\n{\n\tip_address=10.0.0.1\n\thw_address=1,zz:zz\n\tlease=0x1\n}\ngarbage" +
    leaseFile([{
      name: "ok",
      ip: "192.168.64.3",
      mac: "aa:bb:cc:dd:ee:ff",
      expires: NOW + 1000_000,
    }]);
  assertEquals(parseLeases(text).map((l) => l.ip), ["192.168.64.3"]);
});

Deno.test("arp -an output from macOS and Linux is parsed and matched by MAC", () => {
  const mac = "? (192.168.64.3) at 52:54:0:a:b:c on bridge100 ifscope [bridge]\n" +
    "? (192.168.64.1) at (incomplete) on bridge100 ifscope [bridge]\n";
  const linux = "? (10.0.2.2) at 52:55:0a:00:02:02 [ether] on eth0\n";
  assertEquals(parseArp(mac), [{ ip: "192.168.64.3", mac: "52:54:0:a:b:c", iface: "bridge100" }]);
  assertEquals(arpIpFor(parseArp(mac + linux), "52:54:00:0a:0b:0c"), "192.168.64.3");
  assertEquals(arpIpFor(parseArp(linux), "52:55:0a:00:02:02"), "10.0.2.2");
});

Deno.test("the ssh forward is found in a supervisor status", () => {
  const status = {
    engine: "qemu",
    info: {
      forwards: [{ protocol: "tcp", address: "127.0.0.1", host: 8080, guest: 80 }, {
        protocol: "tcp",
        address: "127.0.0.1",
        host: 40022,
        guest: 22,
      }],
    },
  };
  assertEquals(findForward(status, 22), { address: "127.0.0.1", host: 40022 });
  assertEquals(findForward(status, 2222), undefined);
  assertEquals(findForward({ forwards: [{ protocol: "udp", host: 1, guest: 22 }] }, 22), undefined);
});

async function withBundle(fn: (b: Bundle) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cove-access-" });
  try {
    await fn(new Bundle("dev", dir));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function spec(yaml: string) {
  return applyDefaults(parseSpec(yaml, "t.yaml"), HOST, "dev");
}

Deno.test("ip/ssh to a stopped VM is one clear line", async () => {
  await withBundle(async (b) => {
    const err = await assertCoveError(() => guestAddress(b, spec("")));
    assertEquals(err.code, "vm.not_running");
    assertEquals(err.line(), "VM 'dev' is not running (start it with 'cove start dev')");
  });
});

Deno.test("a running VM without a network is one clear line", async () => {
  await withBundle(async (b) => {
    const lock = (await b.tryLock())!;
    // The lock is per open file description, so a second open in this process sees it held.
    try {
      const err = await assertRejects(
        () => guestAddress(b, spec("networks: [{ mode: none }]")),
        CoveError,
      );
      assertEquals(err.code, "vm.no_network");
      assert(err.message === "VM 'dev' has no network");
    } finally {
      lock.release();
    }
  });
});

Deno.test("vz NAT addresses come from the lease file, falling back to ARP; qemu from the forward", async () => {
  await withBundle(async (b) => {
    const lock = (await b.tryLock())!;
    try {
      const leases = `${b.dir}/leases`;
      await Deno.writeTextFile(
        leases,
        leaseFile([{
          name: "dev",
          ip: "192.168.64.5",
          mac: "52:54:0:a:b:c",
          expires: Date.now() + 600_000,
        }]),
      );
      const s = spec(`networks: [{ mode: nat, mac: "52:54:00:0a:0b:0c" }]`);
      const a = await guestAddress(b, s, {
        engine: "vz",
        leaseFile: leases,
        arp: () => Promise.resolve(""),
      });
      assertEquals(a, { host: "192.168.64.5", port: 22, via: "dhcp-lease", mode: "nat" });
      await Deno.writeTextFile(leases, "");
      const viaArp = await guestAddress(b, s, {
        engine: "vz",
        leaseFile: leases,
        arp: () =>
          Promise.resolve("? (192.168.64.8) at 52:54:0:a:b:c on bridge100 ifscope [bridge]\n"),
      });
      assertEquals(viaArp.host, "192.168.64.8");
      assertEquals(viaArp.via, "arp");
      const none = await assertRejects(
        () =>
          guestAddress(b, s, { engine: "vz", leaseFile: leases, arp: () => Promise.resolve("") }),
        CoveError,
      );
      assertEquals(none.code, "vm.no_address");

      const q = spec(`networks: [{ mode: user, mac: "52:54:00:0a:0b:0c" }]`);
      const status = () =>
        Promise.resolve({
          engine: "qemu",
          forwards: [{ protocol: "tcp", address: "127.0.0.1", host: 41234, guest: 22 }],
        });
      const fwd = await guestAddress(b, q, { status });
      assertEquals(fwd, { host: "127.0.0.1", port: 41234, via: "port-forward", mode: "user" });
      const noFwd = await assertRejects(
        () =>
          guestAddress(b, q, { status: () => Promise.resolve({ engine: "qemu", forwards: [] }) }),
        CoveError,
      );
      assertEquals(noFwd.code, "vm.no_ssh_forward");
    } finally {
      lock.release();
    }
  });
});

Deno.test("ssh arguments pin host keys per VM, use the spec's user, and quote the command", async () => {
  await withBundle(async (b) => {
    const s = spec(`provision: { user: alice }`);
    const args = await sshArgs(b, s, {
      host: "127.0.0.1",
      port: 40022,
      via: "port-forward",
      mode: "user",
    }, {
      command: ["echo", "a b", "it's"],
      tty: "never",
      home: b.dir,
    });
    assert(args.includes(`UserKnownHostsFile=${b.dir}/known_hosts`));
    assert(args.includes("HostKeyAlias=cove-dev"));
    assertEquals(args.slice(-3), ["alice@127.0.0.1", "--", `echo 'a b' 'it'\\''s'`]);
    assert(args.includes("-T") && args.includes("BatchMode=yes"));
    assertEquals(args[args.indexOf("-p") + 1], "40022");
    assertEquals(shellQuote("/etc/hostname"), "/etc/hostname");
  });
});

Deno.test("processes creating cove's SSH key at once end with one matching pair", async () => {
  const { ensureCoveKey } = await import("../../core/access/keys.ts");
  const home = await Deno.makeTempDir({ prefix: "cove-keys-" });
  try {
    const script = `import { ensureCoveKey } from ${
      JSON.stringify(new URL("../../core/access/keys.ts", import.meta.url).href)
    }; await ensureCoveKey(${JSON.stringify(home)});`;
    const runs = Array.from({ length: 3 }, () =>
      new Deno.Command(Deno.execPath(), {
        args: ["eval", "--config", new URL("../../deno.json", import.meta.url).pathname, script],
        stdout: "null",
        stderr: "piped",
      }).output());
    const [outs, k] = await Promise.all([Promise.all(runs), ensureCoveKey(home)]);
    for (const o of outs) assert(o.success, new TextDecoder().decode(o.stderr));
    const derived = await new Deno.Command("ssh-keygen", { args: ["-y", "-f", k.privateKey] })
      .output();
    assert(derived.success, "the private key is unreadable");
    const pub = (await Deno.readTextFile(k.publicKey)).trim().split(" ").slice(0, 2).join(" ");
    assertEquals(
      new TextDecoder().decode(derived.stdout).trim().split(" ").slice(0, 2).join(" "),
      pub,
    );
    const left = [...Deno.readDirSync(`${home}/ssh`)].map((e) => e.name).sort();
    assertEquals(left, [".lock", "id_ed25519", "id_ed25519.pub"]);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("the route to the guest is the engine's, resolved with the guest's arch: an x86_64 guest on an Apple silicon Mac goes through qemu's forward", async () => {
  await withBundle(async (b) => {
    const lock = (await b.tryLock())!;
    try {
      const mac = { os: "darwin", arch: "arm64", cpus: 8, memory: 16 * 2 ** 30 } as const;
      const status = () =>
        Promise.resolve({ forwards: [{ protocol: "tcp", host: 40022, guest: 22 }] });
      const x86 = spec(`arch: x86_64\nnetworks: [{ mode: nat, mac: "52:54:00:0a:0b:0c" }]`);
      assertEquals(await guestAddress(b, x86, { status, host: mac }), {
        host: "127.0.0.1",
        port: 40022,
        via: "port-forward",
        mode: "nat",
      });
      // An arm64 guest there is vz's: its NAT address, never a forward.
      const arm = spec(`arch: arm64\nnetworks: [{ mode: nat, mac: "52:54:00:0a:0b:0c" }]`);
      const err = await assertRejects(
        () => guestAddress(b, arm, { status, host: mac, arp: () => Promise.resolve("") }),
        CoveError,
      );
      assertEquals(err.code, "vm.no_address");
    } finally {
      lock.release();
    }
  });
});
