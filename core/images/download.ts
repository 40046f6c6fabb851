/**
 * The downloader: streams an http(s) URL into the content-addressed cache
 * ({@link ./cache.ts}), hashing as it writes, and verifies a sha256 or
 * sha512 checksum before the file is committed.
 *
 * An interrupted download (dropped connection, idle timeout, a full disk,
 * Ctrl-C) keeps its bytes in `cache/partial/` with the URL and the server's
 * validators; the next attempt asks for the rest with `Range` and
 * `If-Range`, so a changed file restarts from zero instead of splicing two
 * versions. A checksum mismatch deletes the partial: those bytes are wrong.
 * Nothing else is left behind on failure.
 *
 * Progress goes to an `onProgress` callback; the CLI decides whether that
 * is a bar on a TTY, JSON lines, or nothing.
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import { formatSize } from "../units.ts";
import { BlobCache, type CachedBlob, type PartialMeta } from "./cache.ts";
import { displayUrl } from "./url.ts";

/** A checksum to verify. */
export interface Checksum {
  algo: "sha256" | "sha512";
  /** Lower-case hex. */
  hex: string;
}

/** Progress events, in order: start, progress..., done (or retry, then start again). */
export type DownloadEvent =
  | { type: "start"; url: string; total?: number; offset: number }
  | { type: "progress"; url: string; received: number; total?: number }
  | { type: "retry"; url: string; attempt: number; reason: string }
  | { type: "verify"; url: string }
  | { type: "done"; url: string; digest: string; size: number; cached: boolean };

/** Options of {@link download}. */
export interface DownloadOptions {
  /** The cache to use; default `$COVE_HOME/cache`. */
  cache?: BlobCache;
  /** Verify this checksum; a cached blob with this digest is reused without a request. */
  checksum?: Checksum;
  onProgress?: (e: DownloadEvent) => void;
  /** Fail when no bytes arrive for this long; default 30 s or `COVE_DOWNLOAD_TIMEOUT` (seconds). */
  idleTimeoutMs?: number;
  /** Automatic resumed retries after a dropped connection; default 2. */
  retries?: number;
  /** Ignore a cached copy found by URL (one found by checksum is still exact). */
  refresh?: boolean;
  signal?: AbortSignal;
  /** Called with the response headers before the body is read; throw to refuse. */
  check?: (res: Response, url: string) => void;
  /** Milliseconds between progress events; default 200. */
  progressIntervalMs?: number;
}

/** The result of {@link download}. */
export interface Downloaded extends CachedBlob {
  /** True when no bytes were transferred (a cache hit). */
  cached: boolean;
}

/** Parses `sha256:<hex>` / `sha512:<hex>` (or a bare 64/128-digit hex). */
export function parseChecksum(s: string): Checksum {
  const m = /^(?:(sha256|sha512):)?([0-9a-fA-F]+)$/.exec(s.trim());
  if (m) {
    const hex = m[2].toLowerCase();
    const algo = (m[1] as Checksum["algo"] | undefined) ??
      (hex.length === 64 ? "sha256" : hex.length === 128 ? "sha512" : undefined);
    if (algo && hex.length === (algo === "sha256" ? 64 : 128)) return { algo, hex };
  }
  throw new CoveError("usage.checksum", `'${s}' is not a sha256 or sha512 checksum`, {
    hint: "write sha256:<64 hex digits> or sha512:<128 hex digits>",
    exit: ExitCode.Usage,
  });
}

/** `algo:hex`. */
export function checksumString(c: Checksum): string {
  return `${c.algo}:${c.hex}`;
}

function defaultIdleTimeout(): number {
  const env = Deno.env.get("COVE_DOWNLOAD_TIMEOUT");
  const n = env ? Number(env) : NaN;
  return Number.isFinite(n) && n > 0 ? n * 1000 : 30_000;
}

/** Thrown internally for failures that a resumed retry may cure. */
class Retriable extends Error {
  constructor(readonly coveError: CoveError) {
    super(coveError.message);
  }
}

/**
 * Downloads `url` into the cache (or finds it there) and returns the blob.
 * Throws one CoveError per failure: not found, HTTP error, unreachable,
 * timeout, interrupted, checksum mismatch, disk full.
 */
