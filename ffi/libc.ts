/**
 * The few libc calls Deno does not expose: for copy-on-write and
 * hole-preserving file copies, `clonefile(2)` on macOS; `ioctl(FICLONE)`,
 * `lseek(SEEK_DATA/SEEK_HOLE)` and `copy_file_range(2)` on Linux. And
 * record locks whose holder can be asked about without taking the lock
 * ({@link lockTry}, {@link lockHeld}): open file description locks
 * (`F_OFD_SETLK`/`F_OFD_GETLK`) on Linux, `lockf(3)` (POSIX record locks:
 * `F_TLOCK`/`F_TEST`) on macOS, which has no OFD locks and whose variadic
 * `fcntl` cannot be called through Deno's FFI on arm64. Deno's file API has
 * no SEEK_DATA/SEEK_HOLE, no reflink, no raw file descriptors and only
 * flock(2), so these are bound by hand. The library is opened lazily, on
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

// Two sets, bound apart: binding a symbol costs (a nonblocking one most), and `cove list` probes
// locks on every call, while only clones copy files.
const linuxSymbols = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  statvfs: { parameters: ["buffer", "buffer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  fcntl: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  access: { parameters: ["buffer", "i32"], result: "i32" },
} as const;

const darwinSymbols = {
  clonefile: { parameters: ["buffer", "buffer", "u32"], result: "i32" },
  __error: { parameters: [], result: "pointer" },
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  lockf: { parameters: ["i32", "i32", "i64"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  access: { parameters: ["buffer", "i32"], result: "i32" },
} as const;

const linuxCopySymbols = {
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "i32"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  copy_file_range: {
    parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"],
    result: "isize",
    nonblocking: true,
  },
} as const;

type LinuxLib = Deno.DynamicLibrary<typeof linuxSymbols>;
type LinuxCopyLib = Deno.DynamicLibrary<typeof linuxCopySymbols>;
type DarwinLib = Deno.DynamicLibrary<typeof darwinSymbols>;
let linuxLib: LinuxLib | undefined;
let linuxCopyLib: LinuxCopyLib | undefined;
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

function linuxCopy(): LinuxCopyLib {
  linuxCopyLib ??= open("libc.so.6", linuxCopySymbols);
  return linuxCopyLib;
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
  const lib = linuxCopy().symbols;
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

// Record locks ------------------------------------------------------------

const LINUX_O_RDWR_CREAT_CLOEXEC = 2 | 0o100 | O_CLOEXEC;
const DARWIN_O_RDWR_CLOEXEC = 2 | 0x1000000;
const F_GETLK = 5;
const F_SETLK = 6;
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_WRLCK = 1;
const F_UNLCK = 2;
const EINVAL = 22;
/** EAGAIN (EWOULDBLOCK) on Linux; ffi/fd.ts uses it too. */
export const EAGAIN_LINUX = 11;
const EACCES = 13;
/** EAGAIN (EWOULDBLOCK) on macOS. */
export const EAGAIN_DARWIN = 35;
const F_TLOCK = 2;
const F_TEST = 3;
let ofdMissing = false;

