/**
 * The spec validator and the vz engine refuse, with one line each, what
 * Virtualization.framework would refuse later (or merge silently): virtiofs
 * tags of 36 bytes or more (VZVirtioFileSystemDeviceConfiguration.h: "less
 * than 36 bytes"), default tags taken from directory names included; two
 * shares with one tag or one automount name; and NVMe disks for macOS guests
 * (VZNVMExpressControllerDeviceConfiguration.h: generic platform only).
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../helpers/assert.ts";
import { CoveError } from "../../core/errors.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import type { HostInfo } from "../../engines/engine.ts";
import { buildVzConfig } from "../../engines/vz/config.ts";
import { preflight } from "../../engines/vz/preflight.ts";
import type { VzHostInfo } from "../../ffi/cove_vz_json.ts";

const LINUX = "os: linux\narch: arm64\n";

function refusedSpec(yaml: string, re: RegExp): void {
  const e = assertThrows(() => parseSpec(yaml), CoveError);
  assertMatch(e.message, re);
  for (const line of e.message.split("\n").slice(1)) {
    assert(!/^\s+at /.test(line), "no stack trace");
  }
}

Deno.test("a share tag of 36 bytes is refused; 35 is accepted", () => {
  const ok = "a".repeat(35);
  parseSpec(`${LINUX}shares: [{ path: /tmp/x, tag: ${ok} }]\n`);
  refusedSpec(
    `${LINUX}shares: [{ path: /tmp/x, tag: ${"a".repeat(36)} }]\n`,
    /shares\[0\]\.tag.*1 to 35 letters.*fewer than 36 bytes/,
  );
});

Deno.test("a default tag from a directory name obeys the same rule", () => {
  const long = "d".repeat(40);
  refusedSpec(
    `${LINUX}shares: [{ path: /srv/${long} }]\n`,
    new RegExp(
      `shares\\[0\\]\\.path.*directory name '${long}' is not a usable default tag.*set tag`,
    ),
  );
  refusedSpec(`${LINUX}shares: [{ path: "/srv/my files" }]\n`, /'my files' is not a usable/);
  // With its own tag the same directory is fine.
  parseSpec(`${LINUX}shares: [{ path: /srv/${long}, tag: data }]\n`);
});

Deno.test("two automount shares with one name are refused, not merged", () => {
  refusedSpec(
    "os: macos\nshares: [{ path: /a/docs, automount: true }, { path: /b/docs, automount: true }]\n",
    /shares\[1\]\.path.*shares\[0\] already has the automount name 'docs'/,
  );
  refusedSpec(
    `${LINUX}shares: [{ path: /a/x, tag: t }, { path: /b/y, tag: t }]\n`,
    /shares\[1\]\.tag.*shares\[0\] already has the tag 't'/,
  );
  // An automount name and a device tag live apart.
  const s = parseSpec(
    "os: macos\nshares: [{ path: /a/docs, automount: true }, { path: /b/docs }]\n",
  );
  assertEquals(s.shares.length, 2);
});

Deno.test("the engine's default tags are the ones the validator checked", () => {
  const host: HostInfo = {
    os: "darwin",
    arch: "arm64",
    cpus: 8,
    memory: 2 ** 34,
    macosVersion: "15.1",
  };
  const spec = applyDefaults(parseSpec(`${LINUX}shares: [{ path: /srv/data/ }]\n`), host, "t");
  const config = buildVzConfig(spec, {
    paths: {
      dir: "/b",
      consoleLog: "/b/c",
      runtimeDir: "/b/r",
      machine: "/b/m",
      savedState: "/b/s",
      auxStorage: "/b/aux",
      efiVars: "/b/efi",
      enginePid: "/b/pid",
    },
    auxiliaryStorage: "/b/aux",
    suspendable: false,
    macosVersion: "15.1.0",
  });
  assertEquals(config.directoryShares?.map((d) => d.tag), ["data"]);
});

Deno.test("an NVMe disk for a macOS guest is refused at pre-flight", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cove-vz-nvme-" });
  try {
    await Deno.writeFile(`${dir}/disk.img`, new Uint8Array(4096));
    const host: HostInfo = {
      os: "darwin",
      arch: "arm64",
      cpus: 8,
      memory: 2 ** 34,
      macosVersion: "15.1",
    };
    const vzHost: VzHostInfo = {
      supported: true,
      macosVersion: "15.1.0",
      machineModel: "Mac15,3",
      cpuCount: { min: 1, max: 8 },
      memorySize: { min: 128 * 2 ** 20, max: 12 * 2 ** 30 },
      nestedVirtualizationSupported: true,
      saveRestoreSupported: true,
      rosetta: "installed",
      entitlements: { virtualization: true, networking: false },
      bridgedInterfaces: [],
    };
    const paths = {
      dir,
      consoleLog: `${dir}/c`,
      runtimeDir: `${dir}/r`,
      machine: `${dir}/m`,
      savedState: `${dir}/s`,
      auxStorage: `${dir}/aux`,
      efiVars: `${dir}/efi`,
      enginePid: `${dir}/pid`,
    };
    const mac = applyDefaults(
      parseSpec("os: macos\ncpus: 4\nmemory: 8GiB\ndisks: [{ path: disk.img, bus: nvme }]\n"),
      host,
      "m",
    );
    const e = await assertRejects(() => preflight({ spec: mac, paths, host: vzHost }), CoveError);
    assertEquals(e.code, "vz.disk");
    assertMatch(e.message, /disks\[0\]: NVMe disks work only for Linux guests/);
    assertEquals(e.message.includes("\n"), false, "one line");
    const linux = applyDefaults(
      parseSpec(`${LINUX}disks: [{ path: disk.img, bus: nvme }]\n`),
      host,
      "l",
    );
    await preflight({ spec: linux, paths, host: vzHost });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("two NICs with one MAC are refused, whatever the case of its digits", () => {
  refusedSpec(
    `${LINUX}networks: [{ mode: nat, mac: "52:54:00:aa:bb:01" }, { mode: user, mac: "52:54:00:AA:BB:01" }]\n`,
    /networks\[1\]\.mac.*networks\[0\] already has the MAC 52:54:00:AA:BB:01; give one of them another/,
  );
});
