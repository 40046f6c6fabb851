/**
 * `cove cp` through the guest agent: files move in chunks with
 * guest-file-open/read/write/close, keep their mode, and are checked with
 * SHA-256 on both sides. Directories need `recursive` and travel as a tar
 * stream: the host side is piped through `tar` as it goes; the guest side
 * is a temporary tar file (guest-exec cannot stream), packed or unpacked by
 * the guest's `tar`.
 *
 * Nothing partial is left at a destination: data goes to a temporary name
 * in the destination's directory and is renamed into place only once the
 * checksum matches; a failure removes the temporary file, on either side.
 * @module
 */
import { basename, dirname, join, posix } from "node:path";
import { concatBytes } from "../bytes.ts";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import { agentExec, agentRun, fromBase64, toBase64 } from "./exec.ts";
import type { AgentTransport } from "./transport.ts";

/** Bytes per guest-file-read. */
export const READ_CHUNK = 4 * 2 ** 20;
/** Bytes per guest-file-write (a control request body is at most 1 MiB of JSON). */
export const WRITE_CHUNK = 512 * 1024;

/** One side of a copy: a host path, or a path in a VM. */
export interface CpEndpoint {
  /** The VM, for `NAME:PATH`. */
  vm?: string;
  path: string;
}

/**
 * Parses `NAME:PATH` (a guest path) or a host path. A host path that holds
 * a colon can be written `./a:b`.
 */
export function parseCpEndpoint(arg: string): CpEndpoint {
  const m = /^([A-Za-z0-9][A-Za-z0-9._-]{0,63}):(.*)$/.exec(arg);
  if (!m || arg.startsWith("./") || arg.startsWith("/")) return { path: arg };
  if (m[2] === "") {
    throw new CoveError("cp.usage", `'${arg}' names no path in the VM`, {
      hint: `write ${m[1]}:/path/in/guest`,
      exit: ExitCode.Usage,
    });
  }
  return { vm: m[1], path: m[2] };
}

/** What a copy did. */
export interface CpResult {
  /** Where it landed. */
  destination: string;
  /** Bytes that crossed the channel. */
  bytes: number;
  /** SHA-256 of the file (of the tar stream for a directory). */
  sha256: string;
  directory: boolean;
}

interface GuestStat {
  kind: "file" | "directory" | "other";
  mode: number;
  size: number;
}

function tmpSuffix(): string {
  return `.cove-${crypto.randomUUID().slice(0, 8)}`;
}

/** stat(1) in the guest; null when the path does not exist. */
export async function guestStat(agent: AgentTransport, path: string): Promise<GuestStat | null> {
  const r = await agentExec(agent, ["stat", "-L", "-c", "%F|%a|%s", "--", path]);
  if (r.code !== 0) {
    const err = new TextDecoder().decode(r.stderr);
    if (/No such file|Not a directory/i.test(err)) return null;
    throw new CoveError(
      "cp.guest_stat",
      `cannot look at ${path} in the guest: ${err.trim().split("\n").pop()}`,
    );
  }
  const [type, mode, size] = new TextDecoder().decode(r.stdout).trim().split("|");
  return {
    kind: type.includes("regular") ? "file" : type === "directory" ? "directory" : "other",
    mode: parseInt(mode, 8),
    size: Number(size),
  };
}

function guestMissing(vm: string, path: string): CoveError {
  return new CoveError("cp.not_found", `${vm}:${path} does not exist in the guest`, {
    hint: `check the path with 'cove exec ${vm} -- ls -l ${posix.dirname(path)}'`,
    exit: ExitCode.NotFound,
  });
}

function needsRecursive(where: string): CoveError {
  return new CoveError("cp.is_directory", `${where} is a directory`, {
    hint: "copy directories with -r",
    exit: ExitCode.Usage,
  });
}

/**
 * Opens a guest file, hands each chunk of it to `sink` and closes it. Stops
 * at end of file, or once `limit` bytes have been read (the last chunk may
 * pass it). `timeoutMs` bounds each agent command; returns the bytes read.
 */