function errnoDarwin(): number {
  const p = darwin().symbols.__error();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

/** `struct flock` of Linux (x86_64, aarch64): type, whence, start, len, pid. */
function linuxFlock(type: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(32);
  const v = new DataView(b.buffer);
  v.setInt16(0, type, true);
  v.setInt16(2, 0, true); // SEEK_SET
  v.setBigInt64(8, 0n, true); // l_start
  v.setBigInt64(16, 0n, true); // l_len: the whole file
  v.setInt32(24, 0, true); // l_pid must be 0 for OFD locks
  return b;
}

function supported(): void {
  if (Deno.build.os !== "linux" && Deno.build.os !== "darwin") {
    throw new LibcError(`record locks on ${Deno.build.os}`, 0);
  }
}

/**
 * True when `path` exists, following symlinks as stat does (access(2),
 * F_OK). Deno's stat throws for a missing file, and building that error
 * costs ~20x the call: `cove list` asks about several maybe-missing files
 * of every VM.
 */
export function pathExists(path: string): boolean {
  if (Deno.build.os === "linux") return linux().symbols.access(cstr(path), 0) === 0;
  if (Deno.build.os === "darwin") return darwin().symbols.access(cstr(path), 0) === 0;
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** No such file (the same errno on Linux and macOS). */
export const ENOENT = 2;

/**
 * Opens a lock file for reading and writing, close-on-exec (so no child,
 * QEMU included, inherits the lock); with `create`, creates it (0600).
 * Returns the descriptor.
 */
export function lockOpen(path: string, create = true): number {
  supported();
  const linuxFlags = create ? LINUX_O_RDWR_CREAT_CLOEXEC : 2 | O_CLOEXEC;
  if (create && Deno.build.os === "darwin") {
    // open(2)'s mode is a variadic argument, which Apple's arm64 ABI passes
    // on the stack where Deno's FFI cannot put it: create the file first.
    try {
      Deno.openSync(path, { write: true, create: true, mode: 0o600 }).close();
    } catch (e) {
      throw new LibcError(`open ${path} (${e instanceof Error ? e.message : String(e)})`, 0);
    }
  }
  const fd = Deno.build.os === "linux"
    ? linux().symbols.open(cstr(path), linuxFlags, 0o600)
    : darwin().symbols.open(cstr(path), DARWIN_O_RDWR_CLOEXEC, 0);
  if (fd < 0) {
    throw new LibcError(`open ${path}`, Deno.build.os === "linux" ? errnoLinux() : errnoDarwin());
  }
  return fd;
}

/** Closes a descriptor from {@link lockOpen}; any lock on it goes with it. */
export function lockClose(fd: number): void {
  if (Deno.build.os === "linux") linux().symbols.close(fd);
  else darwin().symbols.close(fd);
}

/**
 * Tries to take an exclusive lock on the whole file, without waiting.
 * Returns false when another holder has it. The lock lasts until the
 * descriptor closes or the process dies.
 */
export function lockTry(fd: number): boolean {
  supported();
  if (Deno.build.os === "darwin") {
    if (darwin().symbols.lockf(fd, F_TLOCK, 0n) === 0) return true;
    const e = errnoDarwin();
    if (e === EAGAIN_DARWIN || e === EACCES) return false;
    throw new LibcError("lockf(F_TLOCK)", e);
  }
  const lib = linux().symbols;
  if (!ofdMissing) {
    if (lib.fcntl(fd, F_OFD_SETLK, linuxFlock(F_WRLCK)) === 0) return true;
    const e = errnoLinux();
    if (e === EAGAIN_LINUX || e === EACCES) return false;
    if (e !== EINVAL) throw new LibcError("fcntl(F_OFD_SETLK)", e);
    ofdMissing = true; // a kernel older than 3.15: POSIX record locks
  }
  if (lib.fcntl(fd, F_SETLK, linuxFlock(F_WRLCK)) === 0) return true;
  const e = errnoLinux();
  if (e === EAGAIN_LINUX || e === EACCES) return false;
  throw new LibcError("fcntl(F_SETLK)", e);
}

/**
 * Asks whether another holder has a lock on the file, without taking one
 * (F_OFD_GETLK / lockf F_TEST). A lock this process holds through another
 * descriptor counts on Linux (OFD locks) but not on macOS (POSIX locks
 * belong to the process): callers that may hold the lock themselves must
 * track that.
 */
export function lockHeld(fd: number): boolean {
  supported();
  if (Deno.build.os === "darwin") {
    if (darwin().symbols.lockf(fd, F_TEST, 0n) === 0) return false;
    const e = errnoDarwin();
    if (e === EAGAIN_DARWIN || e === EACCES) return true;
    throw new LibcError("lockf(F_TEST)", e);
  }
  const lib = linux().symbols;
  const fl = linuxFlock(F_WRLCK);
  const cmd = ofdMissing ? F_GETLK : F_OFD_GETLK;
  if (lib.fcntl(fd, cmd, fl) !== 0) {
    const e = errnoLinux();
    if (e === EINVAL && !ofdMissing) {
      ofdMissing = true;
      return lockHeld(fd);
    }
    throw new LibcError("fcntl(F_GETLK)", e);
  }
  return new DataView(fl.buffer).getInt16(0, true) !== F_UNLCK;
}

/** Replaces the content of the file behind `fd` with `text` (the holder's pid). */
export function lockWrite(fd: number, text: string): void {
  const data = new TextEncoder().encode(text);
  const lib = Deno.build.os === "linux" ? linux().symbols : darwin().symbols;
  const err = () => (Deno.build.os === "linux" ? errnoLinux() : errnoDarwin());
  if (lib.ftruncate(fd, 0n) !== 0) throw new LibcError("ftruncate", err());
  if (Number(lib.pwrite(fd, data, BigInt(data.length), 0n)) !== data.length) {
    throw new LibcError("pwrite", err());
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
