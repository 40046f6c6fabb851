/**
 * Small file-system helpers with the store's guarantees: atomic writes
 * (temporary file, fsync, rename), private permissions, sparse files that
 * only grow, copy-on-write or hole-preserving copies, and work under an
 * exclusive lock file.
 * @module
 */
import { dirname, join } from "node:path";
import { clonefile, copySparseLinux, LibcError } from "../../ffi/libc.ts";
import { CoveError } from "../errors.ts";
import { formatSize } from "../units.ts";
import { isAllZero } from "../zero.ts";

/**
 * Runs `fn` holding an exclusive flock on `path` (created 0600 if absent),
 * waiting for another holder to let go; the lock goes with the descriptor
 * whatever happens, so a killed holder releases it.
 */
export async function withFileLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const f = await Deno.open(path, { read: true, write: true, create: true, mode: 0o600 });
  try {
    await f.lock(true);
    return await fn();
  } finally {
    f.close();
  }
}

/** Writes a file atomically with mode 0600. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = join(dirname(path), `.${crypto.randomUUID()}.tmp`);
  try {
    const f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    try {
      const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
      let off = 0;
      while (off < bytes.length) off += await f.write(bytes.subarray(off));
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Creates a sparse file of `size` bytes, or grows an existing one. Never shrinks. */
export async function ensureSparseFile(path: string, size: number, what = path): Promise<void> {
  let current: number | undefined;
  try {
    current = (await Deno.stat(path)).size;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (current === undefined) {
    const f = await Deno.open(path, { write: true, createNew: true, mode: 0o600 });
    try {
      await f.truncate(size);
    } finally {
      f.close();
    }
    return;
  }
  if (size < current) {
    throw new CoveError(
      "disk.shrink",
      `${what}: ${formatSize(size)} is smaller than the image (${
        formatSize(current)
      }); disks only grow`,
      { hint: `use a size of at least ${formatSize(current)}`, exit: 2 },
    );
  }
  if (size > current) await Deno.truncate(path, size);
}

/** How a file was copied. */
export type CopyMethod = "clonefile" | "reflink" | "sparse" | "copy";

/**
 * Copies a file to a new path, copy-on-write where the file system allows
 * (clonefile on macOS, reflink on Linux) and otherwise copying only the
 * data ranges so holes stay holes. The destination gets mode 0600.
 */
export async function cloneFile(src: string, dst: string): Promise<CopyMethod> {
  if (Deno.build.os === "darwin") {
    try {
      clonefile(src, dst);
      await Deno.chmod(dst, 0o600);
      return "clonefile";
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      // Not APFS (or across volumes): fall through to a plain copy.
      await Deno.copyFile(src, dst);
      await Deno.chmod(dst, 0o600);
      return "copy";
    }
  }
  const size = (await Deno.stat(src)).size;
  const f = await Deno.open(dst, { write: true, createNew: true, mode: 0o600 });
  f.close();
  if (Deno.build.os === "linux") {
    try {
      const r = await copySparseLinux(src, dst);
      await Deno.truncate(dst, size);
      return r.method;
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
      await Deno.truncate(dst, 0);
    }
  }
  await copyZeroSkipping(src, dst, size);
  return "copy";
}

/** Portable fallback: copies in blocks, leaving all-zero blocks as holes. */
async function copyZeroSkipping(src: string, dst: string, size: number): Promise<void> {
  const BLOCK = 1 << 20;
  const buf = new Uint8Array(BLOCK);
  const input = await Deno.open(src, { read: true });
  const output = await Deno.open(dst, { write: true });
  try {
    let pos = 0;
    while (pos < size) {
      const n = await input.read(buf);
      if (n === null || n === 0) break;
      const chunk = buf.subarray(0, n);
      if (!isAllZero(chunk)) {
        await output.seek(pos, Deno.SeekMode.Start);
        let off = 0;
        while (off < n) off += await output.write(chunk.subarray(off));
      }
      pos += n;
    }
    await output.truncate(size);
  } finally {
    input.close();
    output.close();
  }
}
