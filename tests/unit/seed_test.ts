import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { parse } from "yaml";
import { buildIso9660 } from "../../core/provision/iso9660.ts";
import {
  AGENT_INSTALL,
  attachSeedDisk,
  ensureSeed,
  renderSeed,
  SEED_DISK,
  seedIso,
} from "../../core/provision/seed.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { parseSpec } from "../../core/spec/load.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import { CoveError } from "../../core/errors.ts";
import { coveKeyPaths } from "../../core/access/keys.ts";

const HOST = { os: "linux" as const, arch: "x86_64" as const, cpus: 2, memory: 8 * 2 ** 30 };

function spec(yaml: string, name = "dev"): VmSpec {
  return applyDefaults(parseSpec(yaml, "test.yaml"), HOST, name);
}

async function isoinfo(args: string[]): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("isoinfo", { args, stdout: "piped", stderr: "piped" }).output();
  } catch {
    throw new Error("isoinfo is missing: install genisoimage (listed in .ci/apt-packages.txt)");
  }
  if (!out.success) {
    throw new Error(`isoinfo ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

async function withIso<T>(bytes: Uint8Array, fn: (path: string) => Promise<T>): Promise<T> {
  const path = await Deno.makeTempFile({ suffix: ".iso" });
  try {
    await Deno.writeFile(path, bytes);
    return await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("the ISO 9660 writer makes a cidata volume that isoinfo lists with Joliet and Rock Ridge names", async () => {
  const enc = new TextEncoder();
  const big = new Uint8Array(5000).map((_, i) => i % 251);
  const files = [
    { name: "user-data", data: enc.encode("#cloud-config\nhostname: dev\n") },
    { name: "meta-data", data: enc.encode("instance-id: x\n") },
    { name: "network-config", data: big },
    { name: "empty-file", data: new Uint8Array() },
  ];
  await withIso(buildIso9660({ volumeId: "cidata", files }), async (iso) => {
    const d = await isoinfo(["-d", "-i", iso]);
    assertMatch(d, /^Volume id: cidata$/m);
    assertMatch(d, /Joliet with UCS level 3 found/);
    assertMatch(d, /Rock Ridge signatures version 1 found/);
    assertEquals((await isoinfo(["-J", "-f", "-i", iso])).trim().split("\n").sort(), [
      "/empty-file",
      "/meta-data",
      "/network-config",
      "/user-data",
    ]);
    const rr = await isoinfo(["-R", "-l", "-i", iso]);
    for (const f of files) {
      assertMatch(rr, new RegExp(`-r--r--r--.* ${f.data.length} .* ${f.name} ?$`, "m"));
    }
    for (const f of files) {
      for (const mode of ["-J", "-R"]) {
        const out = await new Deno.Command("isoinfo", {
          args: [mode, "-x", `/${f.name}`, "-i", iso],
          stdout: "piped",
        })
          .output();
        assertEquals(out.stdout, f.data, `${mode} round trip of ${f.name}`);
      }
    }
    // The primary (8.3) names stay valid ISO 9660 level 1.
    assertEquals((await isoinfo(["-f", "-i", iso])).trim().split("\n").sort(), [
      "/EMPTY_FI.;1",
      "/META_DAT.;1",
      "/NETWORK_.;1",
      "/USER_DAT.;1",
    ]);
  });
});

Deno.test("the ISO writer spreads a directory over several sectors and keeps 8.3 names unique", async () => {
  const files = Array.from({ length: 40 }, (_, i) => ({
    name: `some-long-file-name-${String(i).padStart(2, "0")}`,
    data: new TextEncoder().encode(`file ${i}\n`),
  }));
  await withIso(buildIso9660({ volumeId: "cidata", files }), async (iso) => {
    const joliet = (await isoinfo(["-J", "-f", "-i", iso])).trim().split("\n");
    assertEquals(joliet.length, 40);
    const primary = new Set((await isoinfo(["-f", "-i", iso])).trim().split("\n"));
    assertEquals(primary.size, 40);
    const out = await new Deno.Command("isoinfo", {
      args: ["-R", "-x", "/some-long-file-name-39", "-i", iso],
      stdout: "piped",
    }).output();
    assertEquals(new TextDecoder().decode(out.stdout), "file 39\n");
  });
});

Deno.test("user-data has the user with sudo and keys, the hostname, share mounts and extra commands", async () => {
  const s = spec(`
networks: [{ mode: user, mac: "52:54:00:AB:00:01" }]
shares:
  - { path: /srv/project, mountPoint: /home/cove/project }
  - { path: /srv/data, tag: data, readOnly: true, mountPoint: /data }
  - { path: /srv/unmounted }
provision:
  user: alice
  sshKeys: ["ssh-ed25519 AAAAC3Nza alice@laptop"]
  commands: ["echo hello > /etc/motd"]
`);
  const seed = await renderSeed(s);
  assert(seed.userData.startsWith("#cloud-config\n"));
  const ud = parse(seed.userData) as Record<string, unknown>;
  assertEquals(ud.hostname, "dev");
  const user = (ud.users as Record<string, unknown>[])[0];
  assertEquals(user.name, "alice");
  assertEquals(user.sudo, "ALL=(ALL) NOPASSWD:ALL");
  assertEquals(user.ssh_authorized_keys, ["ssh-ed25519 AAAAC3Nza alice@laptop"]);
  const script =
    ((ud.write_files as Record<string, string>[]).find((f) =>
      f.path === "/usr/local/sbin/cove-mounts"
    ))!;
  assertMatch(script.content, /^share 'project' '\/home\/cove\/project' rw$/m);
  assertMatch(script.content, /^share 'data' '\/data' ro$/m);
  assert(!script.content.includes("unmounted"));
  assertEquals(ud.runcmd, [["sh", "-c", AGENT_INSTALL], ["/usr/local/sbin/cove-mounts"], [
    "sh",
    "-c",
    "echo hello > /etc/motd",
  ]]);
  const md = parse(seed.metaData) as Record<string, string>;
  assertEquals(md["instance-id"], seed.instanceId);
  assertEquals(md["local-hostname"], "dev");
  // cloud-init parses YAML 1.1, where an unquoted MAC is a base-60 number.
  const nc11 = parse(seed.networkConfig!, { version: "1.1" }) as {
    ethernets: Record<string, { match: unknown }>;
  };
  assertEquals(nc11.ethernets.eth0.match, { macaddress: "52:54:00:ab:00:01" });
  const nc = parse(seed.networkConfig!) as {
    version: number;
    ethernets: Record<string, Record<string, unknown>>;
  };
  assertEquals(nc.version, 2);
  assertEquals(nc.ethernets.eth0.match, { macaddress: "52:54:00:ab:00:01" });
  assertEquals(nc.ethernets.eth0.dhcp4, true);
});

Deno.test("the instance id is stable for the same spec and changes when the spec changes", async () => {
  const base =
    `networks: [{ mode: nat, mac: "52:54:00:00:00:02" }]\nprovision: { sshKeys: ["ssh-ed25519 AAAA k"] }\n`;
  const a = await renderSeed(spec(base));
  const b = await renderSeed(spec(base));
  assertEquals(a.instanceId, b.instanceId);
  const c = await renderSeed(spec(base + "shares: [{ path: /x, mountPoint: /mnt/x }]\n"));
  assert(c.instanceId !== a.instanceId);
  const d = await renderSeed(spec(base, "other-name"));
  assert(d.instanceId !== a.instanceId, "the hostname is part of the seed");
});

Deno.test("a mount point with spaces is refused with one line", async () => {
  const err = await assertRejects(
    () =>
      renderSeed(
        spec(`shares: [{ path: /x, mountPoint: "/mnt/my share" }]\nprovision: { sshKeys: [k] }\n`),
      ),
    CoveError,
  );
  assertEquals(err.code, "spec.invalid");
  assertMatch(err.message, /^shares\[0\]\.mountPoint: /);
});

Deno.test("ensureSeed writes cidata.iso with cove's generated key, and rewrites it only when the spec changes", async () => {
  const home = await Deno.makeTempDir({ prefix: "cove-seed-" });
  const prev = Deno.env.get("COVE_HOME");
  Deno.env.set("COVE_HOME", home);
  try {
    const bundle = `${home}/vms/dev`;
    await Deno.mkdir(bundle, { recursive: true });
    const s = attachSeedDisk(spec(`networks: [{ mode: nat, mac: "52:54:00:00:00:03" }]\n`));
    assertEquals(s.disks.at(-1), {
      path: SEED_DISK,
      format: "raw",
      media: "disk",
      readOnly: true,
      cache: "auto",
      sync: "full",
      bus: "virtio",
    });
    assertEquals(attachSeedDisk(s).disks.length, s.disks.length, "attached once");
    const first = await ensureSeed(bundle, s);
    assertEquals(first.written, true);
    const pub = (await Deno.readTextFile(coveKeyPaths(home).publicKey)).trim();
    assertMatch(pub, /^ssh-ed25519 /);
    assertEquals((await Deno.stat(coveKeyPaths(home).privateKey)).mode! & 0o777, 0o600);
    const iso = `${bundle}/${SEED_DISK}`;
    assertMatch(await isoinfo(["-d", "-i", iso]), /^Volume id: cidata$/m);
    const ud = await new Deno.Command("isoinfo", {
      args: ["-J", "-x", "/user-data", "-i", iso],
      stdout: "piped",
    })
      .output();
    assert(new TextDecoder().decode(ud.stdout).includes(pub), "cove's key is in user-data");

    const again = await ensureSeed(bundle, s);
    assertEquals(again.written, false);
    assertEquals(again.instanceId, first.instanceId);

    const changed = { ...s, provision: { ...s.provision, commands: ["true"] } };
    const third = await ensureSeed(bundle, changed);
    assertEquals(third.written, true);
    assert(third.instanceId !== first.instanceId);
    const md = await new Deno.Command("isoinfo", {
      args: ["-J", "-x", "/meta-data", "-i", iso],
      stdout: "piped",
    })
      .output();
    assert(new TextDecoder().decode(md.stdout).includes(third.instanceId!));
  } finally {
    if (prev === undefined) Deno.env.delete("COVE_HOME");
    else Deno.env.set("COVE_HOME", prev);
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("the seed of a spec without MACs has no network-config (cloud-init falls back to DHCP)", async () => {
  const s = spec(`networks: [{ mode: none }]\nprovision: { sshKeys: [k] }\n`);
  const files = await renderSeed(s);
  assertEquals(files.networkConfig, undefined);
  await withIso(seedIso(files), async (iso) => {
    assertEquals((await isoinfo(["-J", "-f", "-i", iso])).trim().split("\n").sort(), [
      "/meta-data",
      "/user-data",
    ]);
  });
});

Deno.test("user-data installs and starts qemu-guest-agent when the spec has the agent, and not with agent: false", async () => {
  const on = parse((await renderSeed(spec(`networks: [{ mode: user }]\n`))).userData) as {
    runcmd?: string[][];
  };
  assertEquals(on.runcmd?.[0], ["sh", "-c", AGENT_INSTALL]);
  assertMatch(AGENT_INSTALL, /command -v qemu-ga .*apt-get install -y qemu-guest-agent/);
  const off = parse(
    (await renderSeed(spec(`agent: false\nnetworks: [{ mode: user }]\n`))).userData,
  ) as {
    runcmd?: string[][];
  };
  assertEquals(off.runcmd, undefined);
});

Deno.test("a NIC on a cove network gets the address the network handed out instead of DHCP", async () => {
  const s = spec(
    `networks:
  - { mode: nat, mac: "52:54:00:00:00:01" }
  - { mode: network, network: lab, mac: "52:54:00:00:00:02" }
provision: { sshKeys: [k] }
`,
  );
  const files = await renderSeed(s, { addresses: [undefined, "10.250.1.2/24"] });
  const nc = parse(files.networkConfig!) as {
    ethernets: Record<string, { dhcp4: boolean; addresses?: string[] }>;
  };
  assertEquals(nc.ethernets.eth0.dhcp4, true);
  assertEquals(
    nc.ethernets.eth1,
    {
      match: { macaddress: "52:54:00:00:00:02" },
      "set-name": "eth1",
      dhcp4: false,
      addresses: ["10.250.1.2/24"],
      dhcp6: false,
    } as unknown as (typeof nc.ethernets)["eth1"],
  );
});

Deno.test("a NIC the engine adds for forwards gets its static address and no route in network-config", async () => {
  const s = spec(
    `networks: [{ mode: network, network: lab, mac: "52:54:00:AB:00:09" }]\nprovision: { sshKeys: [k] }\n`,
  );
  const files = await renderSeed(s, {
    addresses: ["10.250.0.5/24"],
    forwardNics: [{ mac: "52:55:00:AB:00:09", address: "10.0.2.15/24" }],
  });
  const nc = parse(files.networkConfig!) as { ethernets: Record<string, Record<string, unknown>> };
  assertEquals(nc.ethernets.eth0.addresses, ["10.250.0.5/24"]);
  assertEquals(nc.ethernets.fwd0, {
    match: { macaddress: "52:55:00:ab:00:09" },
    "set-name": "fwd0",
    dhcp4: false,
    dhcp6: false,
    addresses: ["10.0.2.15/24"],
  });
  assert(!("gateway4" in nc.ethernets.fwd0) && !("routes" in nc.ethernets.fwd0));
});
