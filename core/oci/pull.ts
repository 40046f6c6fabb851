/**
 * Pulling a Tart-format VM image into the OCI cache.
 *
 * Disk layers download in parallel. Each streams through a sha256 of the
 * compressed bytes and Apple's LZ4 decoder straight into the staging disk
 * at the layer's offset; all-zero ranges are not written, so the disk stays
 * sparse. A dropped connection resumes the layer with a Range request, the
 * hash and decoder state kept. A finished layer gets a done record; after a
 * kill -9 the next pull of the same manifest fetches only layers without
 * one. Layers some cached image already has (a re-pushed tag, a shared
 * base) are copied from its disk instead of downloaded. The uncompressed
 * content digests are not re-computed (the compressed digest already pins
 * every byte), as in Tart. The image is published into the cache with one
 * rename when every layer is verified. For large images the hashing,
 * decoding and writing run in layer workers (core/oci/workers.ts), one per
 * core, while this thread does the HTTP. Memory per layer is a few MiB,
 * whatever the disk size.
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import { parseFlag } from "../flags.ts";
import { runPool } from "../pool.ts";
import { writeFileAtomic } from "../store/fsutil.ts";
import { formatSize } from "../units.ts";
import { defaultCredentialLookup } from "./auth.ts";
import { type ImageMeta, OciCache } from "./cache.ts";
import { InlineSink, type LayerSink, LayerWriter, readFull, writeAll } from "./layer.ts";
import { workerLost, WorkerPool } from "./workers.ts";
import { streamResumable } from "../images/download.ts";
import { formatReference, manifestReference, parseReference, type Reference } from "./reference.ts";
import { digestMismatch, RegistryClient, type RegistryOptions } from "./registry.ts";
import {
  type DiskLayer,
  IMAGE_DISK,
  parseTartConfig,
  parseTartManifest,
  type TartConfig,
  type TartImage,
} from "./tart.ts";

/** Progress of a pull, for a progress bar. */
export interface PullProgress {
  /** Compressed bytes of disk layers to fetch in this run. */
  total: number;
  /** Compressed bytes fetched so far in this run. */
  done: number;
  /** Layers finished / all disk layers. */
  layersDone: number;
  layers: number;
  /**
   * Layers whose registry has sent nothing for a while: the pull is waiting
   * (until the stall timeout ends the attempt and it is retried).
   */
  stalled: number;
}

/** Options of {@link pullImage}. */
export interface PullOptions extends RegistryOptions {
  /** `$COVE_HOME`. */
  home: string;
  /** Disk layers fetched at once (default 4). */
  concurrency?: number;
  /** Called as bytes arrive. */
  onProgress?: (p: PullProgress) => void;
}

/** A complete image in the cache. */
export interface PulledImage {
  ref: Reference;
  /** Manifest digest. */
  digest: string;
  dir: string;
  diskPath: string;
  nvramPath?: string;
  tart: TartConfig;
  image: TartImage;
  /** True when nothing had to be downloaded. */
  cached: boolean;
  /** Compressed disk bytes fetched in this run. */
  fetched: number;
  /** Disk layers that were already done from an interrupted pull. */
  resumedLayers: number;
  /** Disk layers copied from other cached images instead of downloaded. */
  reusedLayers: number;
}

/** A network failure worth retrying in place (the bytes so far stay). */
function transient(e: unknown): boolean {
  return e instanceof CoveError &&
    ["oci.dropped", "oci.timeout", "oci.unreachable", "oci.server"].includes(e.code);
}

/**
 * A failure that proves the staged bytes wrong (or the image unusable), so
 * they are deleted. Anything else (DNS, TLS, a full disk, a dead worker,
 * Ctrl-C) keeps the staging directory for the next pull to resume.
 */
export function spoilsStaging(e: unknown): boolean {
  return e instanceof CoveError &&
    [
      "oci.digest_mismatch",
      "oci.bad_blob",
      "oci.lz4_corrupt",
      "oci.truncated",
      "oci.not_vm",
      "oci.unsupported",
    ].includes(e.code);
}

/** True for a full disk (ENOSPC), however it was wrapped (a layer worker sends only its message). */
function noSpace(e: unknown): boolean {
  return e instanceof Error && /ENOSPC|No space left|os error 28/i.test(e.message);
}

/** Bytes allocated on disk by the files under `dir` (a sparse disk counts what it holds). */
async function allocated(dir: string): Promise<number> {
  let n = 0;
  try {
    for await (const e of Deno.readDir(dir)) {
      const p = join(dir, e.name);
      if (e.isDirectory) n += await allocated(p);
      else if (e.isFile) {
        const st = await Deno.stat(p);
        n += st.blocks !== null ? st.blocks * 512 : st.size;
      }
    }
  } catch { /* gone */ }
  return n;
}