async function readGuestChunks(
  agent: AgentTransport,
  path: string,
  sink: (chunk: Uint8Array) => Promise<void> | void,
  opts: { limit?: number; timeoutMs?: number } = {},
): Promise<number> {
  const cmd = opts.timeoutMs === undefined ? undefined : { timeoutMs: opts.timeoutMs };
  const limit = opts.limit ?? Infinity;
  const handle = await agent.command<number>("guest-file-open", { path, mode: "r" }, cmd);
  let bytes = 0;
  try {
    while (bytes < limit) {
      const r = await agent.command<{ count: number; "buf-b64": string; eof: boolean }>(
        "guest-file-read",
        { handle, count: READ_CHUNK },
        cmd,
      );
      const data = fromBase64(r["buf-b64"]);
      if (data.length) {
        bytes += data.length;
        await sink(data);
      }
      if (r.eof || data.length === 0) break;
    }
  } finally {
    await agent.command("guest-file-close", { handle }).catch(() => {});
  }
  return bytes;
}

/** Reads a guest file chunk by chunk into `sink`; returns its size and SHA-256. */
export async function readGuestFile(
  agent: AgentTransport,
  path: string,
  sink: (chunk: Uint8Array) => Promise<void>,
): Promise<{ bytes: number; sha256: string }> {
  const { createHash } = await import("node:crypto"); // slow to load: only when copying
  const hash = createHash("sha256");
  const bytes = await readGuestChunks(agent, path, async (data) => {
    hash.update(data);
    await sink(data);
  });
  return { bytes, sha256: hash.digest("hex") };
}

/** Writes a stream into a (new) guest file; returns its size and SHA-256. */
export async function writeGuestFile(
  agent: AgentTransport,
  path: string,
  source: AsyncIterable<Uint8Array>,
): Promise<{ bytes: number; sha256: string }> {
  const { createHash } = await import("node:crypto"); // slow to load: only when copying
  const handle = await agent.command<number>("guest-file-open", { path, mode: "w" });
  const hash = createHash("sha256");
  let bytes = 0;
  try {
    for await (const chunk of rechunk(source, WRITE_CHUNK)) {
      hash.update(chunk);
      let off = 0;
      while (off < chunk.length) {
        const part = chunk.subarray(off);
        const r = await agent.command<{ count: number }>("guest-file-write", {
          handle,
          "buf-b64": toBase64(part),
        });
        if (!(r.count > 0)) {
          throw new CoveError(
            "cp.guest_write",
            `the guest wrote nothing to ${path} (is its disk full?)`,
          );
        }
        off += r.count;
      }
      bytes += chunk.length;
    }
    await agent.command("guest-file-flush", { handle });
  } finally {
    await agent.command("guest-file-close", { handle }).catch(() => {});
  }
  return { bytes, sha256: hash.digest("hex") };
}

async function* rechunk(src: AsyncIterable<Uint8Array>, size: number): AsyncIterable<Uint8Array> {
  let pending: Uint8Array[] = [];
  let n = 0;
  for await (const b of src) {
    let off = 0;
    while (off < b.length) {
      const take = Math.min(size - n, b.length - off);
      pending.push(b.subarray(off, off + take));
      n += take;
      off += take;
      if (n === size) {
        yield concatBytes(pending);
        pending = [];
        n = 0;
      }
    }
  }
  if (n > 0) yield concatBytes(pending);
}

async function hostStat(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
    throw toCoveError(e, path);
  }
}

async function guestSha256(agent: AgentTransport, path: string): Promise<string> {
  const out = await agentRun(agent, ["sha256sum", "--", path], `sha256sum ${path}`);
  return out.trim().split(/\s+/)[0];
}

function mismatch(what: string): CoveError {
  return new CoveError("cp.checksum", `the copy of ${what} does not match its source (SHA-256)`, {
    hint: "retry; nothing was kept at the destination",
  });
}

async function writeAll(f: Deno.FsFile, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await f.write(b.subarray(off));
}

