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
 *
 * This module is cove's one resumable downloader: {@link streamResumable}
 * is the body loop (stall timeout, retries under the one retry policy of
 * core/retry.ts, resume from the bytes kept) that URL downloads and every
 * OCI blob, layer and manifest read share. A URL found in the cache is
 * revalidated with its ETag / Last-Modified; one that fails validation
 * afterwards is dropped by the caller (core/images/source.ts).
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import { formatSize } from "../units.ts";
import { BlobCache, type CachedBlob, type PartialMeta } from "./cache.ts";
import { displayUrl } from "./url.ts";
import { withFileLock } from "../store/fsutil.ts";
import {
  formatSeconds,
  parseRetryAfter,
  type RetryPolicy,
  retryPolicy,
  stallTimeoutMs,
  withRetry,
} from "../retry.ts";

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
  | { type: "retry"; url: string; attempt: number; reason: string; waitMs?: number }
  /** No bytes from the server for `idleMs`: still waiting, until the stall timeout. */
  | { type: "stalled"; url: string; received: number; total?: number; idleMs: number }
  | { type: "verify"; url: string }
  | { type: "done"; url: string; digest: string; size: number; cached: boolean };

/** Options of {@link download}. */
export interface DownloadOptions {
  /** The cache to use; default `$COVE_HOME/cache`. */
  cache?: BlobCache;
  /** Verify this checksum; a cached blob with this digest is reused without a request. */
  checksum?: Checksum;
  onProgress?: (e: DownloadEvent) => void;
  /** Fail an attempt when no bytes arrive for this long; default 30 s or `COVE_STALL_TIMEOUT`. */
  idleTimeoutMs?: number;
  /** Automatic resumed retries after a dropped connection or stall; default the retry policy's. */
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
  // A hit by URL alone is revalidated (ETag / Last-Modified): the server may have fixed the file.
  const stale = hit && !opts.checksum ? !(await stillFresh(url, hit, opts)) : false;
  if (hit && !stale) {
    emit({ type: "done", url, digest: hit.digest, size: hit.size, cached: true });
    return { ...hit, cached: true };
  }