/** The manifest of a complete cached image, or undefined if it cannot be read. */
async function cachedManifest(
  cache: OciCache,
  digest: string,
  refName: string,
): Promise<{ bytes: Uint8Array<ArrayBuffer>; digest: string; image: TartImage } | undefined> {
  try {
    const bytes = await Deno.readFile(join(cache.imageDir(digest), "manifest.json"));
    if (`sha256:${createHash("sha256").update(bytes).digest("hex")}` !== digest) return undefined;
    return { bytes, digest, image: parseTartManifest(refName, bytes) };
  } catch {
    return undefined;
  }
}

/** Resolves a reference to a validated manifest. */
export async function resolveManifest(
  client: RegistryClient,
  ref: Reference,
): Promise<{ bytes: Uint8Array<ArrayBuffer>; digest: string; image: TartImage }> {
  const text = formatReference(ref);
  const m = await client.getManifest(manifestReference(ref));
  if (!m) {
    throw new CoveError(
      "oci.not_found",
      ref.digest
        ? `no manifest ${ref.digest.slice(0, 19)}… in ${ref.registry}/${ref.repository}`
        : `tag '${ref.tag}' does not exist in ${ref.registry}/${ref.repository}`,
      { hint: "check the repository and tag", exit: ExitCode.NotFound },
    );
  }
  return { bytes: m.bytes, digest: m.digest, image: parseTartManifest(text, m.bytes, m.mediaType) };
}

/** Downloads a whole blob to a file, verifying size and digest, resuming on drops. */
async function blobToFile(
  client: RegistryClient,
  digest: string,
  size: number,
  path: string,
  what: string,
): Promise<void> {
  const hash = createHash("sha256");
  const f = await Deno.open(path, { write: true, create: true, truncate: true, mode: 0o600 });
  let got = 0;
  try {
    got = await streamResumable({
      ...client.streamOptions(what),
      open: async (offset, signal) => {
        const res = await client.getBlob(digest, offset, true, signal);
        return { res, from: res.status === 206 ? offset : 0 };
      },
      write: async (c) => {
        hash.update(c);
        await writeAll(f, c);
      },
      limit: size,
      tooLarge: () =>
        new CoveError(
          "oci.bad_blob",
          `blob ${digest.slice(0, 19)}… is larger than its manifest says`,
          { exit: ExitCode.Network },
        ),
    });
  } finally {
    f.close();
  }
  if (got !== size) throw truncated(client.registry, digest, got, size);
  const d = `sha256:${hash.digest("hex")}`;
  if (d !== digest) throw digestMismatch(client.registry, digest, d);
}

function truncated(registry: string, digest: string, got: number, size: number): CoveError {
  return new CoveError(
    "oci.truncated",
    `blob ${digest.slice(0, 19)}… from '${registry}' is truncated (${got} of ${size} bytes)`,
    {
      hint:
        "the registry sent less than the manifest promises; retry, and if it persists the image is broken",
      exit: ExitCode.Network,
    },
  );
}

/** Where an identical layer already sits decoded: a cached image's disk. */
interface LocalLayer {
  diskPath: string;
  offset: number;
  size: number;
}

/** Disk layers of every cached image, by compressed digest. */
async function localLayers(cache: OciCache): Promise<Map<string, LocalLayer>> {
  const found = new Map<string, LocalLayer>();
  for (
    const e of await Array.fromAsync(Deno.readDir(cache.imagesDir)).catch(() =>
      [] as Deno.DirEntry[]
    )
  ) {
    const dir = join(cache.imagesDir, e.name);
    try {
      if (!(await Deno.stat(join(dir, "meta.json"))).isFile) continue;
      const img = parseTartManifest(e.name, await Deno.readFile(join(dir, "manifest.json")));
      for (const l of img.disks) {
        found.set(l.digest, {
          diskPath: join(dir, IMAGE_DISK),
          offset: l.offset,
          size: l.uncompressedSize,
        });
      }
    } catch { /* not a usable image */ }
  }
  return found;
}

/** Copies a layer from a cached image's disk instead of downloading it. */
async function copyLocalLayer(
  src: LocalLayer,
  layer: DiskLayer,
  diskPath: string,
  fresh: boolean,
): Promise<void> {
  if (src.size !== layer.uncompressedSize) throw new Error("size differs");
  const from = await Deno.open(src.diskPath, { read: true });
  const file = await Deno.open(diskPath, { read: true, write: true });
  const w = new LayerWriter(file, layer, fresh);
  const buf = new Uint8Array(4 * 1024 * 1024);
  try {
    await from.seek(src.offset, Deno.SeekMode.Start);
    while (w.written < layer.uncompressedSize) {
      const n = await readFull(
        from,
        buf.subarray(0, Math.min(buf.length, layer.uncompressedSize - w.written)),
      );
      if (n === 0) throw new Error("cached disk is short");
      await w.place(buf.subarray(0, n));
    }
    w.complete();
  } finally {
    from.close();
    file.close();
  }
}