/** Copies a guest file or (with `recursive`) directory to the host. */
export async function copyFromGuest(
  agent: AgentTransport,
  vm: string,
  guestPath: string,
  hostPath: string,
  opts: { recursive?: boolean } = {},
): Promise<CpResult> {
  const st = await guestStat(agent, guestPath);
  if (!st) throw guestMissing(vm, guestPath);
  if (st.kind === "directory" && !opts.recursive) needsRecursiveThrow(`${vm}:${guestPath}`);
  const into = await hostStat(hostPath);
  const dest = into?.isDirectory ? join(hostPath, posix.basename(guestPath)) : hostPath;
  if (!into && !(await hostStat(dirname(dest)))?.isDirectory) {
    throw new CoveError("cp.no_parent", `${dirname(dest)} is not a directory on the host`, {
      hint: "create it first, or copy to an existing directory",
      exit: ExitCode.NotFound,
    });
  }
  return st.kind === "directory"
    ? await guestDirToHost(agent, guestPath, dest)
    : await guestFileToHost(agent, vm, guestPath, dest, st.mode);
}

function needsRecursiveThrow(where: string): never {
  throw needsRecursive(where);
}

async function guestFileToHost(
  agent: AgentTransport,
  vm: string,
  guestPath: string,
  dest: string,
  mode: number,
): Promise<CpResult> {
  const tmp = join(dirname(dest), `.${basename(dest)}${tmpSuffix()}`);
  let f: Deno.FsFile | undefined;
  try {
    f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
    const file = f;
    const got = await readGuestFile(agent, guestPath, (b) => writeAll(file, b));
    await f.sync();
    f.close();
    f = undefined;
    if ((await guestSha256(agent, guestPath)) !== got.sha256) throw mismatch(`${vm}:${guestPath}`);
    await Deno.chmod(tmp, mode & 0o7777);
    await Deno.rename(tmp, dest);
    return { destination: dest, bytes: got.bytes, sha256: got.sha256, directory: false };
  } catch (e) {
    try {
      f?.close();
    } catch { /* closed */ }
    await Deno.remove(tmp).catch(() => {});
    throw toCoveError(e, `copying to ${dest}`);
  }
}

