/**
 * The few libc calls Deno does not expose, for copy-on-write and
 * hole-preserving file copies: `clonefile(2)` on macOS; `ioctl(FICLONE)`,
 * `lseek(SEEK_DATA/SEEK_HOLE)` and `copy_file_range(2)` on Linux.
 * Deno's file API has no SEEK_DATA/SEEK_HOLE, no reflink and no raw file
 * descriptors, so these are bound by hand. The library is opened lazily, on
 * first use, never at import time.
 * @module
 */

/** A failed libc call, with errno. ffi never imports core; callers map this. */
export class LibcError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    super(`${call} failed (errno ${errno})`);
    this.name = "LibcError";
  }
}

const linuxSymbols = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "i32"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  copy_file_range: {
    parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"],
    result: "isize",
    nonblocking: true,
  },
  statvfs: { parameters: ["buffer", "buffer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

const darwinSymbols = {
  clonefile: { parameters: ["buffer", "buffer", "u32"], result: "i32" },
  __error: { parameters: [], result: "pointer" },
} as const;

type LinuxLib = Deno.DynamicLibrary<typeof linuxSymbols>;
type DarwinLib = Deno.DynamicLibrary<typeof darwinSymbols>;
let linuxLib: LinuxLib | undefined;
let darwinLib: DarwinLib | undefined;

/** Deno.dlopen, with a failure (no FFI permission, no such library) as a LibcError. */
function open<S extends Deno.ForeignLibraryInterface>(path: string, symbols: S) {
  try {
    return Deno.dlopen(path, symbols);
  } catch (e) {
    throw new LibcError(`dlopen ${path} (${e instanceof Error ? e.message : String(e)})`, 0);
  }
}

function linux(): LinuxLib {
  linuxLib ??= open("libc.so.6", linuxSymbols);
  return linuxLib;
}

function darwin(): DarwinLib {
  darwinLib ??= open("/usr/lib/libSystem.B.dylib", darwinSymbols);
  return darwinLib;
}

function cstr(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(s + "\0");
}

function errnoLinux(): number {
  const p = linux().symbols.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

const O_RDONLY = 0;
const O_WRONLY = 1;
const O_CLOEXEC = 0o2000000;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const FICLONE = 0x40049409n;
const ENXIO = 6;

/** macOS: clones `src` to the new path `dst` with clonefile(2). */
export function clonefile(src: string, dst: string): void {
  const rc = darwin().symbols.clonefile(cstr(src), cstr(dst), 0);
  if (rc !== 0) {
    const p = darwin().symbols.__error();
    throw new LibcError("clonefile", p ? new Deno.UnsafePointerView(p).getInt32() : 0);
  }
}

/** The outcome of {@link copySparseLinux}. */
export interface SparseCopyResult {
  /** "reflink" when the filesystem shared the blocks, else "sparse". */
  method: "reflink" | "sparse";
  /** Bytes of data copied (0 for a reflink). */
  dataBytes: number;
}

/**
 * Linux: copies `src` into the existing, empty, file `dst`, sharing blocks
 * with a reflink where the filesystem supports it, otherwise copying only
 * the data ranges (SEEK_DATA/SEEK_HOLE) so holes stay holes. The caller
 * sets the final size with truncate.
 */
export async function copySparseLinux(src: string, dst: string): Promise<SparseCopyResult> {
  const lib = linux().symbols;
  const sfd = lib.open(cstr(src), O_RDONLY | O_CLOEXEC, 0);
  if (sfd < 0) throw new LibcError("open " + src, errnoLinux());
  try {
    const dfd = lib.open(cstr(dst), O_WRONLY | O_CLOEXEC, 0);
    if (dfd < 0) throw new LibcError("open " + dst, errnoLinux());
    try {
      if (lib.ioctl(dfd, FICLONE, sfd) === 0) return { method: "reflink", dataBytes: 0 };
      let copied = 0;
      let pos = 0n;
      const offIn = new BigInt64Array(1);
      const offOut = new BigInt64Array(1);
      while (true) {
        const data = lib.lseek(sfd, pos, SEEK_DATA);
        if (data < 0n) {
          const e = errnoLinux();
          if (e === ENXIO) break; // no data past pos
          throw new LibcError("lseek(SEEK_DATA)", e);
        }
        const hole = lib.lseek(sfd, data, SEEK_HOLE);
        if (hole < 0n) throw new LibcError("lseek(SEEK_HOLE)", errnoLinux());
        offIn[0] = data;
        offOut[0] = data;
        let left = hole - data;
        while (left > 0n) {
          const chunk = left > 1n << 30n ? 1n << 30n : left;
          const n = await lib.copy_file_range(
            sfd,
            new Uint8Array(offIn.buffer),
            dfd,
            new Uint8Array(offOut.buffer),
            chunk,
            0,
          );
          if (n <= 0n) throw new LibcError("copy_file_range", n === 0n ? 0 : -1);
          left -= BigInt(n);
          copied += Number(n);
        }
        pos = hole;
      }
      return { method: "sparse", dataBytes: copied };
    } finally {
      lib.close(dfd);
    }
  } finally {
    lib.close(sfd);
  }
}

/**
 * Linux (64-bit glibc): bytes available to an unprivileged user on the file
 * system holding `path`, from statvfs(3) (f_bavail * f_frsize).
 */
export function freeBytesLinux(path: string): number {
  // struct statvfs: f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, ... (unsigned long / fsblkcnt_t: 8 bytes each)
  const buf = new Uint8Array(256);
  const rc = linux().symbols.statvfs(cstr(path), buf);
  if (rc !== 0) throw new LibcError("statvfs", errnoLinux());
  const v = new DataView(buf.buffer);
  const frsize = v.getBigUint64(8, true);
  const bavail = v.getBigUint64(32, true);
  return Number(frsize * bavail);
}