/**
 * Fetches one disk layer into `disk` at its offset. `fresh` says the range
 * is known to be holes (a new staging disk).
 */
async function pullDiskLayer(
  client: RegistryClient,
  layer: DiskLayer,
  diskPath: string,
  fresh: boolean,
  signal: AbortSignal,
  onBytes: (n: number) => void,
  workers: WorkerPool | undefined,
  onStall: (stalled: boolean) => void = () => {},
): Promise<void> {
  const sink: LayerSink = workers
    ? await workers.openSink(diskPath, layer, fresh)
    : await InlineSink.open(diskPath, layer, fresh);
  let received = 0;
  try {
    const what = `disk layer ${layer.index + 1}`;
    received = await streamResumable({
      ...client.streamOptions(what, onStall),
      signal,
      open: async (offset, sig) => {
        const res = await client.getBlob(layer.digest, offset, true, sig);
        return { res, from: res.status === 206 ? offset : 0 };
      },
      write: async (c) => {
        onBytes(c.length);
        await sink.push(c);
      },
      limit: layer.size,
      tooLarge: () =>
        new CoveError(
          "oci.bad_blob",
          `disk layer ${layer.index + 1} is larger than its manifest says`,
          {
            hint: "the registry or a proxy sent the wrong data; retry",
            exit: ExitCode.Network,
          },
        ),
    });
    if (received < layer.size) throw truncated(client.registry, layer.digest, received, layer.size);
    const d = await sink.digest();
    if (d !== layer.digest) throw digestMismatch(client.registry, layer.digest, d);
    await sink.complete();
  } finally {
    await sink.close();
  }
}

/**
 * Pulls `refText` into the cache (or finds it there) and returns the
 * complete image. Safe to interrupt at any point: rerunning resumes.
 */