async function guestDirToHost(
  agent: AgentTransport,
  guestPath: string,
  dest: string,
): Promise<CpResult> {
  const gtar = `/tmp/cove-cp${tmpSuffix()}.tar`;
  const stage = join(dirname(dest), `.${basename(dest)}${tmpSuffix()}`);
  const base = posix.basename(guestPath.replace(/\/+$/, "")) || ".";
  try {
    await agentRun(
      agent,
      ["tar", "-C", posix.dirname(guestPath.replace(/\/+$/, "")) || "/", "-cf", gtar, "--", base],
      `tar of ${guestPath}`,
    );
    await Deno.mkdir(stage, { mode: 0o700 });
    const tar = new Deno.Command("tar", {
      args: ["-xf", "-", "-C", stage],
      stdin: "piped",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const w = tar.stdin.getWriter();
    let got;
    try {
      got = await readGuestFile(agent, gtar, (b) => w.write(b));
    } finally {
      await w.close().catch(() => {});
    }
    const [status, errText] = await Promise.all([tar.status, new Response(tar.stderr).text()]);
    if (!status.success) {
      throw new CoveError(
        "cp.host_tar",
        `tar could not unpack ${guestPath} on the host: ${errText.trim().split("\n").pop()}`,
      );
    }
    if ((await guestSha256(agent, gtar)) !== got.sha256) throw mismatch(guestPath);
    await Deno.rename(join(stage, base), dest);
    return { destination: dest, bytes: got.bytes, sha256: got.sha256, directory: true };
  } catch (e) {
    throw toCoveError(e, `copying to ${dest}`);
  } finally {
    await Deno.remove(stage, { recursive: true }).catch(() => {});
    await agentExec(agent, ["rm", "-f", "--", gtar]).catch(() => {});
  }
}

/** Copies a host file or (with `recursive`) directory into the guest. */
export async function copyToGuest(
  agent: AgentTransport,
  vm: string,
  hostPath: string,
  guestPath: string,
  opts: { recursive?: boolean } = {},
): Promise<CpResult> {
  const src = await hostStat(hostPath);
  if (!src) {
    throw new CoveError("cp.not_found", `${hostPath} does not exist on the host`, {
      exit: ExitCode.NotFound,
    });
  }
  if (src.isDirectory && !opts.recursive) throw needsRecursive(hostPath);
  const into = await guestStat(agent, guestPath);
  const dest = into?.kind === "directory"
    ? posix.join(guestPath, basename(hostPath.replace(/\/+$/, "")))
    : guestPath;
  if (!into) {
    const parent = await guestStat(agent, posix.dirname(dest));
    if (parent?.kind !== "directory") {
      throw new CoveError("cp.no_parent", `${vm}:${posix.dirname(dest)} is not a directory`, {
        hint: "create it first, or copy to an existing directory",
        exit: ExitCode.NotFound,
      });
    }
  }
  return src.isDirectory
    ? await hostDirToGuest(agent, hostPath, dest)
    : await hostFileToGuest(agent, hostPath, dest, (src.mode ?? 0o644) & 0o7777);
}

async function hostFileToGuest(
  agent: AgentTransport,
  hostPath: string,
  dest: string,
  mode: number,
): Promise<CpResult> {
  const tmp = `${posix.dirname(dest)}/.${posix.basename(dest)}${tmpSuffix()}`;
  let f: Deno.FsFile | undefined;
  try {
    f = await Deno.open(hostPath, { read: true });
    const got = await writeGuestFile(agent, tmp, f.readable);
    f = undefined; // the stream closed it
    await agentRun(agent, [
      "sh",
      "-c",
      'set -e; chmod "$1" "$2"; h=$(sha256sum < "$2"); [ "${h%% *}" = "$4" ] || { echo "checksum mismatch" >&2; exit 1; }; mv -f -- "$2" "$3"',
      "sh",
      mode.toString(8),
      tmp,
      dest,
      got.sha256,
    ], `placing ${dest}`);
    return { destination: dest, bytes: got.bytes, sha256: got.sha256, directory: false };
  } catch (e) {
    try {
      f?.close();
    } catch { /* closed */ }
    await agentExec(agent, ["rm", "-f", "--", tmp]).catch(() => {});
    throw toCoveError(e, `copying ${hostPath}`);
  }
}

async function hostDirToGuest(
  agent: AgentTransport,
  hostPath: string,
  dest: string,
): Promise<CpResult> {
  const gtar = `/tmp/cove-cp${tmpSuffix()}.tar`;
  const trimmed = hostPath.replace(/\/+$/, "") || "/";
  const tar = new Deno.Command("tar", {
    args: ["-C", dirname(trimmed), "-cf", "-", "--", basename(trimmed)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const got = await writeGuestFile(agent, gtar, tar.stdout);
    const [status, errText] = await Promise.all([tar.status, new Response(tar.stderr).text()]);
    if (!status.success) {
      throw new CoveError(
        "cp.host_tar",
        `tar could not pack ${hostPath}: ${errText.trim().split("\n").pop()}`,
      );
    }
    await agentRun(agent, [
      "sh",
      "-c",
      'set -e; h=$(sha256sum < "$1"); [ "${h%% *}" = "$4" ] || { echo "checksum mismatch" >&2; exit 1; }; d=$(mktemp -d "$(dirname "$2")/.cove-XXXXXX"); trap \'rm -rf "$d"\' EXIT; tar -xf "$1" -C "$d"; mv -- "$d/$3" "$2"',
      "sh",
      gtar,
      dest,
      basename(trimmed),
      got.sha256,
    ], `unpacking into ${dest}`);
    return { destination: dest, bytes: got.bytes, sha256: got.sha256, directory: true };
  } catch (e) {
    try {
      tar.kill();
    } catch { /* ended */ }
    throw toCoveError(e, `copying ${hostPath}`);
  } finally {
    await agentExec(agent, ["rm", "-f", "--", gtar]).catch(() => {});
  }
}

/**
 * Reads a small guest text file whole (e.g. /proc/net/tcp for automatic
 * forwards), at most `limit` bytes; undefined when it cannot be read.
 */
export async function readGuestText(
  agent: AgentTransport,
  path: string,
  limit = 4 * 1024 * 1024,
): Promise<string | undefined> {
  const parts: Uint8Array[] = [];
  try {
    await readGuestChunks(agent, path, (data) => {
      parts.push(data);
    }, { limit, timeoutMs: 5_000 });
  } catch {
    return undefined;
  }
  return new TextDecoder().decode(concatBytes(parts));
}
