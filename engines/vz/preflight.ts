/**
 * Checks a spec against what Virtualization.framework on this Mac can do,
 * before any VZ call, so that each problem is one clear line with a hint
 * instead of a late NSError. Everything here is a function of the spec, the
 * files it names and a {@link VzHostInfo}; tests pass synthetic host info.
 *
 * The checks: VZ support and the virtualization entitlement; arm64 guests;
 * the two-macOS-VMs limit; nested virtualization (macOS 15, M3 or later);
 * the CPU and memory range; the kernel (VZ boots an uncompressed arm64
 * Image, not gzip or EFI zboot); disk formats (raw, ASIF only on macOS 26,
 * no qcow2/VMDK/VHDX); bridged networking (com.apple.vm.networking); Rosetta;
 * Mac input devices; shares.
 * @module
 */
import { CoveError, ExitCode, usageError } from "../../core/errors.ts";
import { diskFormat, kernelKind, readHead } from "../../core/magic.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import { keyboardKind } from "../../core/spec/fields.ts";
import { formatSize, parseSize } from "../../core/units.ts";
import type { VmPaths } from "../engine.ts";
import type { VzHostInfo } from "../../ffi/cove_vz_json.ts";
import { macosMajor } from "./config.ts";
import { SIGN_HINT } from "./errors.ts";

/** VZ's limit on concurrently running macOS guests (a licence term). */
export const MAX_MACOS_VMS = 2;

export interface PreflightInput {
  spec: VmSpec;
  paths: VmPaths;
  host: VzHostInfo;
  /** How many other macOS VMs run now; undefined skips the check. */
  runningMacOSVms?: number;
}

function hostError(code: string, message: string, hint?: string): CoveError {
  return new CoveError(code, message, { hint, exit: ExitCode.Host });
}

function resolve(paths: VmPaths, p: string): string {
  return p.startsWith("/") ? p : `${paths.dir}/${p}`;
}

/** The first `n` bytes of a file, or undefined when it cannot be opened. */
async function head(path: string, n: number): Promise<Uint8Array | undefined> {
  return await readHead(path, n).catch(() => undefined);
}

/** What a kernel file is, from its first bytes (see core/magic.ts). */
export function kernelFormat(b: Uint8Array): "arm64-image" | "gzip" | "zboot" | "other" {
  const k = kernelKind(b);
  return k === "arm64-image" || k === "gzip" || k === "zboot" ? k : "other";
}

export { diskFormat };

/** Runs every check; throws a CoveError naming the first problem. */
export async function preflight(input: PreflightInput): Promise<void> {
  const { spec, host } = input;
  checkHost(host);
  checkGuest(spec, host, input.runningMacOSVms);
  checkResources(spec, host);
  await checkBoot(spec, input.paths);
  await checkDisks(spec, input.paths, host);
  checkNetworks(spec, host);
  await checkShares(spec, host);
  checkInput(spec, host);
}

export function checkHost(host: VzHostInfo): void {
  if (!host.supported) {
    throw hostError(
      "vz.unsupported",
      "this Mac cannot run Virtualization.framework VMs",
      "use engine: qemu",
    );
  }
  if (!host.entitlements.virtualization) {
    throw hostError(
      "vz.entitlement",
      "this process lacks the com.apple.security.virtualization entitlement, so VZ refuses to run VMs",
      SIGN_HINT,
    );
  }
}

export function checkGuest(spec: VmSpec, host: VzHostInfo, runningMacOSVms?: number): void {
  if (spec.arch !== "arm64") {
    throw usageError(
      "vz.arch",
      `vz runs arm64 guests only, not ${spec.arch}`,
      "set engine: qemu for x86_64 guests",
    );
  }
  if (spec.os === "macos" && runningMacOSVms !== undefined && runningMacOSVms >= MAX_MACOS_VMS) {
    throw new CoveError(
      "vz.limit",
      `macOS runs at most ${MAX_MACOS_VMS} macOS VMs at once, and ${runningMacOSVms} are running`,
      { hint: "stop one first ('cove list' shows what runs)", exit: ExitCode.State },
    );
  }
  if (spec.nested) {
    if (spec.os === "macos") {
      throw usageError(
        "vz.nested",
        "nested: macOS guests cannot use nested virtualization (VZ offers it only on the generic platform of Linux guests: VZGenericPlatformConfiguration.isNestedVirtualizationEnabled)",
        `set nested: false; see ${NESTED_DOC}`,
      );
    }
    if (macosMajor(host.macosVersion) < 15) {
      throw hostError(
        "vz.nested",
        `nested: needs macOS 15 or later (this Mac runs ${host.macosVersion}), where VZGenericPlatformConfiguration.isNestedVirtualizationSupported first exists`,
        `update macOS, or set nested: false; see ${NESTED_DOC}`,
      );
    }
    if (!host.nestedVirtualizationSupported) {
      throw hostError(
        "vz.nested",
        `nested: this Mac's chip cannot nest virtualization (${
          host.machineModel ?? "unknown model"
        }); it needs M3 or later (isNestedVirtualizationSupported is false here)`,
        `set nested: false, or run it on an M3 or later Mac; see ${NESTED_DOC}`,
      );
    }
  }
}