  await cache.ensureDirs();
  const paths = await cache.partialPaths(url);
  // One downloader per URL at a time: a second one waits, then finds the blob. The lock
  // file stays: unlinking it would let a waiter on the old inode and a newcomer on a new
  // file both hold "the" lock.
  try {
    return await withFileLock(paths.meta + ".lock", async () => {
      const again = await findCached(cache, url, opts);
      if (again && !(stale && again.digest === hit?.digest)) {
        emit({ type: "done", url, digest: again.digest, size: again.size, cached: true });
        return { ...again, cached: true };
      }
      const want512 = opts.checksum?.algo === "sha512";
      const sums = await fetchToPartial(url, paths, opts, emit, want512);

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
      const validators = await readMeta(paths.meta);
      const blob = await cache.commit(paths.data, sums.sha256, {
        url,
        aliases,
        etag: validators?.etag,
        lastModified: validators?.lastModified,
      });
      await Deno.remove(paths.meta).catch(() => {});
      emit({ type: "done", url, digest: blob.digest, size: blob.size, cached: false });
      return { ...blob, cached: false };
    });
  } catch (e) {
    throw toCoveError(e, `download ${displayUrl(url)}`);
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

/**
 * Asks the server whether a blob cached for `url` is still its content: a
 * conditional GET with the validators it was downloaded with. True for a
 * 304, for a blob cached without validators, and when the server cannot be
 * asked (offline use keeps working); false when the server sends a new body.
 */
async function stillFresh(url: string, hit: CachedBlob, opts: DownloadOptions): Promise<boolean> {
  const { etag, lastModified } = hit.record;
  if (!etag && !lastModified) return true;
  const headers = new Headers({ "User-Agent": "cove", "Accept-Encoding": "identity" });
  if (etag) headers.set("If-None-Match", etag);
  if (lastModified) headers.set("If-Modified-Since", lastModified);
  const ms = opts.idleTimeoutMs ?? stallTimeoutMs();
  const signal = opts.signal
    ? AbortSignal.any([opts.signal, AbortSignal.timeout(ms)])
    : AbortSignal.timeout(ms);
  try {
    const res = await fetch(url, { headers, signal, redirect: "follow" });
    await res.body?.cancel().catch(() => {});
    if (res.status === 304) return true;
    if (!res.ok) return true; // the server has a problem: the cached copy still stands
    const newTag = res.headers.get("ETag");
    if (etag && newTag === etag) return true;
    return false;
  } catch {
    if (opts.signal?.aborted) throw interruptedBySignal(url);
    return true;
  }
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
 * Fetches `url` into the partial file, continuing what an earlier run kept
 * (with `Range` and `If-Range`), through {@link streamResumable}. Hashes the
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
  const validator = meta?.etag && !meta.etag.startsWith("W/") ? meta.etag : meta?.lastModified;
  if (offset === 0 || meta?.url !== url || !validator) {
    // Without a validator a resumed range could splice two versions: start over.
    await removePartial(paths);
    meta = undefined;
    offset = 0;
  }
  const stallMs = opts.idleTimeoutMs ?? stallTimeoutMs();
  let file: Deno.FsFile | undefined;
  let hashes: Hash[] = [];
  const freshHashes = () => {
    hashes = [createHash("sha256")];
    if (want512) hashes.push(createHash("sha512"));
  };
  freshHashes();
  let prefixHashed = offset === 0;
  let total: number | undefined = meta?.total;
  let received = offset;
  let last = 0;
  const every = opts.progressIntervalMs ?? 200;
  let complete = false;
  let answered = false;
  try {
    await streamResumable({
      offset,
      stallMs,
      signal: opts.signal,
      policy: retryPolicy({ retries: opts.retries }),
      open: async (from, signal) => {
        const headers = new Headers({ "User-Agent": "cove", "Accept-Encoding": "identity" });
        const v = meta?.etag && !meta.etag.startsWith("W/") ? meta.etag : meta?.lastModified;
        if (from > 0 && v) {
          headers.set("Range", `bytes=${from}-`);
          headers.set("If-Range", v);
        }
        answered = false;
        const res = await fetch(url, { headers, signal, redirect: "follow" });
        answered = true;
        if (res.status === 416 && from > 0) {
          // The partial already holds everything (or the file shrank): check the total.
          const whole = Number(
            /\/(\d+)$/.exec(res.headers.get("Content-Range") ?? "")?.[1] ?? NaN,
          );
          await res.body?.cancel();
          if (whole === from) {
            complete = true;
            return undefined;
          }
          await restart();
          throw new CoveError("download.changed", `${displayUrl(url)} changed while downloading`, {
            hint: "run the same command again",
            exit: ExitCode.Network,
          });
        }
        if (!res.ok) {
          await res.body?.cancel();
          throw httpError(url, res);
        }
        opts.check?.(res, url);
        let start = 0;
        if (res.status === 206) {
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("Content-Range") ?? "");
          start = m ? Number(m[1]) : -1;
        }
        if (start === from && from > 0 && !prefixHashed) {
          await hashPrefix(paths.data, from, hashes);
          prefixHashed = true;
        }
        const length = Number(res.headers.get("Content-Length") ?? NaN);
        total = Number.isFinite(length) && start >= 0 ? start + length : undefined;
        const newMeta: PartialMeta = {
          url,
          etag: res.headers.get("ETag") ?? undefined,
          lastModified: res.headers.get("Last-Modified") ?? undefined,
          total,
          started: meta?.started ?? Date.now(),
        };
        if (start > 0 && meta) {
          newMeta.etag ??= meta.etag;
          newMeta.lastModified ??= meta.lastModified;
        }
        meta = newMeta;
        await Deno.writeTextFile(paths.meta, JSON.stringify(newMeta) + "\n", { mode: 0o600 });
        if (!file) {
          file = await Deno.open(paths.data, { write: true, create: true, mode: 0o600 });
          await file.seek(from, Deno.SeekMode.Start);
        }
        emit({ type: "start", url, total, offset: start === from ? from : 0 });
        return { res, from: start };
      },
      restart,
      write: async (c) => {
        for (const h of hashes) h.update(c);
        let off = 0;
        while (off < c.length) off += await file!.write(c.subarray(off));
        received += c.length;
        const now = Date.now();
        if (now - last >= every) {
          last = now;
          emit({ type: "progress", url, received, total });
        }
        if (total !== undefined && received > total) {
          throw new CoveError(
            "download.too_large",
            `${displayUrl(url)} sent more than its Content-Length`,
            { hint: "run the same command again", exit: ExitCode.Network },
          );
        }
      },
      fail: (e, ctx) =>
        ctx.stalled
          ? new CoveError(
            "download.timeout",
            `download of ${displayUrl(url)} stalled: no data from ${host} for ${
              formatSeconds(stallMs)
            }${
              ctx.received
                ? ` at ${formatSize(ctx.received)}${total ? ` of ${formatSize(total)}` : ""}`
                : ""
            }`,
            {
              hint: `the download can be resumed: run the same command again${
                ctx.received ? "; the bytes so far are kept" : ""
              }`,
              exit: ExitCode.Network,
              cause: e,
            },
          )
          : !answered
          ? new CoveError("download.unreachable", `cannot reach ${host}: ${netReason(e)}`, {
            hint: "check the URL and your network connection",
            exit: ExitCode.Network,
            cause: e,
          })
          : new CoveError(
            "download.interrupted",
            `download of ${displayUrl(url)} was interrupted at ${formatSize(ctx.received)}${
              total ? ` of ${formatSize(total)}` : ""
            } (${firstLine(e)})`,
            { hint: "run the same command again to resume", exit: ExitCode.Network, cause: e },
          ),
      // An unknown host or a TLS failure does not get better by asking again.
      retryable: (e) =>
        RETRIABLE_DOWNLOAD.has(e.code) &&
        !/unknown host|are blocked|certificate|tls|handshake/i.test(e.message),
      onEvent: (e) => {
        if (e.type === "stalled") {
          emit({ type: "stalled", url, received: e.received, total, idleMs: e.idleMs });
        } else if (e.type === "retry") {
          emit({
            type: "retry",
            url,
            attempt: e.attempt,
            reason: e.error.message,
            waitMs: Math.round(e.waitMs),
          });
        }
      },
    }).catch((e) => {
      if (opts.signal?.aborted) throw interruptedBySignal(url);
      throw e;
    });
    if (!complete) {
      emit({ type: "progress", url, received, total });
      if (total !== undefined && received < total) {
        throw new CoveError(
          "download.interrupted",
          `download of ${displayUrl(url)} was interrupted at ${formatSize(received)} of ${
            formatSize(total)
          } (connection closed early)`,
          { hint: "run the same command again to resume", exit: ExitCode.Network },
        );
      }
    }
  } catch (e) {
    if (
      e instanceof Error && !(e instanceof CoveError) && /ENOSPC|No space left/i.test(e.message)
    ) {
      const kept = await fileSize(paths.data);
      throw new CoveError(
        "io.no_space",
        `the disk is full: downloading ${displayUrl(url)} stopped at ${formatSize(kept)}`,
        {
          hint: `the partial download (${
            formatSize(kept)
          }) was kept to resume: free some space and run the same command again, or remove it with 'cove image prune'`,
          cause: e,
        },
      );
    }
    // A failed attempt that kept no bytes leaves nothing behind.
    if (await fileSize(paths.data) === 0) {
      file?.close();
      file = undefined;
      await removePartial(paths);
    }
    throw e;
  } finally {
    file?.close();
  }
  if (complete) return await hashFile(paths.data, want512);
  return {
    sha256: hashes[0].digest("hex"),
    sha512: want512 ? hashes[1].digest("hex") : undefined,
  };

  async function restart(): Promise<void> {
    await file?.truncate(0);
    await file?.seek(0, Deno.SeekMode.Start);
    freshHashes();
    prefixHashed = true;
    received = 0;
  }
}

/** Download failures a resumed attempt may cure. */
const RETRIABLE_DOWNLOAD = new Set([
  "download.timeout",
  "download.interrupted",
  "download.unreachable",
  "download.changed",
  "download.range",
  "download.server",
  "download.too_large",
]);

/** What {@link streamResumable} reports while it runs. */
export type StreamEvent =
  /** No bytes for `idleMs` (the attempt is still waiting, up to `stallMs`). */
  | { type: "stalled"; received: number; idleMs: number; stallMs: number }
  /** Bytes flow again after a stall. */
  | { type: "flowing"; received: number }
  /** An attempt failed; the next starts after `waitMs` from byte `received`. */
  | {
    type: "retry";
    attempt: number;
    retries: number;
    waitMs: number;
    received: number;
    error: CoveError;
  };

/** One opened body of a {@link streamResumable} attempt. */
export interface OpenedBody {
  res: Response;
  /** The byte of the whole the body starts at: the asked offset (a 206), or 0 (a full 200). */
  from: number;
}

/** Options of {@link streamResumable}. */
export interface ResumableOptions {
  /**
   * Opens the body from byte `offset` (a Range request when it is > 0).
   * `signal` aborts the request (a stall, or the caller's signal). Throws a
   * CoveError for an answer that is not the body; returns `undefined` when
   * the bytes kept are already the whole.
   */
  open: (offset: number, signal: AbortSignal) => Promise<OpenedBody | undefined>;
  /** Takes the next bytes, in order. */
  write: (chunk: Uint8Array) => Promise<void>;
  /**
   * A body started at 0 while bytes were kept: with `restart`, they are
   * thrown away (it resets the sink); without, the repeated prefix is
   * skipped (for content-addressed data, where it cannot differ).
   */
  restart?: () => Promise<void>;
  /** Bytes already kept (a resumed partial); default 0. */
  offset?: number;
  /** At most this many bytes in all; more is `tooLarge()`. */
  limit?: number;
  tooLarge?: () => CoveError;
  /** No bytes (nor headers) for this long ends the attempt; default {@link stallTimeoutMs}. */
  stallMs?: number;
  /** Report `stalled` after this long without bytes; default a third of `stallMs`, at most 5 s. */
  stalledAfterMs?: number;
  policy?: RetryPolicy;
  signal?: AbortSignal;
  /** Turns a failure that is not yet a CoveError (a socket error, a stall) into one. */
  fail: (err: unknown, ctx: { stalled: boolean; received: number }) => CoveError;
  /** Whether a failure (as a CoveError) is worth another attempt. */
  retryable: (err: CoveError) => boolean;
  onEvent?: (e: StreamEvent) => void;
}

/** A failure of the sink (a full disk, a dead worker): passed on as it is, never retried. */
class SinkFailed extends Error {
  constructor(override readonly cause: unknown) {
    super("sink failed");
  }
}

/** A stall, as the reason of an aborted attempt. */
class Stalled extends Error {
  constructor() {
    super("no data");
  }
}

/**
 * The one resumable download loop, for every body cove fetches (image
 * URLs, OCI blobs and layers): each attempt opens the body from the bytes
 * kept so far, feeds it to `write`, and ends when no bytes arrive for the
 * stall timeout; failures are retried under the retry policy, resuming
 * where they stopped. Returns the number of bytes in the whole.
 */
export async function streamResumable(o: ResumableOptions): Promise<number> {
  const stallMs = o.stallMs ?? stallTimeoutMs();
  const noticeMs = o.stalledAfterMs ?? Math.min(5000, stallMs / 3);
  const policy = o.policy ?? retryPolicy();
  let received = o.offset ?? 0;
  return await withRetry(async () => {
    const ctl = new AbortController();
    const onAbort = () => ctl.abort(o.signal!.reason);
    o.signal?.addEventListener("abort", onAbort, { once: true });
    let stalled = false;
    let reported = false;
    let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
    let rejectStall: (e: unknown) => void = () => {};
    const stallP = new Promise<never>((_, rej) => {
      rejectStall = rej;
    });
    stallP.catch(() => {});
    // One lazy timer per attempt: a chunk only records the time (the hot path
    // stays cheap); the timer, when it fires, looks at how long it has been.
    let last = Date.now();
    let busy = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = () => {
      const idle = Date.now() - last;
      if (busy) {
        timer = setTimeout(tick, Math.max(10, Math.min(noticeMs, stallMs)));
        return;
      }
      if (idle >= stallMs) {
        stalled = true;
        const why = new Stalled();
        ctl.abort(why);
        rejectStall(why);
        reader?.cancel(why).catch(() => {});
        return;
      }
      if (!reported && idle >= noticeMs) {
        reported = true;
        o.onEvent?.({ type: "stalled", received, idleMs: idle, stallMs });
      }
      const due = reported || noticeMs >= stallMs ? stallMs : noticeMs;
      timer = setTimeout(tick, Math.max(10, due - idle));
    };
    const touch = () => {
      last = Date.now();
      if (reported) {
        reported = false;
        o.onEvent?.({ type: "flowing", received });
      }
    };
    const pause = () => {
      busy = true;
    };
    const arm = () => {
      busy = false;
      touch();
    };
    timer = setTimeout(tick, Math.min(noticeMs, stallMs));
    try {
      arm();
      const opened = await Promise.race([o.open(received, ctl.signal), stallP]);
      if (!opened) return received;
      const { res } = opened;
      if (opened.from !== received) {
        if (opened.from === 0 && !o.restart) {
          // skipped below
        } else if (opened.from === 0) {
          await o.restart!();
          received = 0;
        } else {
          await res.body?.cancel().catch(() => {});
          if (o.restart) await o.restart();
          received = 0;
          throw new CoveError("download.range", "the server resumed at the wrong byte", {
            hint: "run the same command again",
            exit: ExitCode.Network,
          });
        }
      }
      let skip = opened.from < received ? received - opened.from : 0;
      if (!res.body) return received; // an empty body
      reader = res.body.getReader();
      arm();
      for (;;) {
        // A stall cancels the reader (below), which ends a pending read.
        const r = await reader.read();
        if (stalled) throw new Stalled();
        if (r.done) break;
        let c = r.value;
        if (skip > 0) {
          const n = Math.min(skip, c.length);
          c = c.subarray(n);
          skip -= n;
          if (c.length === 0) {
            arm();
            continue;
          }
        }
        if (o.limit !== undefined && received + c.length > o.limit && o.tooLarge) {
          throw o.tooLarge();
        }
        pause(); // a slow disk (or worker) is not a stalled server
        const n = c.length; // the sink may transfer (detach) the chunk
        try {
          await o.write(c);
        } catch (e) {
          throw new SinkFailed(e);
        }
        received += n;
        arm();
      }
      return received;
    } catch (e) {
      await reader?.cancel().catch(() => {});
      if (o.signal?.aborted) throw o.signal.reason;
      if (e instanceof SinkFailed) throw e.cause;
      if (e instanceof CoveError) throw e;
      throw o.fail(e, { stalled: stalled || e instanceof Stalled, received });
    } finally {
      clearTimeout(timer);
      o.signal?.removeEventListener("abort", onAbort);
    }
  }, {
    policy,
    signal: o.signal,
    retryable: (e) => e instanceof CoveError && o.retryable(e),
    onRetry: (e, attempt, waitMs) =>
      o.onEvent?.({
        type: "retry",
        attempt,
        retries: policy.retries,
        waitMs,
        received,
        error: e as CoveError,
      }),
  });
}

/** The cause of a failed request, short: "unknown host", "connection refused", or the OS's words. */
function netReason(e: unknown): string {
  const all = `${e instanceof Error ? e.message : String(e)} ${
    e instanceof Error ? String(e.cause ?? "") : ""
  }`;
  if (/dns error|failed to lookup|name or service not known|nodename nor servname/i.test(all)) {
    return "unknown host";
  }
  if (/connection refused|ECONNREFUSED/i.test(all)) return "connection refused";
  const port = /requests to port (\d+) are blocked/i.exec(all);
  if (port) return `requests to port ${port[1]} are blocked (a port browsers and Deno refuse)`;
  const inner = e instanceof Error && e.cause instanceof Error ? e.cause.message : firstLine(e);
  return firstLine(inner.replace(/^error sending request for url \([^)]*\):\s*/, ""));
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
  const transient = res.status >= 500 || res.status === 429 || res.status === 408;
  const err = new CoveError(
    transient ? "download.server" : "download.http",
    `${displayUrl(url)}: the server answered ${what}`,
    {
      hint: transient ? "the server has a problem; try again later" : undefined,
      exit: ExitCode.Network,
    },
  );
  return Object.assign(err, { retryAfterMs: parseRetryAfter(res.headers.get("Retry-After")) });
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
  const ms = opts.timeoutMs ?? stallTimeoutMs();
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
