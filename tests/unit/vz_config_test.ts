/**
 * Golden tests: a cove spec (YAML, as a user writes it) turned into the
 * libcove_vz configuration JSON, for a macOS guest, a Linux EFI guest and a
 * Linux kernel guest with every device on. Run with UPDATE_GOLDEN=1 to
 * rewrite the files under tests/unit/golden/ after an intended change.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import type { HostInfo, VmPaths } from "../../engines/engine.ts";
import { buildVzConfig, type VzConfigContext, wantsSuspendable } from "../../engines/vz/config.ts";
import { Bundle } from "../../core/store/bundle.ts";

const host: HostInfo = {
  os: "darwin",
  arch: "arm64",
  cpus: 10,
  memory: 32 * 2 ** 30,
  macosVersion: "15.1",
};
const golden = new URL("./golden/", import.meta.url).pathname;

function paths(name: string): VmPaths {
  const dir = `/Users/dev/.cove/vms/${name}`;
  return new Bundle("t", dir).vmPaths();
}

function spec(yaml: string, name: string): VmSpec {
  return applyDefaults(parseSpec(yaml, `${name}.yaml`), host, name);
}

function ctx(name: string, extra: Partial<VzConfigContext> = {}): VzConfigContext {
  return {
    paths: paths(name),
    machineIdentifier: "bWFjaGluZS1pZGVudGlmaWVy",
    auxiliaryStorage: paths(name).auxStorage,
    serial: { readFd: 100, writeFd: 101 },
    agent: { readFd: 102, writeFd: 103 },
    suspendable: false,
    macosVersion: "15.1.0",
    ...extra,
  };
}

async function matchesGolden(file: string, actual: unknown): Promise<void> {
  const path = `${golden}${file}`;
  const text = JSON.stringify(actual, null, 2) + "\n";
  if (Deno.env.get("UPDATE_GOLDEN") === "1") await Deno.writeTextFile(path, text);
  let expected: string;
  try {
    expected = await Deno.readTextFile(path);
  } catch {
    throw new Error(`golden file ${file} is missing; run with UPDATE_GOLDEN=1 to create it`);
  }
  assertEquals(JSON.parse(text), JSON.parse(expected));
}

const MACOS = `
os: macos
cpus: 6
memory: 12GiB
disks:
  - path: disk.img
    size: 80GiB
  - path: /Volumes/Fast/scratch.img
    bus: nvme
    cache: uncached
    sync: fsync
networks:
  - mode: nat
    mac: 52:54:00:AA:BB:01
  - mode: bridged
    interface: en0
    mac: 52:54:00:aa:bb:02
shares:
  - path: /Users/dev/src
    automount: true
  - path: /Users/dev/Downloads
    tag: downloads
    readOnly: true
    automount: true
  - path: /Users/dev/tools
    tag: tools
display: { width: 2560, height: 1600, ppi: 220 }
audio: true
clipboard: true
vsock: true
entropy: true
balloon: true
`;

const LINUX_EFI = `
os: linux
arch: arm64
cpus: 4
memory: 4GiB
boot:
  loader: efi
disks:
  - path: disk.img
  - path: /Users/dev/iso/debian-12-arm64-netinst.iso
    media: cdrom
  - path: data.img
    bus: nvme
    cache: cached
    sync: none
networks:
  - mode: nat
    mac: 52:54:00:12:34:56
shares:
  - path: /Users/dev/project
    tag: project
    mountPoint: /mnt/project
  - path: /Users/dev/readonly
    readOnly: true
rosetta: true
nested: true
display: { width: 1920, height: 1080 }
audio: true
clipboard: true
keyboard: usb
pointing: usb
`;

const LINUX_KERNEL = `
os: linux
arch: arm64
cpus: 2
memory: 2GiB
boot:
  loader: kernel
  kernel: Image
  initrd: /Users/dev/boot/initrd.img
  cmdline: console=hvc0 root=/dev/vda rw
disks:
  - path: rootfs.img
    readOnly: false
networks:
  - mode: nat
    mac: 52:54:00:00:00:07
shares:
  - path: /Users/dev/share
display: { width: 1280, height: 800 }
audio: true
clipboard: true
rosetta: true
`;

Deno.test("a macOS guest with every device maps to the golden VZ configuration", async () => {
  const s = spec(MACOS, "mac");
  const config = buildVzConfig(s, ctx("mac", { hardwareModel: "aGFyZHdhcmUtbW9kZWw=" }));
  await matchesGolden("vz_macos.json", config);
  assertEquals(config.platform.type, "mac");
  assertEquals(config.keyboards, ["usb", "mac"]);
  assertEquals(config.directoryShares?.[0].automount, true);
});

Deno.test("a Linux EFI guest with every device maps to the golden VZ configuration", async () => {
  const config = buildVzConfig(spec(LINUX_EFI, "deb"), ctx("deb"));
  await matchesGolden("vz_linux_efi.json", config);
  assertEquals(config.bootLoader, {
    type: "efi",
    variableStore: "/Users/dev/.cove/vms/deb/efi-vars.fd",
  });
  assertEquals(config.storage?.[1].type, "usb-mass-storage");
  assertEquals(config.storage?.[1].readOnly, true);
});

Deno.test("a Linux kernel guest with every device maps to the golden VZ configuration", async () => {
  const config = buildVzConfig(spec(LINUX_KERNEL, "tiny"), ctx("tiny"));
  await matchesGolden("vz_linux_kernel.json", config);
  assertEquals(config.bootLoader, {
    type: "linux",
    kernel: "/Users/dev/.cove/vms/tiny/Image",
    initialRamdisk: "/Users/dev/boot/initrd.img",
    commandLine: "console=hvc0 root=/dev/vda rw",
  });
});

Deno.test("a suspendable macOS VM keeps only devices VZ can save", () => {
  const s = spec(MACOS, "mac");
  assert(wantsSuspendable(s, "14.0.0"), "macOS guests on macOS 14 are suspendable");
  assert(!wantsSuspendable(s, "13.6.0"), "not before macOS 14");
  const config = buildVzConfig(s, ctx("mac", { suspendable: true }));
  assertEquals(config.keyboards, ["mac"]);
  assertEquals(config.pointingDevices, ["trackpad"]);
  assertEquals(config.entropy, false);
  assertEquals(config.audio, { input: false, output: true, noHostSink: true });
});

Deno.test("auto input devices follow the guest and the host's macOS", () => {
  const mac = spec(MACOS, "mac");
  assertEquals(buildVzConfig(mac, ctx("mac", { macosVersion: "13.6.1" })).keyboards, ["usb"]);
  const headless = spec("os: linux\narch: arm64\n", "h");
  const c = buildVzConfig(headless, ctx("h", { serial: undefined }));
  assertEquals([c.keyboards, c.pointingDevices, c.graphics, c.serialPorts], [[], [], null, []]);
  assertEquals(c.storage?.[0].caching, "cached", "Linux disks default to cached host caching");
});

Deno.test("the golden configurations use only fields the Swift decoder knows", async () => {
  const swift = await Deno.readTextFile(
    new URL("../../swift-shim/Sources/CoveVZ/ConfigJSON.swift", import.meta.url),
  );
  const known = new Set([...swift.matchAll(/^\s*var (\w+):/gm)].map((m) => m[1]));
  const keys = new Set<string>();
  const walk = (v: unknown, parent?: string) => {
    if (Array.isArray(v)) v.forEach((x) => walk(x, parent));
    else if (v && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) {
        if (parent !== "directories") keys.add(k); // directory names are the user's
        walk(x, k);
      }
    }
  };
  for (const f of ["vz_macos.json", "vz_linux_efi.json", "vz_linux_kernel.json"]) {
    walk(JSON.parse(await Deno.readTextFile(`${golden}${f}`)));
  }
  assertEquals([...keys].filter((k) => !known.has(k)), []);
});

Deno.test("a Linux guest's agent channel is a virtio console port named org.qemu.guest_agent.0; agent: false and macOS have none", () => {
  const linux = buildVzConfig(spec(LINUX_KERNEL, "tiny"), ctx("tiny"));
  assertEquals(linux.consolePorts, [{
    name: "org.qemu.guest_agent.0",
    isConsole: false,
    attachment: { type: "fileHandles", readFd: 102, writeFd: 103 },
  }]);
  const off = buildVzConfig(spec(LINUX_KERNEL + "agent: false\n", "tiny"), ctx("tiny"));
  assertEquals(off.consolePorts, []);
  assertEquals(buildVzConfig(spec(MACOS, "mac"), ctx("mac")).consolePorts, []);
});

Deno.test("a cove network maps to a vmnet attachment and a NAT NIC with forwards stays plain NAT (the supervisor proxies)", async () => {
  const s = spec(
    `os: linux
arch: arm64
boot: { loader: kernel, kernel: Image, cmdline: console=hvc0 }
disks:
  - path: rootfs.img
networks:
  - mode: nat
    mac: 52:54:00:00:00:08
    forwards: [{ host: 8080, guest: 80 }]
  - mode: network
    network: lab
    mac: 52:54:00:00:00:09
`,
    "netvm",
  );
  const config = buildVzConfig(s, {
    ...ctx("netvm"),
    networks: [undefined, { subnet: "10.250.1.0/24", mode: "shared" }],
  });
  await matchesGolden("vz_linux_network.json", { network: config.network });
  assertEquals(config.network?.[0].attachment, { type: "nat" });
  assertEquals(config.network?.[1].attachment, {
    type: "vmnet",
    mode: "shared",
    subnet: "10.250.1.0/24",
  });
});
