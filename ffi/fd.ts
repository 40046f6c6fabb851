/**
 * Raw file descriptors, which Deno has no API for: pipes for the VM serial
 * console (VZ attaches file handles) and the descriptors libcove_vz returns
 * for vsock connections. Hand-written over `Deno.dlopen` (pipe, read, write,
 * poll, dup, close) because no npm package wraps descriptors for Deno;
 * ffi/libc.ts holds the file-copy calls.
 *
 * Reads wait with poll() in short slices on a `nonblocking` call, so a
 * reader can be cancelled and the event loop never blocks.
 *
 * @example
 * ```ts
 * const [r, w] = fds().pipe();
 * await writeAllFd(w, new TextEncoder().encode("hi\n"));
 * const stream = readableFromFd(r);
 * ```
 * @module
 */
import { EAGAIN_DARWIN, EAGAIN_LINUX, LibcError } from "./libc.ts";

const POLLIN = 0x1;
const POLLHUP = 0x10;
const POLLERR = 0x8;
const EINTR = 4;

const linuxSymbols = {
  pipe: { parameters: ["buffer"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  dup: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize", nonblocking: true },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize", nonblocking: true },
  // nfds_t is unsigned long on Linux.
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

const darwinSymbols = {
  pipe: { parameters: ["buffer"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  dup: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize", nonblocking: true },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize", nonblocking: true },
  // nfds_t is unsigned int on macOS.
  poll: { parameters: ["buffer", "u32", "i32"], result: "i32", nonblocking: true },
  __error: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** Descriptor operations. Every method throws LibcError on failure. */
export interface Fds {
  /** A pipe: [read end, write end]. */
  pipe(): [number, number];
  close(fd: number): void;
  dup(fd: number): number;
  /** Reads up to buf.length bytes; 0 at end of file. */
  read(fd: number, buf: Uint8Array<ArrayBuffer>): Promise<number>;
  /** Writes some of data; returns how much. */
  write(fd: number, data: Uint8Array<ArrayBuffer>): Promise<number>;
  /** Waits up to timeoutMs for fd to be readable (or closed); true if so. */
  waitReadable(fd: number, timeoutMs: number): Promise<boolean>;
}

let instance: Fds | undefined;

/** The descriptor bindings, opened on first use. */
export function fds(): Fds {
  if (instance) return instance;
  instance = Deno.build.os === "darwin" ? openDarwin() : openLinux();
  return instance;
}

function makeFds(
  s: {
    pipe(b: Uint8Array<ArrayBuffer>): number;
    close(fd: number): number;
    dup(fd: number): number;
    read(fd: number, b: Uint8Array<ArrayBuffer>, n: number | bigint): Promise<number | bigint>;
    write(fd: number, b: Uint8Array<ArrayBuffer>, n: number | bigint): Promise<number | bigint>;
    poll(b: Uint8Array<ArrayBuffer>, n: number, t: number): Promise<number>;
  },
  errnoPtr: () => Deno.PointerValue,
  eagain: number,
): Fds {
  const errno = () => {
    const p = errnoPtr();
    return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
  };
  const fail = (what: string): never => {
    throw new LibcError(what, errno());
  };
  return {
    pipe() {
      const b = new Uint8Array(8);
      if (s.pipe(b) !== 0) fail("pipe");
      const v = new DataView(b.buffer);
      return [v.getInt32(0, true), v.getInt32(4, true)];
    },
    close(fd) {
      s.close(fd);
    },
    dup(fd) {
      const r = s.dup(fd);
      if (r < 0) fail("dup");
      return r;
    },
    async read(fd, buf) {
      for (;;) {
        const n = Number(await s.read(fd, buf, buf.length));
        if (n >= 0) return n;
        const e = errno();
        if (e !== EINTR && e !== eagain) fail("read");
      }
    },
    async write(fd, data) {
      for (;;) {
        const n = Number(await s.write(fd, data, data.length));
        if (n >= 0) return n;
        const e = errno();
        if (e !== EINTR && e !== eagain) fail("write");
      }
    },
    async waitReadable(fd, timeoutMs) {
      const b = new Uint8Array(8);
      const v = new DataView(b.buffer);
      v.setInt32(0, fd, true);
      v.setInt16(4, POLLIN, true);
      const r = await s.poll(b, 1, timeoutMs);
      if (r < 0) {
        if (errno() === EINTR) return false;
        fail("poll");
      }
      return r > 0 && (v.getInt16(6, true) & (POLLIN | POLLHUP | POLLERR)) !== 0;
    },
  };
}

function openLinux(): Fds {
  let lib: Deno.DynamicLibrary<typeof linuxSymbols>;
  try {
    lib = Deno.dlopen("libc.so.6", linuxSymbols);
  } catch (e) {
    throw new LibcError(`dlopen libc.so.6: ${(e as Error).message}`, 0);
  }
  const s = lib.symbols;
  return makeFds(
    {
      pipe: s.pipe,
      close: s.close,
      dup: s.dup,
      read: s.read,
      write: s.write,
      poll: (b, n, t) => s.poll(b, BigInt(n), t),
    },
    s.__errno_location,
    EAGAIN_LINUX,
  );
}

function openDarwin(): Fds {
  let lib: Deno.DynamicLibrary<typeof darwinSymbols>;
  try {
    lib = Deno.dlopen("/usr/lib/libSystem.B.dylib", darwinSymbols);
  } catch (e) {
    throw new LibcError(`dlopen libSystem: ${(e as Error).message}`, 0);
  }
  const s = lib.symbols;
  return makeFds(
    { pipe: s.pipe, close: s.close, dup: s.dup, read: s.read, write: s.write, poll: s.poll },
    s.__error,
    EAGAIN_DARWIN,
  );
}

/**
 * A stream of the bytes read from fd until end of file. Cancelling it stops
 * reading within one poll slice; the fd is closed when the stream ends.
 */
export function readableFromFd(
  fd: number,
  opts: { sliceMs?: number; chunk?: number } = {},
): ReadableStream<Uint8Array> {
  const c = fds();
  const slice = opts.sliceMs ?? 100;
  const size = opts.chunk ?? 65536;
  let cancelled = false;
  let closed = false;
  const closeFd = () => {
    if (!closed) {
      closed = true;
      c.close(fd);
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      while (!cancelled) {
        if (!(await c.waitReadable(fd, slice))) continue;
        if (cancelled) break;
        const buf = new Uint8Array(size);
        const n = await c.read(fd, buf);
        if (n === 0) {
          closeFd();
          ctrl.close();
          return;
        }
        ctrl.enqueue(buf.subarray(0, n));
        return;
      }
      closeFd();
    },
    cancel() {
      cancelled = true;
    },
  }, { highWaterMark: 0 });
}

/** Writes all of data to fd. */
export async function writeAllFd(fd: number, data: Uint8Array): Promise<void> {
  const c = fds();
  let rest: Uint8Array<ArrayBuffer> = new Uint8Array(data);
  while (rest.length > 0) {
    const n = await c.write(fd, rest);
    if (n === 0) throw new LibcError("write (wrote nothing)", 0);
    rest = rest.subarray(n);
  }
}