export async function download(url: string, opts: DownloadOptions = {}): Promise<Downloaded> {
  const cache = opts.cache ?? new BlobCache();
  // Listeners (JSON progress, the bar) see the URL without its secrets.
  const listener = opts.onProgress;
  const emit = listener
    ? (e: DownloadEvent) => listener({ ...e, url: displayUrl(e.url) })
    : () => {};
  checkUrl(url);
  const hit = await findCached(cache, url, opts);
  if (hit) {
    emit({ type: "done", url, digest: hit.digest, size: hit.size, cached: true });
    return { ...hit, cached: true };
  }

  await cache.ensureDirs();
  const paths = await cache.partialPaths(url);
  // One downloader per URL at a time: a second one waits, then finds the blob.
  const lockFile = await Deno.open(paths.meta + ".lock", {
    read: true,
    write: true,
    create: true,
    mode: 0o600,
  });
  try {
    await lockFile.lock(true);
    const again = await findCached(cache, url, opts);
    if (again) {
      emit({ type: "done", url, digest: again.digest, size: again.size, cached: true });
      return { ...again, cached: true };
    }
    const retries = opts.retries ?? 2;
    const want512 = opts.checksum?.algo === "sha512";
    let sums: Sums;
    for (let attempt = 0;; attempt++) {
      try {
        sums = await fetchToPartial(url, paths, opts, emit, want512);
        break;
      } catch (e) {
        if (e instanceof Retriable && attempt < retries && !opts.signal?.aborted) {
          emit({ type: "retry", url, attempt: attempt + 1, reason: e.message });
          await new Promise((r) => setTimeout(r, Math.min(4000, 250 * 2 ** attempt)));
          continue;
        }
        throw e instanceof Retriable ? e.coveError : e;
      }
    }

    emit({ type: "verify", url });
    if (opts.checksum) {
      const got = opts.checksum.algo === "sha512" ? sums.sha512! : sums.sha256;
      if (got !== opts.checksum.hex) {
        await removePartial(paths);
        throw new CoveError(
          "download.checksum",
          `checksum mismatch for ${displayUrl(url)}: expected ${opts.checksum.algo}:${
            short(opts.checksum.hex)
          }, got ${opts.checksum.algo}:${short(got)}`,
          {
            hint: "the file was corrupted or changed upstream; nothing was kept",
            exit: ExitCode.Network,
          },
        );
      }
    }
    const aliases = sums.sha512 ? [`sha512:${sums.sha512}`] : [];
    const blob = await cache.commit(paths.data, sums.sha256, { url, aliases });
    await Deno.remove(paths.meta).catch(() => {});
    emit({ type: "done", url, digest: blob.digest, size: blob.size, cached: false });
    return { ...blob, cached: false };
  } catch (e) {
    throw toCoveError(e, `download ${displayUrl(url)}`);
  } finally {
    // The lock file stays: unlinking it would let a waiter on the old inode and a
    // newcomer on a new file both hold "the" lock.
    lockFile.close();
  }
}

function short(hex: string): string {
  return hex.length > 16 ? `${hex.slice(0, 12)}…` : hex;
}

function checkUrl(url: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CoveError("download.url", `'${displayUrl(url)}' is not a URL`, {
      exit: ExitCode.Usage,
    });
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new CoveError("download.url", `cannot download ${u.protocol} URLs: ${displayUrl(url)}`, {
      hint: "use an http:// or https:// URL",
      exit: ExitCode.Usage,
    });
  }
}

async function findCached(
  cache: BlobCache,
  url: string,
  opts: DownloadOptions,
): Promise<CachedBlob | undefined> {
  if (opts.checksum) {
    const d = checksumString(opts.checksum);
    const hit = await cache.lookup({ digest: d });
    if (hit) return hit;
    // A blob cached under this URL may carry the checksum under the other algorithm.
    const byUrl = await cache.lookup({ url });
    if (byUrl && opts.checksum.algo === "sha256" && byUrl.digest === d) return byUrl;
    return undefined;
  }
  if (opts.refresh) return undefined;
  return await cache.lookup({ url });
}

async function readMeta(path: string): Promise<PartialMeta | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as PartialMeta;
  } catch {
    return undefined;
  }
}

async function removePartial(paths: { data: string; meta: string }): Promise<void> {
  await Deno.remove(paths.data).catch(() => {});
  await Deno.remove(paths.meta).catch(() => {});
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch {
    return 0;
  }
}

type Sums = { sha256: string; sha512?: string };

/**
 * One HTTP attempt: continues the partial file, or starts it. Hashes the
 * kept prefix and then every byte as it is written; returns the digests.
 */