/** Apple's page on the nested virtualization check. */
export const NESTED_DOC =
  "https://developer.apple.com/documentation/virtualization/vzgenericplatformconfiguration/isnestedvirtualizationsupported";

export function checkResources(spec: VmSpec, host: VzHostInfo): void {
  const { min, max } = host.cpuCount;
  if (spec.cpus < min || spec.cpus > max) {
    throw usageError(
      "vz.cpus",
      `cpus: ${spec.cpus} is outside ${min}..${max}, what VZ allows on this Mac`,
    );
  }
  const mem = parseSize(spec.memory, "memory");
  if (mem < host.memorySize.min || mem > host.memorySize.max) {
    throw usageError(
      "vz.memory",
      `memory: ${formatSize(mem)} is outside ${formatSize(host.memorySize.min)}..${
        formatSize(host.memorySize.max)
      }, what VZ allows on this Mac`,
    );
  }
  if (mem % 2 ** 20 !== 0) throw usageError("vz.memory", "memory: must be a whole number of MiB");
}

export async function checkBoot(spec: VmSpec, paths: VmPaths): Promise<void> {
  if (spec.boot.loader !== "kernel") return;
  const kernel = resolve(paths, spec.boot.kernel ?? "");
  const b = await head(kernel, 64);
  if (!b) throw usageError("boot.not_found", `boot.kernel: '${kernel}' does not exist`);
  const kind = kernelFormat(b);
  if (kind === "gzip" || kind === "zboot") {
    throw usageError(
      "vz.kernel",
      `boot.kernel: '${kernel}' is a compressed kernel (${
        kind === "gzip" ? "gzip" : "EFI zboot"
      }); VZ boots only an uncompressed arm64 Image`,
      kind === "gzip"
        ? `decompress it: gunzip -c '${kernel}' > Image`
        : "use the uncompressed Image, or boot with loader: efi",
    );
  }
  if (kind !== "arm64-image") {
    throw usageError(
      "vz.kernel",
      `boot.kernel: '${kernel}' is not an arm64 Linux Image`,
      "give an uncompressed arm64 Image",
    );
  }
  if (spec.boot.initrd) {
    const initrd = resolve(paths, spec.boot.initrd);
    if (!(await head(initrd, 1))) {
      throw usageError("boot.not_found", `boot.initrd: '${initrd}' does not exist`);
    }
  }
}

export async function checkDisks(spec: VmSpec, paths: VmPaths, host: VzHostInfo): Promise<void> {
  const major = macosMajor(host.macosVersion);
  for (const [i, d] of spec.disks.entries()) {
    const where = `disks[${i}]`;
    const path = resolve(paths, d.path);
    if (d.format === "qcow2") {
      throw usageError(
        "vz.disk",
        `${where}: qcow2 images need engine: qemu`,
        `convert it: qemu-img convert -O raw '${path}' disk.img`,
      );
    }
    if (d.format === "asif" && major < 26) {
      throw hostError(
        "vz.disk",
        `${where}: ASIF images need macOS 26 or later (this Mac runs ${host.macosVersion})`,
        "use a raw image",
      );
    }
    if (d.bus === "nvme" && spec.os === "macos") {
      // VZNVMExpressControllerDeviceConfiguration.h: valid only with
      // VZGenericPlatformConfiguration, so never for a macOS guest.
      throw usageError(
        "vz.disk",
        `${where}: NVMe disks work only for Linux guests under VZ (its generic platform)`,
        "use bus: virtio",
      );
    }
    if (d.bus === "nvme" && major < 14) {
      throw hostError(
        "vz.disk",
        `${where}: NVMe disks need macOS 14 or later (this Mac runs ${host.macosVersion})`,
        "use bus: virtio",
      );
    }
    const b = await head(path, 0x48);
    if (!b) throw usageError("vz.disk", `${where}: '${path}' does not exist`);
    if (d.format === "raw") {
      const kind = diskFormat(b);
      if (kind !== "raw") {
        throw usageError(
          "vz.disk",
          `${where}: '${path}' is a ${kind} image, not raw; vz needs raw`,
          `convert it: qemu-img convert -O raw '${path}' disk.img`,
        );
      }
    }
  }
}

