/**
 * The OCI image cache under `$COVE_HOME/cache/oci/`, keyed by manifest
 * digest (content-addressed):
 *
 * ```
 * images/<hex>/        a complete pulled image: manifest.json, config.json,
 *                      disk.img (sparse), nvram.bin, meta.json
 * staging/<hex>/       a pull in progress or interrupted: the same files plus
 *                      layers/<n>.done, one record per finished disk layer
 * staging/<hex>.lock   held (flock) by the process pulling <hex>
 * refs.json            "host/repo:tag" -> "sha256:<hex>"
 * tmp/push-<id>/       compressed layers of a push in progress
 * ```
 *
 * An image appears in `images/` only by one rename of its finished staging
 * directory, so a listed image is never partial. A pull killed with -9
 * leaves its staging directory and done records; the next pull of the same
 * manifest fetches only the layers without a record. {@link OciCache}
 * implements the image cache's provider interface so `cove image ls` and
 * `cove image prune` cover these entries too.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import type { CacheEntry, CacheProvider } from "../images/cache.ts";
import { withFileLock, writeFileAtomic } from "../store/fsutil.ts";

/** What `meta.json` records about a cached image. */
export interface ImageMeta {
  digest: string;
  /** References it was pulled as, newest first. */
  refs: string[];
  created: number;
  lastUsed: number;
  diskSize: number;
  os?: string;
  arch?: string;
}

/** A held lock on a staging directory. */
export interface StagingLock {
  release(): void;
}

function hexOf(digest: string): string {
  return digest.replace(/^sha256:/, "");
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/** Bytes a directory's files take on disk (sparse files count their blocks). */
export async function diskUsage(dir: string): Promise<number> {
  let total = 0;
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory) total += await diskUsage(p);
    else if (e.isFile) {
      const st = await Deno.stat(p).catch(() => undefined);
      if (st) total += st.blocks !== null ? st.blocks * 512 : st.size;
    }
  }
  return total;
}

/** The OCI cache rooted at `$COVE_HOME/cache/oci`. */
export class OciCache implements CacheProvider {
  readonly kind = "oci";
  readonly dir: string;

  constructor(cacheDir: string) {
    this.dir = join(cacheDir, "oci");
  }

  get imagesDir(): string {
    return join(this.dir, "images");
  }
  get stagingDir(): string {
    return join(this.dir, "staging");
  }
  get tmpDir(): string {
    return join(this.dir, "tmp");
  }
  get refsPath(): string {
    return join(this.dir, "refs.json");
  }

  /** The directory of a complete image. */
  imageDir(digest: string): string {
    return join(this.imagesDir, hexOf(digest));
  }
  /** The staging directory of a pull. */
  staging(digest: string): string {
    return join(this.stagingDir, hexOf(digest));
  }

  async ensure(): Promise<void> {
    for (const d of [this.dir, this.imagesDir, this.stagingDir, this.tmpDir]) {
      await Deno.mkdir(d, { recursive: true, mode: 0o700 });
    }
  }

  /** True when the image is complete in the cache. */
  async has(digest: string): Promise<boolean> {
    return await exists(join(this.imageDir(digest), "meta.json"));
  }

  async readMeta(digest: string): Promise<ImageMeta | undefined> {
    try {
      return JSON.parse(
        await Deno.readTextFile(join(this.imageDir(digest), "meta.json")),
      ) as ImageMeta;
    } catch {
      return undefined;
    }
  }

  /** Records a use of an image under a reference. */
  async touch(digest: string, ref: string): Promise<void> {
    const meta = await this.readMeta(digest);
    if (meta) {
      meta.lastUsed = Date.now();
      meta.refs = [ref, ...meta.refs.filter((r) => r !== ref)].slice(0, 20);
      await writeFileAtomic(
        join(this.imageDir(digest), "meta.json"),
        JSON.stringify(meta, null, 2) + "\n",
      );
    }
    await this.setRef(ref, digest);
  }

  /** Locks a staging directory; waits for another pull of the same image. */
  async lockStaging(digest: string, onWait?: () => void): Promise<StagingLock> {
    await this.ensure();
    const f = await Deno.open(`${this.staging(digest)}.lock`, {
      read: true,
      write: true,
      create: true,
      mode: 0o600,
    });
    if (!(await f.tryLock(true))) {
      onWait?.();
      await f.lock(true);
    }
    let held = true;
    return {
      release() {
        if (!held) return;
        held = false;
        try {
          f.unlockSync();
        } finally {
          f.close();
        }
      },
    };
  }