async function fetchToPartial(
  url: string,
  paths: { data: string; meta: string },
  opts: DownloadOptions,
  emit: (e: DownloadEvent) => void,
  want512: boolean,
): Promise<Sums> {
  const host = new URL(url).host;
  let meta = await readMeta(paths.meta);
  let offset = meta?.url === url ? await fileSize(paths.data) : 0;
  if (offset === 0 || meta?.url !== url) {
    await removePartial(paths);
    meta = undefined;
    offset = 0;
  }

  const headers = new Headers({ "User-Agent": "cove", "Accept-Encoding": "identity" });
  const validator = meta?.etag && !meta.etag.startsWith("W/") ? meta.etag : meta?.lastModified;
  if (offset > 0 && validator) {
    headers.set("Range", `bytes=${offset}-`);
    headers.set("If-Range", validator);
  } else if (offset > 0) {
    // Without a validator a resumed range could splice two versions: start over.
    await removePartial(paths);
    offset = 0;
  }

  const idleMs = opts.idleTimeoutMs ?? defaultIdleTimeout();
  const ctl = new AbortController();
  let timedOut = false;
  let timer = setTimeout(onIdle, idleMs);
  function onIdle() {
    timedOut = true;
    ctl.abort();
  }
  const kick = () => {
    clearTimeout(timer);
    timer = setTimeout(onIdle, idleMs);
  };
  const onAbort = () => ctl.abort();
  opts.signal?.addEventListener("abort", onAbort);

  const interrupted = (received: number, total: number | undefined, why: string) =>
    new Retriable(
      new CoveError(
        timedOut ? "download.timeout" : "download.interrupted",
        timedOut
          ? `download of ${displayUrl(url)} stalled: no data from ${host} for ${
            Math.round(idleMs / 1000)
          }s`
          : `download of ${displayUrl(url)} was interrupted at ${formatSize(received)}${
            total ? ` of ${formatSize(total)}` : ""
          } (${why})`,
        { hint: "run the same command again to resume", exit: ExitCode.Network },
      ),
    );

  try {
    let res: Response;
    try {
      res = await fetch(url, { headers, signal: ctl.signal, redirect: "follow" });
    } catch (e) {
      if (opts.signal?.aborted) throw interruptedBySignal(url);
      if (timedOut) throw interrupted(offset, undefined, "timeout");
      const reason = e instanceof Error ? e.message.split("\n")[0] : String(e);
      throw new Retriable(
        new CoveError("download.unreachable", `cannot reach ${host}: ${reason}`, {
          hint: "check the URL and your network connection",
          exit: ExitCode.Network,
          cause: e,
        }),
      );
    }
    kick();

    if (res.status === 416 && offset > 0) {
      // The partial already holds everything (or the file shrank): check the total.
      const total = Number(/\/(\d+)$/.exec(res.headers.get("Content-Range") ?? "")?.[1] ?? NaN);
      await res.body?.cancel();
      if (total === offset) return await hashFile(paths.data, want512);
      await removePartial(paths);
      throw new Retriable(
        new CoveError("download.changed", `${displayUrl(url)} changed while downloading`, {
          hint: "run the same command again",
          exit: ExitCode.Network,
        }),
      );
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw httpError(url, res);
    }
    opts.check?.(res, url);

    let append = false;
    if (res.status === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("Content-Range") ?? "");
      if (m && Number(m[1]) === offset) append = true;
      else {
        await res.body?.cancel();
        await removePartial(paths);
        throw new Retriable(
          new CoveError(
            "download.range",
            `${host} answered a resumed download with the wrong range`,
            {
              hint: "run the same command again to start over",
              exit: ExitCode.Network,
            },
          ),
        );
      }
    }
    if (!append) offset = 0;
    const hashes: Hash[] = [createHash("sha256")];
    if (want512) hashes.push(createHash("sha512"));
    if (append) await hashPrefix(paths.data, offset, hashes);
    const length = Number(res.headers.get("Content-Length") ?? NaN);
    const total = Number.isFinite(length) ? offset + length : undefined;
    const newMeta: PartialMeta = {
      url,
      etag: res.headers.get("ETag") ?? undefined,
      lastModified: res.headers.get("Last-Modified") ?? undefined,
      total,
      started: meta?.started ?? Date.now(),
    };
    if (append && meta) {
      newMeta.etag ??= meta.etag;
      newMeta.lastModified ??= meta.lastModified;
    }
    await Deno.writeTextFile(paths.meta, JSON.stringify(newMeta) + "\n", { mode: 0o600 });

    const file = await Deno.open(paths.data, {
      write: true,
      create: true,
      truncate: !append,
      append,
      mode: 0o600,
    });
    emit({ type: "start", url, total, offset });
    let received = offset;
    let last = 0;
    const every = opts.progressIntervalMs ?? 200;
    try {
      if (!res.body) throw interrupted(received, total, "empty response");
      const reader = res.body.getReader();
      while (true) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          if (opts.signal?.aborted) throw interruptedBySignal(url);
          throw interrupted(received, total, timedOut ? "timeout" : firstLine(e));
        }
        if (chunk.done) break;
        kick();
        for (const h of hashes) h.update(chunk.value);
        let off = 0;
        while (off < chunk.value.length) off += await file.write(chunk.value.subarray(off));
        received += chunk.value.length;
        const now = Date.now();
        if (now - last >= every) {
          last = now;
          emit({ type: "progress", url, received, total });
        }
      }
    } finally {
      file.close();
    }
    emit({ type: "progress", url, received, total });
    if (total !== undefined && received < total) {
      throw interrupted(received, total, "connection closed early");
    }
    return {
      sha256: hashes[0].digest("hex"),
      sha512: want512 ? hashes[1].digest("hex") : undefined,
    };
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener("abort", onAbort);
  }
}

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}

