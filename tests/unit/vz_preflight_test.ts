/**
 * The vz engine's pre-flight checks, run against synthetic VZ host info and
 * files made by the test: each problem is refused with one clear line and a
 * stable code before any VZ call.
 */
import { assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { CoveError, ExitCode } from "../../core/errors.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import type { HostInfo, VmPaths } from "../../engines/engine.ts";
import type { VzHostInfo } from "../../ffi/cove_vz_json.ts";
import { diskFormat, kernelFormat, NESTED_DOC, preflight } from "../../engines/vz/preflight.ts";
import { Bundle } from "../../core/store/bundle.ts";

const macHost: HostInfo = {
  os: "darwin",
  arch: "arm64",
  cpus: 8,
  memory: 16 * 2 ** 30,
  macosVersion: "15.1",
};

function vzHost(over: Partial<VzHostInfo> = {}): VzHostInfo {
  return {
    supported: true,
    macosVersion: "15.1.0",
    machineModel: "Mac15,3",
    cpuCount: { min: 1, max: 8 },
    memorySize: { min: 128 * 2 ** 20, max: 12 * 2 ** 30 },
    nestedVirtualizationSupported: true,
    saveRestoreSupported: true,
    rosetta: "installed",
    entitlements: { virtualization: true, networking: false },
    bridgedInterfaces: [{ identifier: "en0", name: "Ethernet" }],
    ...over,
  };
}

/** A bundle directory with a raw disk, an arm64 Image, a gzip kernel and a qcow2 disk. */
async function bundle(): Promise<VmPaths> {
  const dir = await Deno.makeTempDir({ prefix: "cove-vz-preflight-" });
  await Deno.writeFile(`${dir}/disk.img`, new Uint8Array(4096));
  const image = new Uint8Array(128);
  image.set(new TextEncoder().encode("ARM\x64"), 0x38);
  await Deno.writeFile(`${dir}/Image`, image);
  await Deno.writeFile(`${dir}/vmlinuz`, new Uint8Array([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]));
  const zboot = new Uint8Array(128);
  zboot.set(new TextEncoder().encode("MZ\0\0zimg"), 0);
  await Deno.writeFile(`${dir}/vmlinuz.efi`, zboot);
  const qcow = new Uint8Array(128);
  qcow.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
  await Deno.writeFile(`${dir}/disk.qcow2`, qcow);
  await Deno.mkdir(`${dir}/share`);
  return new Bundle("t", dir).vmPaths();
}

function spec(yaml: string): VmSpec {
  return applyDefaults(parseSpec(yaml), macHost, "t");
}

const LINUX = "os: linux\narch: arm64\ncpus: 2\nmemory: 2GiB\n";

async function refused(
  yaml: string,
  host: VzHostInfo,
  code: string,
  re: RegExp,
  running?: number,
): Promise<CoveError> {
  const paths = await bundle();
  try {
    const err = await assertRejects(
      () => preflight({ spec: spec(yaml), paths, host, runningMacOSVms: running }),
      CoveError,
    );
    assertEquals(err.code, code);
    assertMatch(err.message, re);
    assertEquals(err.message.includes("\n"), false, "one line");
    return err;
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
}

Deno.test("a plain Linux spec on a capable Mac passes every check", async () => {
  const paths = await bundle();
  try {
    await preflight({ spec: spec(LINUX), paths, host: vzHost(), runningMacOSVms: 0 });
    await preflight({
      spec: spec(
        `${LINUX}boot: { loader: kernel, kernel: Image }\nshares: [{ path: ${paths.dir}/share }]\nrosetta: true\nnested: true\n`,
      ),
      paths,
      host: vzHost(),
    });
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("a third macOS VM is refused: macOS runs at most two at once", async () => {
  const err = await refused(
    "os: macos\ncpus: 4\nmemory: 8GiB\n",
    vzHost(),
    "vz.limit",
    /at most 2 macOS VMs at once, and 2 are running/,
    2,
  );
  assertEquals(err.exit, ExitCode.State);
  const paths = await bundle();
  try {
    // One other macOS VM is fine, and Linux VMs do not count.
    await preflight({
      spec: spec("os: macos\ncpus: 4\nmemory: 8GiB\n"),
      paths,
      host: vzHost(),
      runningMacOSVms: 1,
    });
    await preflight({ spec: spec(LINUX), paths, host: vzHost(), runningMacOSVms: 5 });
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("nested virtualization is refused before macOS 15, on chips before M3, and for macOS guests", async () => {
  await refused(
    `${LINUX}nested: true\n`,
    vzHost({ macosVersion: "14.6.1" }),
    "vz.nested",
    /needs macOS 15 or later \(this Mac runs 14\.6\.1\)/,
  );
  await refused(
    `${LINUX}nested: true\n`,
    vzHost({ nestedVirtualizationSupported: false, machineModel: "Mac14,2" }),
    "vz.nested",
    /Mac14,2.*M3 or later/,
  );
  await refused(
    "os: macos\nnested: true\n",
    vzHost(),
    "vz.nested",
    /macOS guests cannot use nested.*VZGenericPlatformConfiguration/,
  );
});

Deno.test("each nested virtualization refusal links to Apple's page on the check", async () => {
  const cases = [
    [`${LINUX}nested: true\n`, vzHost({ macosVersion: "14.6.1" })],
    [`${LINUX}nested: true\n`, vzHost({ nestedVirtualizationSupported: false })],
    ["os: macos\nnested: true\n", vzHost()],
  ] as const;
  for (const [yaml, h] of cases) {
    const err = await refused(yaml, h, "vz.nested", /^nested: /);
    assertMatch(err.hint ?? "", new RegExp(NESTED_DOC.replaceAll(".", "\\.")));
  }
});

Deno.test("a compressed or non-arm64 kernel is refused with how to fix it", async () => {
  const gz = await refused(
    `${LINUX}boot: { loader: kernel, kernel: vmlinuz }\n`,
    vzHost(),
    "vz.kernel",
    /compressed kernel \(gzip\); VZ boots only an uncompressed arm64 Image/,
  );
  assertMatch(gz.hint ?? "", /gunzip -c/);
  await refused(
    `${LINUX}boot: { loader: kernel, kernel: vmlinuz.efi }\n`,
    vzHost(),
    "vz.kernel",
    /EFI zboot/,
  );
  await refused(
    `${LINUX}boot: { loader: kernel, kernel: disk.img }\n`,
    vzHost(),
    "vz.kernel",
    /not an arm64 Linux Image/,
  );
  await refused(
    `${LINUX}boot: { loader: kernel, kernel: nope }\n`,
    vzHost(),
    "boot.not_found",
    /does not exist/,
  );
});

Deno.test("a disk that is not raw is refused; ASIF only on macOS 26", async () => {
  await refused(
    `${LINUX}disks: [{ path: disk.qcow2 }]\n`,
    vzHost(),
    "vz.disk",
    /is a qcow2 image, not raw/,
  );
  await refused(
    `${LINUX}disks: [{ path: disk.qcow2, format: qcow2 }]\n`,
    vzHost(),
    "vz.disk",
    /qcow2 images need engine: qemu/,
  );
  await refused(
    `${LINUX}disks: [{ path: disk.img, format: asif }]\n`,
    vzHost(),
    "vz.disk",
    /ASIF images need macOS 26 or later \(this Mac runs 15\.1\.0\)/,
  );
  const paths = await bundle();
  try {
    await preflight({
      spec: spec(`${LINUX}disks: [{ path: disk.img, format: asif }]\n`),
      paths,
      host: vzHost({ macosVersion: "26.0.0" }),
    });
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("a missing virtualization entitlement is refused with how to sign", async () => {
  const err = await refused(
    LINUX,
    vzHost({ entitlements: { virtualization: false, networking: false } }),
    "vz.entitlement",
    /com\.apple\.security\.virtualization/,
  );
  assertEquals(err.exit, ExitCode.Host);
  assertMatch(err.hint ?? "", /make sign-dev.*codesign --force --sign - --entitlements/);
});

Deno.test("bridged networking without com.apple.vm.networking is refused; with it the interface must exist", async () => {
  const yaml = `${LINUX}networks: [{ mode: bridged, interface: en0 }]\n`;
  const err = await refused(yaml, vzHost(), "vz.bridged", /com\.apple\.vm\.networking/);
  assertMatch(err.hint ?? "", /mode: nat/);
  const entitled = vzHost({ entitlements: { virtualization: true, networking: true } });
  await refused(
    `${LINUX}networks: [{ mode: bridged, interface: en9 }]\n`,
    entitled,
    "vz.bridged",
    /'en9' cannot be bridged \(bridgeable: en0\)/,
  );
  const paths = await bundle();
  try {
    await preflight({ spec: spec(yaml), paths, host: entitled });
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("other specs vz cannot run are refused: x86_64, user networking, limits, Rosetta, Mac input", async () => {
  await refused("os: linux\narch: x86_64\n", vzHost(), "vz.arch", /arm64 guests only/);
  await refused(
    `${LINUX}networks: [{ mode: user }]\n`,
    vzHost(),
    "vz.network",
    /user networking is QEMU's/,
  );
  await refused("os: linux\narch: arm64\ncpus: 16\n", vzHost(), "vz.cpus", /16 is outside 1\.\.8/);
  await refused(
    "os: linux\narch: arm64\nmemory: 16GiB\n",
    vzHost(),
    "vz.memory",
    /16GiB is outside 128MiB\.\.12GiB/,
  );
  await refused(
    `${LINUX}rosetta: true\n`,
    vzHost({ rosetta: "notInstalled" }),
    "vz.rosetta",
    /not installed/,
  );
  await refused(`${LINUX}keyboard: mac\n`, vzHost(), "vz.input", /for macOS guests/);
  await refused(
    "os: macos\nkeyboard: mac\n",
    vzHost({ macosVersion: "13.6.0" }),
    "vz.input",
    /needs macOS 14/,
  );
  await refused(LINUX, vzHost({ supported: false }), "vz.unsupported", /cannot run/);
});

Deno.test("forwards on vz NAT pass pre-flight: the supervisor's proxy serves them", async () => {
  const paths = await bundle();
  try {
    await preflight({
      spec: spec(`${LINUX}networks: [{ mode: nat, forwards: [{ host: 2222, guest: 22 }] }]\n`),
      paths,
      host: vzHost(),
    });
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("kernel and disk formats are recognised by their magic bytes", () => {
  const img = new Uint8Array(64);
  img.set(new TextEncoder().encode("ARM\x64"), 0x38);
  assertEquals(kernelFormat(img), "arm64-image");
  assertEquals(kernelFormat(new Uint8Array([0x1f, 0x8b])), "gzip");
  assertEquals(diskFormat(new TextEncoder().encode("vhdxfile....")), "vhdx");
  assertEquals(diskFormat(new TextEncoder().encode("KDMV")), "vmdk");
  assertEquals(diskFormat(new Uint8Array(512)), "raw");
});

Deno.test("a cove network on vz needs macOS 26: older Macs are refused in one line", async () => {
  const yaml = `${LINUX}networks: [{ mode: network, network: lab }]\n`;
  await refused(
    yaml,
    vzHost({ macosVersion: "15.4.0" }),
    "vz.vmnet",
    /need macOS 26.*runs 15\.4\.0/,
  );
  const paths = await bundle();
  try {
    await preflight({ spec: spec(yaml), paths, host: vzHost({ macosVersion: "26.0.0" }) });
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});
