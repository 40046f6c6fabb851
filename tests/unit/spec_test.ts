/** The cove.yaml corpus: valid specs parse, invalid ones give exact one-line messages. */
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { parseSpec, SpecError } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { applyFlags } from "../../core/spec/compose.ts";
import { jsonSchema } from "../../core/spec/schema.ts";
import type { HostInfo } from "../../engines/engine.ts";

const linuxHost: HostInfo = { os: "linux", arch: "x86_64", cpus: 8, memory: 16 * 2 ** 30 };
const macHost: HostInfo = {
  os: "darwin",
  arch: "arm64",
  cpus: 10,
  memory: 32 * 2 ** 30,
  macosVersion: "15.1",
};

function errorOf(text: string): string {
  try {
    parseSpec(text, "cove.yaml");
  } catch (e) {
    if (e instanceof SpecError) return e.message;
    throw e;
  }
  throw new Error("expected the spec to be rejected");
}

/** What every parsed spec holds when the file does not say otherwise. */
const TOP_DEFAULTS = {
  engine: "auto",
  shares: [],
  rosetta: false,
  nested: false,
  audio: false,
  keyboard: "auto",
  pointing: "auto",
  clipboard: false,
  vsock: true,
  entropy: true,
  balloon: true,
};

/** [name, cove.yaml text, the parsed spec it must give]. */
const VALID: [string, string, Record<string, unknown>][] = [
  ["an empty file", "", TOP_DEFAULTS],
  [
    "a minimal linux spec",
    "os: linux\ncpus: 2\nmemory: 2GiB\n",
    { ...TOP_DEFAULTS, os: "linux", cpus: 2, memory: "2GiB" },
  ],
  [
    "a full linux kernel spec with every device",
    `os: linux
arch: arm64
engine: vz
cpus: 4
memory: 4096MiB
disks:
  - { path: disk.img, size: 64G, cache: cached, sync: fsync, bus: virtio }
  - { path: data.img, size: 1TiB, readOnly: true, bus: nvme }
  - { path: /tmp/installer.iso, media: cdrom, bus: usb }
boot: { loader: kernel, kernel: vmlinuz, initrd: initrd, cmdline: "console=hvc0" }
networks:
  - { mode: nat, mac: "52:54:00:12:34:56" }
  - { mode: bridged, interface: en0 }
  - { mode: user, forwards: [{ host: 2222, guest: 22 }, { host: 8080, guest: 80, protocol: udp }] }
shares:
  - { path: /Users/me/src, tag: src, readOnly: true, mountPoint: /mnt/src }
rosetta: true
nested: true
display: { width: 1280, height: 800, ppi: 110 }
audio: true
keyboard: usb
pointing: usb
clipboard: true
serial: { mode: pty }
vsock: true
entropy: true
balloon: true
provision: { user: dev, sshKeys: ["ssh-ed25519 AAAA me"], hostname: box, commands: ["echo hi"] }
qemu: { accel: tcg, args: ["-no-reboot"] }
`,
    {
      os: "linux",
      arch: "arm64",
      engine: "vz",
      cpus: 4,
      memory: "4096MiB",
      disks: [
        {
          path: "disk.img",
          size: "64G",
          format: "raw",
          media: "disk",
          readOnly: false,
          cache: "cached",
          sync: "fsync",
          bus: "virtio",
        },
        {
          path: "data.img",
          size: "1TiB",
          format: "raw",
          media: "disk",
          readOnly: true,
          cache: "auto",
          sync: "full",
          bus: "nvme",
        },
        {
          path: "/tmp/installer.iso",
          format: "raw",
          media: "cdrom",
          readOnly: false,
          cache: "auto",
          sync: "full",
          bus: "usb",
        },
      ],
      boot: { loader: "kernel", kernel: "vmlinuz", initrd: "initrd", cmdline: "console=hvc0" },
      networks: [
        { mode: "nat", mac: "52:54:00:12:34:56", forwards: [] },
        { mode: "bridged", interface: "en0", forwards: [] },
        {
          mode: "user",
          forwards: [
            { host: 2222, guest: 22, protocol: "tcp", address: "127.0.0.1" },
            { host: 8080, guest: 80, protocol: "udp", address: "127.0.0.1" },
          ],
        },
      ],
      shares: [
        {
          path: "/Users/me/src",
          tag: "src",
          readOnly: true,
          mountPoint: "/mnt/src",
          automount: false,
        },
      ],
      rosetta: true,
      nested: true,
      display: { width: 1280, height: 800, ppi: 110 },
      audio: true,
      keyboard: "usb",
      pointing: "usb",
      clipboard: true,
      serial: { mode: "pty" },
      vsock: true,
      entropy: true,
      balloon: true,
      provision: {
        user: "dev",
        sshKeys: ["ssh-ed25519 AAAA me"],
        hostname: "box",
        commands: ["echo hi"],
        sshPort: 22,
        autoLogin: false,
        ssh: true,
      },
      qemu: { accel: "tcg", args: ["-no-reboot"] },
    },
  ],
  [
    "a macOS spec",
    "os: macos\ndisplay: { width: 1920, height: 1080 }\nshares: [{ path: /tmp, automount: true }]\n",
    {
      ...TOP_DEFAULTS,
      os: "macos",
      display: { width: 1920, height: 1080, ppi: 144 },
      shares: [{ path: "/tmp", readOnly: false, automount: true }],
    },
  ],
  ["display none", "display: none\n", { ...TOP_DEFAULTS, display: "none" }],
];

