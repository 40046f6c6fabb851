/**
 * Per-os/arch/host defaults for a parsed spec, producing the fully
 * specified {@link VmSpec} that engines read. Defaults follow what each
 * guest needs: macOS guests get the Mac boot loader, a display, 4 CPUs,
 * 8GiB and a 64GiB disk; Linux guests get EFI, no display, 2 CPUs, 2GiB and
 * a 16GiB disk. Nothing is larger than the host can give.
 * @module
 */
import type { HostInfo } from "../host.ts";
// A cycle (bundle.ts reads specs with these defaults): BUNDLE_FILES is only read inside functions.
import { BUNDLE_FILES } from "../store/bundle.ts";
import { usageError } from "../errors.ts";
import { formatSize, parseSize } from "../units.ts";
import type { SpecParsed, VmSpec } from "./schema.ts";

const GiB = 2 ** 30;

/** Fills in every default for this host. `name` seeds the hostname. */
export function applyDefaults(parsed: SpecParsed, host: HostInfo, name: string): VmSpec {
  const os = parsed.os ?? (parsed.boot?.loader === "macos" ? "macos" : "linux");
  const arch = parsed.arch ?? (os === "macos" ? "arm64" : host.arch);
  const macos = os === "macos";
  if (macos && arch !== "arm64") {
    throw usageError(
      "spec.invalid",
      "arch: macOS guests are arm64 only",
      "remove arch or set it to arm64",
    );
  }
  const cpus = parsed.cpus ?? Math.max(1, Math.min(macos ? 4 : 2, host.cpus));
  const memory = parsed.memory ??
    formatSize(Math.min(macos ? 8 * GiB : 2 * GiB, floorGiB(host.memory / 2)));
  const disks = parsed.disks ?? [{
    path: BUNDLE_FILES.rootDisk,
    size: macos ? "64GiB" : "16GiB",
    format: "raw" as const,
    media: "disk" as const,
    readOnly: false,
    cache: "auto" as const,
    sync: "full" as const,
    bus: "virtio" as const,
  }];
  const boot = parsed.boot ?? (macos ? { loader: "macos" as const } : { loader: "efi" as const });
  if (boot.loader === "efi" && !boot.variableStore) boot.variableStore = BUNDLE_FILES.efiVars;
  if (boot.loader === "kernel" && !boot.kernel) {
    throw usageError(
      "spec.invalid",
      "boot.kernel: the kernel loader needs a kernel file",
      "set boot.kernel or use --kernel",
    );
  }
  if (boot.loader === "macos" && !macos) {
    throw usageError(
      "spec.invalid",
      "boot.loader: 'macos' needs os: macos",
      "use efi or kernel for Linux",
    );
  }
  if (macos && boot.loader !== "macos") {
    throw usageError(
      "spec.invalid",
      `boot.loader: macOS guests boot with 'macos', not '${boot.loader}'`,
      "remove boot or set loader: macos",
    );
  }
  return {
    ...parsed,
    os,
    arch,
    cpus,
    memory,
    disks,
    boot,
    networks: parsed.networks ?? [{ mode: "nat", forwards: [] }],
    display: parsed.display ?? (macos ? { width: 1920, height: 1200, ppi: 144 } : "none"),
    serial: parsed.serial ?? { mode: "log" },
    provision: {
      sshKeys: [],
      autoLogin: false,
      ssh: true,
      commands: [],
      sshPort: 22,
      ...parsed.provision,
      user: parsed.provision?.user ?? (macos ? "admin" : "cove"),
      hostname: parsed.provision?.hostname ?? hostnameFor(name),
    },
    qemu: parsed.qemu ?? { accel: "auto", args: [] },
    agent: parsed.agent ?? !macos,
  };
}

function floorGiB(bytes: number): number {
  return Math.max(GiB, Math.floor(bytes / GiB) * GiB);
}

function hostnameFor(name: string): string {
  const h = name.replace(/[^A-Za-z0-9-]/g, "-").replace(/^-+|-+$/g, "").slice(0, 63);
  return h || "cove";
}

/** The memory size in bytes. */
export function memoryBytes(spec: VmSpec): number {
  return parseSize(spec.memory, "memory");
}
