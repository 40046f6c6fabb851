/** The one magic-byte sniffer (core/magic.ts): kernels, disk containers, ISOs, other formats. */
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  bytesAt,
  diskFormat,
  isoKind,
  kernelKind,
  otherFormat,
  rawContent,
  readHead,
} from "../../core/magic.ts";
import { kernelFormat } from "../../engines/vz/preflight.ts";
import { kernelKind as qemuKernelKind } from "../../engines/qemu/kernel.ts";

function at(off: number, sig: string | number[], size = off + 64): Uint8Array {
  const b = new Uint8Array(size);
  b.set(typeof sig === "string" ? Array.from(sig, (c) => c.charCodeAt(0)) : sig, off);
  return b;
}

Deno.test("magic: kernels by header, the same for the QEMU engine and the VZ preflight", () => {
  const cases: [Uint8Array, string, string][] = [
    [at(0x202, "HdrS"), "bzimage", "other"],
    [at(0x38, "ARM\x64"), "arm64-image", "arm64-image"],
    [at(0, "MZ\0\0zimg"), "zboot", "zboot"],
    [Uint8Array.from([0x1f, 0x8b, 8, 0]), "gzip", "gzip"],
    [at(0, "\x7fELF"), "elf", "other"],
    [new TextEncoder().encode("#!/bin/sh\n"), "unknown", "other"],
  ];
  for (const [head, kind, vz] of cases) {
    assertEquals(kernelKind(head), kind);
    assertEquals(qemuKernelKind(head), kind, "the engine uses the same sniffer");
    assertEquals(kernelFormat(head), vz);
  }
});

Deno.test("magic: disk containers, ISOs, raw contents and other formats", () => {
  assertEquals(diskFormat(at(0, "QFI\xfb")), "qcow2");
  assertEquals(diskFormat(at(0, "KDMV")), "vmdk");
  assertEquals(diskFormat(at(0, "vhdxfile")), "vhdx");
  assertEquals(diskFormat(at(0x40, [0x7f, 0x10, 0xda, 0xbe])), "vdi");
  assertEquals(diskFormat(new Uint8Array(512)), "raw");
  assertEquals(isoKind(at(0x8001, "CD001")), "iso9660");
  assertEquals(isoKind(at(0x8001, "BEA01")), "udf");
  assertEquals(isoKind(new Uint8Array(0x9000)), undefined);
  assertEquals(rawContent(at(512, "EFI PART")), "GPT partition table");
  assertEquals(rawContent(at(510, [0x55, 0xaa])), "MBR / boot sector");
  assertEquals(rawContent(at(1080, [0x53, 0xef])), "ext2/3/4 file system");
  assertEquals(rawContent(new Uint8Array(4096)), undefined);
  assertEquals(otherFormat(at(0, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])), "xz-compressed data");
  assertEquals(otherFormat(at(257, "ustar")), "a tar archive");
  assertEquals(otherFormat(new Uint8Array(600)), undefined);
  assert(!bytesAt(new Uint8Array(2), 0, "QFI\xfb"), "a short head matches nothing");
});

Deno.test("magic: readHead reads at most n bytes, fewer from a short file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const p = `${dir}/f`;
    await Deno.writeFile(p, new Uint8Array([1, 2, 3, 4, 5]));
    assertEquals(await readHead(p, 3), new Uint8Array([1, 2, 3]));
    assertEquals(await readHead(p, 100), new Uint8Array([1, 2, 3, 4, 5]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