for (const [name, text, want] of VALID) {
  Deno.test(`spec: ${name} parses to the expected values, defaults filled in`, () => {
    assertEquals({ ...parseSpec(text, "cove.yaml") }, want);
  });
}

const INVALID: [string, string, string][] = [
  ["a YAML syntax error", "cpus: [1, 2\n", "cove.yaml:2:1: YAML syntax error: "],
  [
    "an unknown top-level key",
    "cpus: 2\ncolour: blue\n",
    "cove.yaml:2:9: colour: unknown key 'colour'; allowed: os, arch, engine, cpus, memory, disks, boot, networks, shares, rosetta, nested, display, audio, keyboard, pointing, clipboard, serial, vsock, entropy, balloon, agent, provision, qemu",
  ],
  ["cpus 0", "cpus: 0\n", "cove.yaml:1:7: cpus: got 0, expected at least 1"],
  ["cpus as text", "cpus: many\n", "cove.yaml:1:7: cpus: got a string 'many', expected an integer"],
  [
    "memory lots",
    "memory: lots\n",
    "cove.yaml:1:9: memory: got 'lots', expected a size such as 512MiB, 4GiB or 64G",
  ],
  ["an unknown os", "os: windows\n", "cove.yaml:1:5: os: got 'windows', allowed: macos, linux"],
  [
    "a bad disk bus",
    "disks:\n  - path: disk.img\n    bus: scsi\n",
    "cove.yaml:3:10: disks[0].bus: got 'scsi', allowed: virtio, nvme, usb",
  ],
  [
    "an unknown disk key",
    "disks:\n  - path: disk.img\n    sise: 4GiB\n",
    "cove.yaml:3:11: disks[0].sise: unknown key 'sise'; allowed: path, size, format, media, readOnly, cache, sync, bus",
  ],
  [
    "a disk without a path",
    "disks:\n  - size: 4GiB\n",
    "cove.yaml:2:5: disks[0].path: is required (a string)",
  ],
  [
    "a bad MAC address",
    "networks:\n  - mode: nat\n    mac: 52:54\n",
    "cove.yaml:3:10: networks[0].mac: got '52:54', expected a MAC address like 52:54:00:12:34:56",
  ],
  [
    "a port out of range",
    "networks:\n  - mode: user\n    forwards: [{ host: 70000, guest: 22 }]\n",
    "cove.yaml:3:24: networks[0].forwards[0].host: got 70000, expected at most 65535",
  ],
  [
    "a bad display",
    "display: huge\n",
    "cove.yaml:1:10: display: got 'huge', expected 'none' or a mapping with width, height and ppi",
  ],
  [
    "rosetta as a string",
    "rosetta: yes please\n",
    "cove.yaml:1:10: rosetta: got a string 'yes please', expected true or false",
  ],
  ["a list at the top", "- a\n- b\n", "cove.yaml:1:1: got a list, expected a mapping"],
];