export function checkNetworks(spec: VmSpec, host: VzHostInfo): void {
  for (const [i, n] of spec.networks.entries()) {
    const where = `networks[${i}]`;
    if (n.mode === "user") {
      throw usageError(
        "vz.network",
        `${where}: user networking is QEMU's; vz offers nat and bridged`,
        "set mode: nat",
      );
    }
    // Forwards need nothing of VZ: the supervisor's proxy serves them to the guest's address.
    if (n.mode === "network" && macosMajor(host.macosVersion) < 26) {
      throw hostError(
        "vz.vmnet",
        `${where}: cove networks on vz need macOS 26 (a vmnet network attachment); this Mac runs ${host.macosVersion}`,
        "use the qemu engine for this VM, or mode: nat",
      );
    }
    if (n.mode !== "bridged") continue;
    if (!host.entitlements.networking) {
      throw hostError(
        "vz.bridged",
        `${where}: bridged networking needs the com.apple.vm.networking entitlement, which Apple grants only with a provisioning profile`,
        "use mode: nat, or a cove signed with that entitlement",
      );
    }
    if (!n.interface) {
      throw usageError("vz.bridged", `${where}: bridged needs an interface`, "set interface: en0");
    }
    if (!host.bridgedInterfaces.some((b) => b.identifier === n.interface)) {
      const have = host.bridgedInterfaces.map((b) => b.identifier).join(", ") || "none";
      throw usageError(
        "vz.bridged",
        `${where}: '${n.interface}' cannot be bridged (bridgeable: ${have})`,
      );
    }
  }
}

export async function checkShares(spec: VmSpec, host: VzHostInfo): Promise<void> {
  const tags = new Set<string>();
  for (const [i, s] of spec.shares.entries()) {
    const where = `shares[${i}]`;
    let dir = false;
    try {
      dir = (await Deno.stat(s.path)).isDirectory;
    } catch { /* reported below */ }
    if (!dir) throw usageError("vz.share", `${where}: '${s.path}' is not a directory`);
    if (s.automount && spec.os !== "macos") {
      throw usageError(
        "vz.share",
        `${where}: automount is for macOS guests`,
        "set mountPoint for Linux guests instead",
      );
    }
    const tag = s.tag ?? (s.path.replace(/\/+$/, "").split("/").pop() || "share");
    if (tags.has(tag)) {
      throw usageError(
        "vz.share",
        `${where}: tag '${tag}' is used twice`,
        "give each share its own tag",
      );
    }
    tags.add(tag);
  }
  if (spec.rosetta) {
    if (spec.os !== "linux") {
      throw usageError(
        "vz.rosetta",
        "rosetta: only Linux guests run Rosetta",
        "set rosetta: false",
      );
    }
    if (host.rosetta === "notSupported") {
      throw hostError("vz.rosetta", "rosetta: this Mac cannot share Rosetta with Linux guests");
    }
    if (host.rosetta === "notInstalled") {
      throw hostError(
        "vz.rosetta",
        "rosetta: Rosetta is not installed",
        "run: softwareupdate --install-rosetta --agree-to-license",
      );
    }
  }
}

export function checkInput(spec: VmSpec, host: VzHostInfo): void {
  if (
    spec.os !== "macos" && (keyboardKind(spec.keyboard) === "mac" || spec.pointing === "trackpad")
  ) {
    throw usageError(
      "vz.input",
      "the Mac keyboard and trackpad are for macOS guests",
      "use keyboard/pointing: usb",
    );
  }
  if (keyboardKind(spec.keyboard) === "mac" && macosMajor(host.macosVersion) < 14) {
    throw hostError(
      "vz.input",
      `keyboard: the Mac keyboard needs macOS 14 or later (this Mac runs ${host.macosVersion})`,
      "use keyboard: usb",
    );
  }
}
