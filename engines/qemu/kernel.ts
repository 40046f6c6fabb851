/**
 * Checks that a file given as `boot.kernel` really is a Linux kernel for the
 * guest's architecture, by its header, so that a wrong file fails with one
 * clear line before QEMU starts (QEMU's own messages for this are cryptic,
 * or it boots into nothing).
 *
 * Accepted: x86_64 bzImage ("HdrS" at 0x202) or ELF (PVH); arm64 Image
 * ("ARM\x64" at 0x38), gzip-compressed Image (Debian's vmlinuz), EFI zboot
 * ("MZ" + "zimg") or ELF.
 * @module
 */
import { CoveError, ExitCode } from "../../core/errors.ts";
import { KERNEL_HEAD_BYTES, type KernelKind, kernelKind, readHead } from "../../core/magic.ts";
import type { ArchName } from "../../core/spec/schema.ts";

export { type KernelKind, kernelKind };

/** True when a kernel of this kind boots on `arch`. */
export function kernelFits(kind: KernelKind, arch: ArchName): boolean {
  if (kind === "elf") return true;
  return arch === "x86_64" ? kind === "bzimage" : kind !== "bzimage" && kind !== "unknown";
}

/** Throws a one-line error unless `path` is a kernel that boots on `arch`. */
export async function checkKernel(
  path: string,
  arch: ArchName,
  what = "boot.kernel",
): Promise<void> {
  let head: Uint8Array;
  try {
    head = await readHead(path, KERNEL_HEAD_BYTES);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new CoveError("boot.not_found", `${what}: '${path}' does not exist`, {
        hint: "give the path of a Linux kernel image",
        exit: ExitCode.Usage,
      });
    }
    throw e;
  }
  const kind = kernelKind(head);
  if (kernelFits(kind, arch)) return;
  const why = kind === "unknown"
    ? "is not a Linux kernel (no bzImage, arm64 Image, gzip or ELF header)"
    : `is a ${kind === "bzimage" ? "x86" : "arm64"} kernel, not one for ${arch} guests`;
  throw new CoveError("boot.bad_kernel", `${what}: '${path}' ${why}`, {
    hint: "give a vmlinuz/Image file for the guest's architecture",
    exit: ExitCode.Usage,
  });
}
