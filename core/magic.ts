/**
 * The one magic-byte sniffer: what a disk image, an installer or a kernel
 * is, from its first bytes. `core/images/qcow2.ts` (probeImage), the QEMU
 * engine's kernel check and the VZ preflight all read their signatures
 * here, so a format is recognised the same way everywhere.
 *
 * @example
 * ```ts
 * import { diskFormat, kernelKind } from "./magic.ts";
 * kernelKind(new Uint8Array([0x1f, 0x8b, 8, 0])); // "gzip"
 * diskFormat(new TextEncoder().encode("QFI\xfb")); // "qcow2"
 * ```
 * @module
 */

/** A signature: bytes, or a string of byte values (`"QFI\xfb"`). */
export type Signature = readonly number[] | string;

/** True when `b` holds `sig` at offset `at`. */
export function bytesAt(b: Uint8Array, at: number, sig: Signature): boolean {
  const s = typeof sig === "string" ? Array.from(sig, (c) => c.charCodeAt(0)) : sig;
  if (b.length < at + s.length) return false;
  for (let i = 0; i < s.length; i++) if (b[at + i] !== s[i]) return false;
  return true;
}

/**
 * Reads up to `n` bytes from the start of a file (fewer if it is shorter).
 * Throws what Deno.open throws (NotFound for a missing file).
 */
export async function readHead(path: string, n: number): Promise<Uint8Array> {
  const f = await Deno.open(path);
  try {
    const buf = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const r = await f.read(buf.subarray(got));
      if (r === null) break;
      got += r;
    }
    return buf.subarray(0, got);
  } finally {
    f.close();
  }
}

/** The qcow magic, "QFI\xfb" (any version). */
export const QCOW_MAGIC: Signature = "QFI\xfb";

/** What a kernel file looks like. */
export type KernelKind = "bzimage" | "arm64-image" | "gzip" | "zboot" | "elf" | "unknown";

/** Bytes {@link kernelKind} needs to see every kernel signature. */
export const KERNEL_HEAD_BYTES = 0x400;

/**
 * Classifies a kernel by its header: x86 bzImage ("HdrS" at 0x202), arm64
 * Image ("ARM\x64" at 0x38), EFI zboot ("MZ" + "zimg"), gzip (Debian's
 * arm64 vmlinuz) or ELF.
 */
export function kernelKind(head: Uint8Array): KernelKind {
  if (bytesAt(head, 0x202, "HdrS")) return "bzimage";
  if (bytesAt(head, 0x38, "ARM\x64")) return "arm64-image";
  if (bytesAt(head, 0, "MZ") && bytesAt(head, 4, "zimg")) return "zboot";
  if (bytesAt(head, 0, [0x1f, 0x8b])) return "gzip";
  if (bytesAt(head, 0, "\x7fELF")) return "elf";
  return "unknown";
}

/** A disk image's container format; "raw" when none is recognised. */
export type DiskContainer = "raw" | "qcow2" | "vmdk" | "vhdx" | "vdi";

/** A disk image's container format, from its first 0x48 bytes. */
export function diskFormat(head: Uint8Array): DiskContainer {
  if (bytesAt(head, 0, QCOW_MAGIC)) return "qcow2";
  if (bytesAt(head, 0, "KDMV") || bytesAt(head, 0, "# Disk DescriptorFile")) return "vmdk";
  if (bytesAt(head, 0, "vhdxfile")) return "vhdx";
  if (bytesAt(head, 0x40, [0x7f, 0x10, 0xda, 0xbe])) return "vdi";
  return "raw";
}

/** True for an ISO 9660 image (hybrid ISOs too) or UDF; needs 0x8006 bytes. */
export function isoKind(head: Uint8Array): "iso9660" | "udf" | undefined {
  if (bytesAt(head, 0x8001, "CD001")) return "iso9660";
  if (bytesAt(head, 0x8001, "BEA01")) return "udf";
  return undefined;
}

const NOT_A_DISK: ReadonlyArray<readonly [number, Signature, string]> = [
  [0, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], "xz-compressed data"],
  [0, [0x1f, 0x8b], "gzip-compressed data"],
  [0, [0x28, 0xb5, 0x2f, 0xfd], "zstd-compressed data"],
  [0, "BZh", "bzip2-compressed data"],
  [0, [0x50, 0x4b, 0x03, 0x04], "a zip archive"],
  [0, "KDMV", "a VMDK image"],
  [0, "# Disk DescriptorFile", "a VMDK descriptor"],
  [0, "vhdxfile", "a VHDX image"],
  [0, "conectix", "a VHD image"],
  [64, [0x7f, 0x10, 0xda, 0xbe], "a VDI image"],
  [0, QCOW_MAGIC, "a qcow image"],
  [0, "QEVM", "a QEMU saved state"],
  [257, "ustar", "a tar archive"],
];

/**
 * Names a file that is neither raw, qcow2 (v2/v3) nor ISO but has a known
 * signature (a compressed file, an archive, another VM's image format), for
 * the error line; undefined when nothing matches.
 */
export function otherFormat(head: Uint8Array): string | undefined {
  for (const [at, sig, what] of NOT_A_DISK) if (bytesAt(head, at, sig)) return what;
  return undefined;
}

/**
 * Names what a raw disk starts with (a partition table, a boot sector, a
 * file system), from its first 0x10048 bytes; undefined when nothing matches.
 */
export function rawContent(head: Uint8Array): string | undefined {
  if (bytesAt(head, 512, "EFI PART")) return "GPT partition table";
  if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) return "MBR / boot sector";
  if (bytesAt(head, 1080, [0x53, 0xef])) return "ext2/3/4 file system";
  if (bytesAt(head, 0, "XFSB")) return "XFS";
  if (bytesAt(head, 0x10040, "_BHRfS_M")) return "Btrfs";
  return undefined;
}
