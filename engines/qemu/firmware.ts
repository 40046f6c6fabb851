/**
 * EFI firmware discovery for QEMU: OVMF (x86_64) and AAVMF (arm64) from
 * Debian's `ovmf` and `qemu-efi-aarch64` packages, other distributions'
 * edk2 paths, and Homebrew's `share/qemu/edk2-*.fd`. Each VM gets its own
 * copy of the variable store in its bundle, made on first boot from the
 * matching template.
 *
 * `COVE_FIRMWARE_DIRS` (colon separated) replaces the directories searched.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../../core/errors.ts";
import type { ArchName } from "../../core/spec/schema.ts";
import type { FirmwarePlan } from "./argv.ts";

/** A code image and the template of its variable store. */
export interface FirmwarePair {
  code: string;
  /** Variable store template; absent for a bios-style image. */
  varsTemplate?: string;
  mode: "pflash" | "bios";
}

interface Candidate {
  code: string;
  vars?: string;
  mode: "pflash" | "bios";
}

const X86: Candidate[] = [
  { code: "OVMF/OVMF_CODE_4M.fd", vars: "OVMF/OVMF_VARS_4M.fd", mode: "pflash" },
  { code: "OVMF/OVMF_CODE.fd", vars: "OVMF/OVMF_VARS.fd", mode: "pflash" },
  { code: "edk2/ovmf/OVMF_CODE.fd", vars: "edk2/ovmf/OVMF_VARS.fd", mode: "pflash" },
  { code: "edk2/x64/OVMF_CODE.4m.fd", vars: "edk2/x64/OVMF_VARS.4m.fd", mode: "pflash" },
  { code: "qemu/edk2-x86_64-code.fd", vars: "qemu/edk2-i386-vars.fd", mode: "pflash" },
];

const ARM64: Candidate[] = [
  { code: "AAVMF/AAVMF_CODE.fd", vars: "AAVMF/AAVMF_VARS.fd", mode: "pflash" },
  {
    code: "edk2/aarch64/QEMU_EFI-pflash.raw",
    vars: "edk2/aarch64/vars-template-pflash.raw",
    mode: "pflash",
  },
  { code: "qemu/edk2-aarch64-code.fd", vars: "qemu/edk2-arm-vars.fd", mode: "pflash" },
  { code: "qemu-efi-aarch64/QEMU_EFI.fd", mode: "bios" },
];

/** The `share` directories searched, in order. */
export function firmwareRoots(): string[] {
  const env = Deno.env.get("COVE_FIRMWARE_DIRS");
  if (env !== undefined) return env.split(":").filter((d) => d);
  return ["/usr/share", "/opt/homebrew/share", "/usr/local/share"];
}

function isFile(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

function size(p: string): number | undefined {
  try {
    return Deno.statSync(p).size;
  } catch {
    return undefined;
  }
}

/**
 * Finds firmware for an architecture. When the VM already has a variable
 * store, a code image whose template has the same size is preferred (OVMF
 * comes in 2M and 4M flavours that do not mix).
 */
export function findFirmware(arch: ArchName, existingVars?: string): FirmwarePair | undefined {
  const found: FirmwarePair[] = [];
  for (const root of firmwareRoots()) {
    for (const c of arch === "arm64" ? ARM64 : X86) {
      const code = join(root, c.code);
      if (!isFile(code)) continue;
      const vars = c.vars ? join(root, c.vars) : undefined;
      if (vars && !isFile(vars)) continue;
      found.push({ code, varsTemplate: vars, mode: c.mode });
    }
  }
  if (found.length === 0) return undefined;
  const have = existingVars ? size(existingVars) : undefined;
  if (have !== undefined) {
    const match = found.find((f) => f.varsTemplate && size(f.varsTemplate) === have);
    if (match) return match;
  }
  return found[0];
}

/** Firmware or a clear host error naming the packages to install. */
export function requireFirmware(arch: ArchName, existingVars?: string): FirmwarePair {
  const fw = findFirmware(arch, existingVars);
  if (fw) return fw;
  const pkg = arch === "arm64" ? "qemu-efi-aarch64" : "ovmf";
  throw new CoveError("qemu.no_firmware", `no EFI firmware for ${arch} guests was found`, {
    hint: `install it ('apt-get install ${pkg}' or 'brew install qemu'), or boot with --kernel`,
    exit: ExitCode.Host,
  });
}

/** Makes the VM's variable store from the template on first boot; returns the plan. */
export async function prepareFirmware(
  fw: FirmwarePair,
  varsPath: string | undefined,
): Promise<FirmwarePlan> {
  if (fw.mode === "bios" || !fw.varsTemplate || !varsPath) return { code: fw.code, mode: fw.mode };
  try {
    await Deno.stat(varsPath);
  } catch {
    await Deno.copyFile(fw.varsTemplate, varsPath);
    await Deno.chmod(varsPath, 0o600);
  }
  return { code: fw.code, vars: varsPath, mode: "pflash" };
}