for (const [name, text, expected] of INVALID) {
  Deno.test(`spec: ${name} is rejected with a positioned message`, () => {
    const msg = errorOf(text);
    if (expected.endsWith(": ")) {
      assertMatch(msg, new RegExp("^" + expected.replace(/[[\]().]/g, "\\$&")));
    } else assertEquals(msg, expected);
  });
}

Deno.test("spec: several problems are all reported on one line", () => {
  const msg = errorOf("cpus: 0\nmemory: lots\n");
  assertEquals(msg.includes("\n"), false);
  assertMatch(msg, /cpus: got 0.*; cove\.yaml:2:9: memory: got 'lots'/);
});

Deno.test("spec: linux defaults follow the host and stay within it", () => {
  const s = applyDefaults(parseSpec(""), linuxHost, "dev");
  assertEquals([s.os, s.arch, s.cpus, s.memory], ["linux", "x86_64", 2, "2GiB"]);
  assertEquals(s.boot, { loader: "efi", variableStore: "efi-vars.fd" });
  assertEquals(s.display, "none");
  assertEquals(s.disks[0].size, "16GiB");
  assertEquals(s.provision.hostname, "dev");
  const small = applyDefaults(parseSpec(""), { ...linuxHost, cpus: 1, memory: 2 * 2 ** 30 }, "x");
  assertEquals([small.cpus, small.memory], [1, "1GiB"]);
});

Deno.test("spec: macOS defaults are arm64, Mac boot loader, a display and a 64GiB disk", () => {
  const s = applyDefaults(parseSpec("os: macos\n"), macHost, "mac");
  assertEquals([s.arch, s.cpus, s.memory, s.boot.loader], ["arm64", 4, "8GiB", "macos"]);
  assertEquals(s.display, { width: 1920, height: 1200, ppi: 144 });
  assertEquals(s.disks[0].size, "64GiB");
  assertEquals(s.provision.user, "admin");
});

Deno.test("spec: an x86_64 macOS guest is refused", () => {
  let msg = "";
  try {
    applyDefaults(parseSpec("os: macos\narch: x86_64\n"), macHost, "m");
  } catch (e) {
    msg = (e as Error).message;
  }
  assertEquals(msg, "arch: macOS guests are arm64 only");
});

Deno.test("spec: command-line flags are validated and named in errors", () => {
  let msg = "";
  try {
    applyFlags(parseSpec(""), { cpus: "0" });
  } catch (e) {
    msg = (e as Error).message;
  }
  assertEquals(msg, "--cpus: 0 is less than 1");
  const s = applyFlags(parseSpec("cpus: 1\n"), {
    cpus: "3",
    memory: "3GiB",
    diskSize: "20G",
    display: "1024x768@96",
  });
  assertEquals([s.cpus, s.memory, s.disks?.[0].size], [3, "3GiB", "20G"]);
  assertEquals(s.display, { width: 1024, height: 768, ppi: 96 });
});

Deno.test("spec: the JSON Schema describes every top-level key and forbids others", () => {
  const schema = jsonSchema() as {
    properties: Record<string, unknown>;
    additionalProperties: boolean;
  };
  assertEquals(Object.keys(schema.properties).length, 23);
  assertEquals(schema.additionalProperties, false);
});