  /**
   * Publishes a finished staging directory as a complete image (one rename).
   * Refuses one in which any of `layers` (the disk layers by index, and the
   * nvram blob as `"nvram"`) lacks its done record naming its digest: a
   * disk with holes where a layer should be must never become a cache hit.
   */
  async publish(
    digest: string,
    meta: ImageMeta,
    layers: readonly { name: number | string; digest: string }[],
  ): Promise<string> {
    const staging = this.staging(digest);
    const missing: string[] = [];
    for (const l of layers) {
      const rec = await Deno.readTextFile(join(staging, "layers", `${l.name}.done`)).catch(() =>
        ""
      );
      if (rec.trim() !== l.digest) missing.push(String(l.name));
    }
    if (missing.length) {
      throw new CoveError(
        "oci.incomplete_pull",
        `not publishing ${digest}: ${missing.length} of ${layers.length} layers were not pulled (${
          missing.slice(0, 4).join(", ")
        }${missing.length > 4 ? ", ..." : ""})`,
        { hint: "pull again: the layers already pulled are kept", exit: ExitCode.Failure },
      );
    }
    await writeFileAtomic(join(staging, "meta.json"), JSON.stringify(meta, null, 2) + "\n");
    await Deno.remove(join(staging, "layers"), { recursive: true }).catch(() => {});
    const final = this.imageDir(digest);
    if (await exists(final)) {
      await Deno.remove(staging, { recursive: true });
    } else {
      await Deno.rename(staging, final);
    }
    // The lock file stays (see download.ts): a waiter may hold its inode.
    return final;
  }

  async #readRefs(): Promise<Record<string, string>> {
    try {
      return JSON.parse(await Deno.readTextFile(this.refsPath)) as Record<string, string>;
    } catch {
      return {};
    }
  }

  /** Points a tag reference at a digest. */
  async setRef(ref: string, digest: string): Promise<void> {
    if (ref.includes("@")) return;
    await this.ensure();
    await withFileLock(join(this.dir, ".refs.lock"), async () => {
      const refs = await this.#readRefs();
      refs[ref] = digest;
      await writeFileAtomic(this.refsPath, JSON.stringify(refs, null, 2) + "\n");
    });
  }

  /** The digest a tag reference was last pulled as. */
  async resolveRef(ref: string): Promise<string | undefined> {
    return (await this.#readRefs())[ref];
  }

  /** Complete images and partial pulls, as cache entries. */
  async list(): Promise<CacheEntry[]> {
    const out: CacheEntry[] = [];
    for (
      const e of await Array.fromAsync(Deno.readDir(this.imagesDir)).catch(() =>
        [] as Deno.DirEntry[]
      )
    ) {
      if (!e.isDirectory) continue;
      const digest = `sha256:${e.name}`;
      const meta = await this.readMeta(digest);
      if (!meta) continue;
      out.push({
        kind: this.kind,
        id: digest,
        size: await diskUsage(join(this.imagesDir, e.name)),
        lastUsed: meta.lastUsed,
        source: meta.refs[0] ?? digest,
      });
    }
    for (
      const e of await Array.fromAsync(Deno.readDir(this.stagingDir)).catch(() =>
        [] as Deno.DirEntry[]
      )
    ) {
      if (!e.isDirectory) continue;
      const dir = join(this.stagingDir, e.name);
      let source = `sha256:${e.name}`;
      try {
        source =
          (JSON.parse(await Deno.readTextFile(join(dir, "pull.json"))) as { ref: string }).ref;
      } catch { /* not written yet */ }
      const st = await Deno.stat(dir).catch(() => undefined);
      out.push({
        kind: this.kind,
        id: `partial:sha256:${e.name}`,
        size: await diskUsage(dir),
        lastUsed: st?.mtime?.getTime() ?? 0,
        source,
        partial: true,
      });
    }
    return out;
  }

  /** Removes images and partial pulls by id; skips pulls that are running. */
  async remove(ids: string[]): Promise<number> {
    let freed = 0;
    for (const id of ids) {
      const partial = id.startsWith("partial:");
      const digest = partial ? id.slice("partial:".length) : id;
      if (!/^sha256:[a-f0-9]{64}$/.test(digest)) continue;
      if (partial) {
        const lockPath = `${this.staging(digest)}.lock`;
        const f = await Deno.open(lockPath, { read: true, write: true, create: true, mode: 0o600 })
          .catch(() => undefined);
        if (!f) continue;
        try {
          if (!(await f.tryLock(true))) continue; // a pull is running
          const dir = this.staging(digest);
          freed += await diskUsage(dir);
          await Deno.remove(dir, { recursive: true }).catch(() => {});
        } finally {
          f.close();
        }
        continue;
      }
      const dir = this.imageDir(digest);
      const usage = await diskUsage(dir);
      // Retire with one rename so a half-deleted image is never listed.
      const grave = join(this.tmpDir, `delete-${hexOf(digest)}-${crypto.randomUUID()}`);
      await this.ensure();
      try {
        await Deno.rename(dir, grave);
      } catch {
        continue;
      }
      await Deno.remove(grave, { recursive: true }).catch(() => {});
      freed += usage;
      const refs = await this.#readRefs();
      let changed = false;
      for (const [r, d] of Object.entries(refs)) {
        if (d === digest) {
          delete refs[r];
          changed = true;
        }
      }
      if (changed) await writeFileAtomic(this.refsPath, JSON.stringify(refs, null, 2) + "\n");
    }
    return freed;
  }
}