export async function pullImage(refText: string, opts: PullOptions): Promise<PulledImage> {
  const concurrency = parseFlag("--concurrency", opts.concurrency ?? 4);
  const ref = parseReference(refText);
  const refName = formatReference(ref);
  const cache = new OciCache(join(opts.home, "cache"));
  const client = new RegistryClient(ref.registry, ref.repository, {
    ...opts,
    credentials: opts.credentials ?? defaultCredentialLookup(opts.home),
  });
  // A digest names the content: one already in the cache needs no registry (which may be down).
  const local = ref.digest && await cache.has(ref.digest)
    ? await cachedManifest(cache, ref.digest, refName)
    : undefined;
  const { bytes, digest, image } = local ?? await resolveManifest(client, ref);

  const finish = async (
    cached: boolean,
    fetched: number,
    resumedLayers: number,
    reusedLayers = 0,
  ): Promise<PulledImage> => {
    const dir = cache.imageDir(digest);
    await cache.touch(digest, refName);
    const tart = parseTartConfig(refName, await Deno.readFile(join(dir, "config.json")));
    const nvramPath = join(dir, "nvram.bin");
    const hasNvram = await Deno.stat(nvramPath).then(() => true, () => false);
    return {
      ref,
      digest,
      dir,
      diskPath: join(dir, IMAGE_DISK),
      nvramPath: hasNvram ? nvramPath : undefined,
      tart,
      image,
      cached,
      fetched,
      resumedLayers,
      reusedLayers,
    };
  };

  if (await cache.has(digest)) return await finish(true, 0, 0);

  const lock = await cache.lockStaging(
    digest,
    () => opts.log?.(`waiting for another pull of ${refName}`),
  );
  try {
    if (await cache.has(digest)) return await finish(true, 0, 0);
    const staging = cache.staging(digest);
    const layersDir = join(staging, "layers");
    const diskPath = join(staging, IMAGE_DISK);
    const resumed = await Deno.stat(diskPath).then((s) => s.size === image.diskSize, () => false);
    if (!resumed) {
      await Deno.remove(staging, { recursive: true }).catch(() => {});
      await Deno.mkdir(layersDir, { recursive: true, mode: 0o700 });
      const f = await Deno.open(diskPath, {
        write: true,
        create: true,
        truncate: true,
        mode: 0o600,
      });
      try {
        await f.truncate(image.diskSize);
      } finally {
        f.close();
      }
      await writeFileAtomic(
        join(staging, "pull.json"),
        JSON.stringify({ ref: refName, digest, started: Date.now() }) + "\n",
      );
    }
    try {
      await writeFileAtomic(join(staging, "manifest.json"), bytes);

      // Small blobs first: a broken config fails fast.
      const configBytes = await client.readBlob(image.config.digest, 1024 * 1024);
      const tart = parseTartConfig(refName, configBytes);
      await writeFileAtomic(join(staging, "config.json"), configBytes);
      if (image.nvram) {
        const nv = join(staging, "nvram.bin");
        const ok = await Deno.stat(join(layersDir, "nvram.done")).then(() => true, () => false);
        if (!ok) {
          await blobToFile(client, image.nvram.digest, image.nvram.size, nv, "the NVRAM");
          await writeFileAtomic(join(layersDir, "nvram.done"), image.nvram.digest + "\n");
        }
      }

      // Disk layers without a done record.
      const todo: DiskLayer[] = [];
      let resumedLayers = 0;
      let reusedLayers = 0;
      for (const l of image.disks) {
        const rec = await Deno.readTextFile(join(layersDir, `${l.index}.done`)).catch(() => "");
        if (resumed && rec.trim() === l.digest) resumedLayers++;
        else todo.push(l);
      }
      // Layers some cached image already has (a re-pushed tag, a shared base) are copied locally.
      const local = todo.length ? await localLayers(cache) : new Map<string, LocalLayer>();
      for (const l of [...todo]) {
        const src = local.get(l.digest);
        if (!src) continue;
        try {
          await copyLocalLayer(src, l, diskPath, !resumed);
        } catch (e) {
          if (e instanceof CoveError && !transient(e)) throw e;
          continue; // download it instead
        }
        await writeFileAtomic(join(layersDir, `${l.index}.done`), l.digest + "\n");
        todo.splice(todo.indexOf(l), 1);
        reusedLayers++;
      }
      const progress: PullProgress = {
        total: todo.reduce((s, l) => s + l.size, 0),
        done: 0,
        layersDone: resumedLayers,
        layers: image.disks.length,
        stalled: 0,
      };
      opts.onProgress?.({ ...progress });
      const workers = todo.length
        ? WorkerPool.start(
          WorkerPool.defaultSize(Math.min(todo.length, concurrency)),
          todo.reduce((n, l) => n + l.uncompressedSize, 0),
        )
        : undefined;
      try {
        await runPool(
          todo.map((l) => async (signal: AbortSignal) => {
            const onBytes = (n: number) => {
              progress.done += n;
              opts.onProgress?.({ ...progress });
            };
            let isStalled = false;
            const onStall = (s: boolean) => {
              if (s === isStalled) return;
              isStalled = s;
              progress.stalled += s ? 1 : -1;
              opts.onProgress?.({ ...progress });
            };
            try {
              await pullDiskLayer(client, l, diskPath, !resumed, signal, onBytes, workers, onStall);
            } catch (e) {
              if (!workerLost(e)) throw e;
              // The worker died: do this layer again in this thread, over what it may have written.
              await pullDiskLayer(client, l, diskPath, false, signal, onBytes, undefined, onStall);
            } finally {
              onStall(false);
            }
            await writeFileAtomic(join(layersDir, `${l.index}.done`), l.digest + "\n");
            progress.layersDone++;
            opts.onProgress?.({ ...progress });
          }),
          concurrency,
        );
      } finally {
        workers?.close();
      }

      const meta: ImageMeta = {
        digest,
        refs: [refName],
        created: Date.now(),
        lastUsed: Date.now(),
        diskSize: image.diskSize,
        os: tart.os,
        arch: tart.arch,
      };
      await cache.publish(digest, meta, [
        ...image.disks.map((l) => ({ name: l.index, digest: l.digest })),
        ...(image.nvram ? [{ name: "nvram", digest: image.nvram.digest }] : []),
      ]);
      return await finish(false, progress.done, resumedLayers, reusedLayers);
    } catch (e) {
      const err = toCoveError(e, "pulling the image");
      if (spoilsStaging(err)) await Deno.remove(staging, { recursive: true }).catch(() => {});
      if (noSpace(e) || err.code === "io.no_space") {
        // Say what stays on the full disk, and how to get the space back.
        const kept = await allocated(staging);
        throw new CoveError("io.no_space", `the disk is full: pulling ${refName} stopped`, {
          hint: `the partial pull (${
            formatSize(kept)
          } in the image cache) was kept to resume: free some space and run the same command again, or remove it with 'cove image prune'`,
          cause: e,
        });
      }
      throw err;
    }
  } finally {
    lock.release();
  }
}
