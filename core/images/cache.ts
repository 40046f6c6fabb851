/**
 * The content-addressed image cache under `$COVE_HOME/cache/`:
 *
 * ```
 * cache/blobs/sha256/<hex>      downloaded files, named by their sha256
 * cache/index.json              url -> digest, sizes, last-used times
 * cache/partial/<key>.part      an interrupted download, resumable
 * cache/partial/<key>.json      its URL and validators (ETag, Last-Modified)
 * cache/oci/                    the OCI layer cache (core/oci, merged in listings)
 * ```
 *
 * A blob appears in `blobs/` only once it is complete and verified (rename
 * into place), so a listed entry is never partial. The index is rewritten
 * atomically under an exclusive lock on `cache/.lock`.
 *
 * Listings and pruning work on {@link CacheEntry} values from several
 * providers (this blob cache, the OCI cache), so `cove image ls` shows one
 * table and `cove image prune` applies one budget across all of them.
 * @module
 */
import { join } from "node:path";
import { CoveError } from "../errors.ts";
import { withFileLock, writeFileAtomic } from "../store/fsutil.ts";
import { coveHome } from "../store/store.ts";
import { displayUrl, urlKey } from "./url.ts";

/** One item in a cache, as `cove image ls` shows it. */
export interface CacheEntry {
  /** Which cache holds it: "download" (this module) or "oci". */
  kind: string;
  /** A stable id, e.g. `sha256:<hex>`; what prune reports. */
  id: string;
  /** Bytes on disk. */
  size: number;
  /** Last time cove used it (ms since the epoch). */
  lastUsed: number;
  /** Where it came from: a URL, an OCI reference. */
  source: string;
  /** For partial downloads: bytes so far (size is then the same). */
  partial?: boolean;
}

/** A cache that can list and remove its entries; the OCI cache implements this too. */
export interface CacheProvider {
  kind: string;
  list(): Promise<CacheEntry[]>;
  /** Removes the entries with these ids; returns the bytes freed. */
  remove(ids: string[]): Promise<number>;
}

/** The cache directory, `$COVE_HOME/cache`. */
export function cacheDir(home = coveHome()): string {
  return join(home, "cache");
}

/** One blob's record in the index. */
export interface BlobRecord {
  size: number;
  /** ms since the epoch. */
  created: number;
  lastUsed: number;
  /** URLs it was downloaded from, newest first. */
  sources: string[];
  /** Other digests of the same bytes (e.g. `sha512:<hex>`) that were verified. */
  aliases: string[];
  /** The server's validators from the last download, to revalidate a URL hit. */
  etag?: string;
  lastModified?: string;
}

interface IndexFile {
  version: 1;
  /** Keyed by `sha256:<hex>`. */
  blobs: Record<string, BlobRecord>;
  /** URL -> `sha256:<hex>`. */
  urls: Record<string, string>;
}

/** The metadata kept beside a partial download. */
export interface PartialMeta {
  url: string;
  etag?: string;
  lastModified?: string;
  /** Content length of the full resource, when the server said. */
  total?: number;
  started: number;
}

/** The download blob cache. All paths are under {@link cacheDir}. */
export class BlobCache implements CacheProvider {
  readonly kind = "download";
  readonly dir: string;

  constructor(dir = cacheDir()) {
    this.dir = dir;
  }

  get blobsDir(): string {
    return join(this.dir, "blobs", "sha256");
  }
  get partialDir(): string {
    return join(this.dir, "partial");
  }
  get indexPath(): string {
    return join(this.dir, "index.json");
  }

  /** The file of a blob, by `sha256:<hex>` digest. */
  blobPath(digest: string): string {
    const hex = digest.replace(/^sha256:/, "");
    if (!/^[0-9a-f]{64}$/.test(hex)) {
      throw new CoveError("cache.digest", `not a sha256 digest: ${digest}`);
    }
    return join(this.blobsDir, hex);
  }

  /** Paths of the resumable partial download of a URL. */
  async partialPaths(url: string): Promise<{ data: string; meta: string }> {
    const key = (await sha256Hex(url)).slice(0, 32);
    return {
      data: join(this.partialDir, `${key}.part`),
      meta: join(this.partialDir, `${key}.json`),
    };
  }

  async ensureDirs(): Promise<void> {
    await Deno.mkdir(this.blobsDir, { recursive: true, mode: 0o700 });
    await Deno.mkdir(this.partialDir, { recursive: true, mode: 0o700 });
  }