function interruptedBySignal(url: string): CoveError {
  return new CoveError("interrupted", `download of ${displayUrl(url)} was interrupted`, {
    hint: "run the same command again to resume",
    exit: ExitCode.Interrupted,
  });
}

function httpError(url: string, res: Response): CoveError {
  const what = `${res.status}${res.statusText ? " " + res.statusText : ""}`;
  if (res.status === 404 || res.status === 410) {
    return new CoveError("download.not_found", `${displayUrl(url)} was not found (${what})`, {
      hint: "check the URL; for a catalog alias, the catalog may need updating",
      exit: ExitCode.NotFound,
    });
  }
  if (res.status === 401 || res.status === 403) {
    return new CoveError("download.denied", `${displayUrl(url)}: access denied (${what})`, {
      exit: ExitCode.Network,
    });
  }
  return new CoveError("download.http", `${displayUrl(url)}: the server answered ${what}`, {
    hint: res.status >= 500 ? "the server has a problem; try again later" : undefined,
    exit: ExitCode.Network,
  });
}

/** Feeds the first `length` bytes of a file to the hashes. */
async function hashPrefix(path: string, length: number, hashes: Hash[]): Promise<void> {
  const f = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(1 << 20);
    let left = length;
    while (left > 0) {
      const n = await f.read(buf.subarray(0, Math.min(buf.length, left)));
      if (n === null) throw new Error("partial download shrank");
      for (const h of hashes) h.update(buf.subarray(0, n));
      left -= n;
    }
  } finally {
    f.close();
  }
}

/** Hashes a file with sha256 (always) and sha512 (when asked), streaming. */
export async function hashFile(
  path: string,
  sha512 = false,
): Promise<{ sha256: string; sha512?: string }> {
  const hashes: Hash[] = [createHash("sha256")];
  if (sha512) hashes.push(createHash("sha512"));
  const f = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(1 << 20);
    while (true) {
      const n = await f.read(buf);
      if (n === null) break;
      const chunk = buf.subarray(0, n);
      for (const h of hashes) h.update(chunk);
    }
  } finally {
    f.close();
  }
  return { sha256: hashes[0].digest("hex"), sha512: sha512 ? hashes[1].digest("hex") : undefined };
}

/**
 * Fetches a small text document (a checksum file), with a timeout and a
 * size limit. Not cached.
 */
export async function fetchText(
  url: string,
  opts: { timeoutMs?: number; maxBytes?: number; signal?: AbortSignal } = {},
): Promise<string> {
  checkUrl(url);
  const host = new URL(url).host;
  const ms = opts.timeoutMs ?? defaultIdleTimeout();
  const signal = opts.signal
    ? AbortSignal.any([opts.signal, AbortSignal.timeout(ms)])
    : AbortSignal.timeout(ms);
  let res: Response;
  try {
    res = await fetch(url, { signal, headers: { "User-Agent": "cove" } });
  } catch (e) {
    const timeout = e instanceof DOMException && e.name === "TimeoutError";
    throw new CoveError(
      timeout ? "download.timeout" : "download.unreachable",
      timeout
        ? `no answer from ${host} within ${Math.round(ms / 1000)}s`
        : `cannot reach ${host}: ${firstLine(e)}`,
      { exit: ExitCode.Network, cause: e },
    );
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw httpError(url, res);
  }
  const max = opts.maxBytes ?? 4 << 20;
  const buf = new Uint8Array(await res.arrayBuffer());
  if (buf.length > max) {
    throw new CoveError(
      "download.too_large",
      `${displayUrl(url)} is larger than ${formatSize(max)}`,
      {
        exit: ExitCode.Network,
      },
    );
  }
  return new TextDecoder().decode(buf);
}
