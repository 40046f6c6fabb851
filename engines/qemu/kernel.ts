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
import type { ArchName } from "../../core/spec/schema.ts";

/** What a kernel file looks like, from its first bytes. */
export type KernelKind = "bzimage" | "arm64-image" | "gzip" | "zboot" | "elf" | "unknown";

/** Classifies a kernel file's header. */
export function kernelKind(head: Uint8Array): KernelKind {
  const at = (off: number, s: string) =>
    head.length >= off + s.length && [...s].every((c, i) => head[off + i] === c.charCodeAt(0));
  if (at(0x202, "HdrS")) return "bzimage";
  if (at(0x38, "ARM\x64")) return "arm64-image";
  if (at(0, "MZ") && at(4, "zimg")) return "zboot";
  if (head[0] === 0x1f && head[1] === 0x8b) return "gzip";
  if (at(0, "\x7fELF")) return "elf";
  return "unknown";
}

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
    const f = await Deno.open(path);
    try {
      head = new Uint8Array(0x400);
      let n = 0;
      while (n < head.length) {
        const r = await f.read(head.subarray(n));
        if (r === null) break;
        n += r;
      }
      head = head.subarray(0, n);
    } finally {
      f.close();
    }
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