  /** Runs `fn` with the index read under the exclusive cache lock; saves it if `fn` returns true. */
  async withIndex<T>(fn: (idx: IndexFile) => T | Promise<T>, save = true): Promise<T> {
    await Deno.mkdir(this.dir, { recursive: true, mode: 0o700 });
    return await withFileLock(join(this.dir, ".lock"), async () => {
      const idx = await this.readIndex();
      const out = await fn(idx);
      if (save) await writeFileAtomic(this.indexPath, JSON.stringify(idx, null, 1) + "\n");
      return out;
    });
  }

  private async readIndex(): Promise<IndexFile> {
    try {
      const parsed = JSON.parse(await Deno.readTextFile(this.indexPath)) as Partial<IndexFile>;
      if (parsed.version === 1 && parsed.blobs && parsed.urls) return parsed as IndexFile;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound) && !(e instanceof SyntaxError)) throw e;
    }
    return { version: 1, blobs: {}, urls: {} };
  }

  /**
   * Finds a complete blob by a digest (`sha256:…` or `sha512:…`), or by the
   * URL it was downloaded from. Marks it used. Returns undefined on a miss;
   * a blob whose file vanished is forgotten.
   */
  async lookup(q: { digest?: string; url?: string }): Promise<CachedBlob | undefined> {
    return await this.withIndex(async (idx) => {
      let key: string | undefined;
      if (q.digest) {
        if (q.digest.startsWith("sha256:")) key = idx.blobs[q.digest] ? q.digest : undefined;
        else key = Object.keys(idx.blobs).find((k) => idx.blobs[k].aliases.includes(q.digest!));
      } else if (q.url) {
        key = idx.urls[urlKey(q.url)];
      }
      if (!key || !idx.blobs[key]) return undefined;
      const path = this.blobPath(key);
      try {
        const st = await Deno.stat(path);
        if (st.size !== idx.blobs[key].size) throw new Deno.errors.NotFound("size changed");
      } catch {
        forget(idx, key);
        return undefined;
      }
      idx.blobs[key].lastUsed = Date.now();
      const shown = q.url && displayUrl(q.url);
      if (q.url && shown && !idx.blobs[key].sources.includes(shown)) {
        idx.blobs[key].sources.unshift(shown);
        idx.urls[urlKey(q.url)] = key;
      }
      return { digest: key, path, size: idx.blobs[key].size, record: { ...idx.blobs[key] } };
    });
  }

  /**
   * Moves a complete, verified file into the cache (a rename on the same
   * file system) and records it. Returns the cached blob.
   */
  async commit(
    file: string,
    sha256: string,
    opts: { url?: string; aliases?: string[]; etag?: string; lastModified?: string } = {},
  ): Promise<CachedBlob> {
    await this.ensureDirs();
    const digest = `sha256:${sha256}`;
    const path = this.blobPath(digest);
    const size = (await Deno.stat(file)).size;
    await Deno.chmod(file, 0o600);
    await Deno.rename(file, path);
    return await this.withIndex((idx) => {
      const now = Date.now();
      const rec = idx.blobs[digest] ??
        { size, created: now, lastUsed: now, sources: [], aliases: [] };
      rec.size = size;
      rec.lastUsed = now;
      for (const a of opts.aliases ?? []) if (!rec.aliases.includes(a)) rec.aliases.push(a);
      if (opts.url) {
        rec.etag = opts.etag;
        rec.lastModified = opts.lastModified;
      }
      if (opts.url) {
        // index.json keeps no secrets: sources are display forms, keys hashed when needed.
        const shown = displayUrl(opts.url);
        rec.sources = [shown, ...rec.sources.filter((s) => s !== shown)];
        idx.urls[urlKey(opts.url)] = digest;
      }
      idx.blobs[digest] = rec;
      return { digest, path, size, record: { ...rec } };
    });
  }

  /** Lists complete blobs and partial downloads. */
  async list(): Promise<CacheEntry[]> {
    const entries = await this.withIndex(
      (idx) =>
        Object.entries(idx.blobs).map(([id, r]): CacheEntry => ({
          kind: this.kind,
          id,
          size: r.size,
          lastUsed: r.lastUsed,
          source: r.sources[0] ?? "",
        })),
      false,
    );
    for (const p of await this.partials()) {
      entries.push({
        kind: this.kind,
        id: `partial:${p.key}`,
        size: p.size,
        lastUsed: p.lastUsed,
        source: p.meta?.url ? displayUrl(p.meta.url) : "",
        partial: true,
      });
    }
    return entries;
  }

  private async partials(): Promise<
    { key: string; size: number; lastUsed: number; meta?: PartialMeta }[]
  > {
    const out: { key: string; size: number; lastUsed: number; meta?: PartialMeta }[] = [];
    let dir: AsyncIterable<Deno.DirEntry>;
    try {
      dir = Deno.readDir(this.partialDir);
      for await (const e of dir) {
        if (!e.name.endsWith(".part")) continue;
        const key = e.name.slice(0, -5);
        const st = await Deno.stat(join(this.partialDir, e.name));
        let meta: PartialMeta | undefined;
        try {
          meta = JSON.parse(await Deno.readTextFile(join(this.partialDir, `${key}.json`)));
        } catch { /* a partial without metadata restarts from zero */ }
        out.push({ key, size: st.size, lastUsed: st.mtime?.getTime() ?? 0, meta });
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return out;
  }

  async remove(ids: string[]): Promise<number> {
    let freed = 0;
    const blobIds = ids.filter((i) => i.startsWith("sha256:"));
    if (blobIds.length) {
      freed += await this.withIndex(async (idx) => {
        let n = 0;
        for (const id of blobIds) {
          const rec = idx.blobs[id];
          if (!rec) continue;
          try {
            await Deno.remove(this.blobPath(id));
            n += rec.size;
          } catch (e) {
            if (!(e instanceof Deno.errors.NotFound)) throw e;
          }
          forget(idx, id);
        }
        return n;
      });
    }
    for (const id of ids.filter((i) => i.startsWith("partial:"))) {
      const key = id.slice("partial:".length);
      if (!/^[0-9a-f]+$/.test(key)) continue;
      const data = join(this.partialDir, `${key}.part`);
      // The download's own lock (download.ts): a held one means it is still running.
      const lock = await Deno.open(join(this.partialDir, `${key}.json.lock`), {
        read: true,
        write: true,
        create: true,
        mode: 0o600,
      }).catch(() => undefined);
      if (!lock) continue;
      try {
        if (!(await lock.tryLock(true))) continue;
        try {
          freed += (await Deno.stat(data)).size;
          await Deno.remove(data);
        } catch { /* already gone */ }
        await Deno.remove(join(this.partialDir, `${key}.json`)).catch(() => {});
      } finally {
        lock.close();
      }
    }
    return freed;
  }
}

/** A complete blob in the cache. */
export interface CachedBlob {
  /** `sha256:<hex>`. */
  digest: string;
  path: string;
  size: number;
  record: BlobRecord;
}

function forget(idx: IndexFile, digest: string): void {
  delete idx.blobs[digest];
  for (const [u, d] of Object.entries(idx.urls)) if (d === digest) delete idx.urls[u];
}

async function sha256Hex(s: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** What {@link pruneCaches} removes. */
export interface PruneOptions {
  /** Remove entries unused for longer than this many milliseconds. */
  olderThanMs?: number;
  /** Then remove least recently used entries until the total is at most this many bytes. */
  budget?: number;
  /** Only report what would be removed. */
  dryRun?: boolean;
  /** The clock, for tests. */
  now?: number;
}

/** The outcome of a prune. */
export interface PruneResult {
  removed: CacheEntry[];
  freed: number;
  kept: number;
  keptSize: number;
}

/** Lists the entries of every provider, most recently used first. */
export async function listCaches(providers: CacheProvider[]): Promise<CacheEntry[]> {
  const all = (await Promise.all(providers.map((p) => p.list()))).flat();
  return all.sort((a, b) => b.lastUsed - a.lastUsed);
}

/**
 * Removes entries older than `olderThanMs`, then the least recently used
 * ones until the total fits `budget`. With neither option, removes
 * everything. Partial downloads count like any other entry.
 */
export async function pruneCaches(
  providers: CacheProvider[],
  opts: PruneOptions = {},
): Promise<PruneResult> {
  const now = opts.now ?? Date.now();
  const entries = await listCaches(providers);
  const remove = new Set<CacheEntry>();
  if (opts.olderThanMs === undefined && opts.budget === undefined) {
    for (const e of entries) remove.add(e);
  }
  if (opts.olderThanMs !== undefined) {
    for (const e of entries) if (now - e.lastUsed > opts.olderThanMs) remove.add(e);
  }
  if (opts.budget !== undefined) {
    let total = entries.filter((e) => !remove.has(e)).reduce((s, e) => s + e.size, 0);
    // entries are newest first: evict from the end.
    for (let i = entries.length - 1; i >= 0 && total > opts.budget; i--) {
      if (remove.has(entries[i])) continue;
      remove.add(entries[i]);
      total -= entries[i].size;
    }
  }
  let freed = 0;
  if (!opts.dryRun) {
    for (const p of providers) {
      const ids = [...remove].filter((e) => e.kind === p.kind).map((e) => e.id);
      if (ids.length) freed += await p.remove(ids);
    }
  } else {
    freed = [...remove].reduce((s, e) => s + e.size, 0);
  }
  const kept = entries.filter((e) => !remove.has(e));
  return {
    removed: [...remove],
    freed,
    kept: kept.length,
    keptSize: kept.reduce((s, e) => s + e.size, 0),
  };
}
