/**
 * Pushing a stopped VM to one or more references in Tart's format.
 *
 * The root disk is cut into chunks (512 MiB unless `chunkSize` says), and
 * chunks are processed in parallel. Each chunk is read once and streamed
 * straight into its upload: hashed (the uncompressed digest Tart's
 * annotations need), compressed with Apple's LZ4 framing and hashed again;
 * the digest closes the upload (PATCH then PUT ?digest=, as docker does), so
 * compression and upload overlap and no temporary file is written. For
 * large disks each chunk's read, hashes, compression and PATCH run in a
 * layer worker (one per core), so the bytes never cross threads. Zero runs
 * skip the encoder, and an all-zero chunk's digest is memoized. Memory is a
 * few MiB per chunk in flight, whatever the disk size. A failed upload
 * starts that chunk again (the encoder is deterministic).
 *
 * Blobs the registry already has are skipped with a HEAD: small blobs
 * always, disk chunks when their digests are known without reading, from
 * an index of earlier pushes keyed by the disk file's identity (device,
 * inode, size, mtime). Other repositories on the same registry get blobs by
 * cross-repository mount. Small blobs (Tart's config.json, the NVRAM, the
 * OCI config) go up monolithically.
 * @module
 */
import { readInstallRecord } from "../provision/macos.ts";
import { join } from "node:path";
import { CoveError, ExitCode, usageError } from "../errors.ts";
import { parseFlag } from "../flags.ts";
import { runPool } from "../pool.ts";
import { writeFileAtomic } from "../store/fsutil.ts";
import type { Store } from "../store/store.ts";
import { type Bundle, heldError, type MachineIdentity } from "../store/bundle.ts";
import { copyRunningDisks } from "../supervisor/client.ts";
import { defaultCredentialLookup } from "./auth.ts";
import { OciCache } from "./cache.ts";
import { compressStream } from "./layer.ts";
import { workerLost, WorkerPool } from "./workers.ts";
import { formatReference, parseReference, type Reference } from "./reference.ts";
import { RegistryClient, type RegistryOptions, sha256Digest } from "./registry.ts";
import {
  buildManifest,
  DEFAULT_CHUNK,
  type Descriptor,
  MAC_AUX,
  OCI_CONFIG,
  OCI_MANIFEST,
  ociConfigJson,
  sortedJson,
  TART_CONFIG,
  TART_NVRAM,
  type TartConfig,
  tartFromSpec,
} from "./tart.ts";

/** Progress of a push. */
export interface PushProgress {
  /** Uncompressed disk bytes to process. */
  total: number;
  /** Uncompressed disk bytes compressed so far. */
  done: number;
  /** Compressed bytes uploaded so far. */
  uploaded: number;
  /** Layers already on the registry. */
  skipped: number;
}

/** Options of {@link pushVm}. */
export interface PushOptions extends RegistryOptions {
  home: string;
  /** Bytes of disk per layer (default 512 MiB). */
  chunkSize?: number;
  /** Chunks processed at once (default 4). */
  concurrency?: number;
  /** Upload in PATCH requests of this size; 0 streams each blob in one request (default). */
  uploadChunkSize?: number;
  onProgress?: (p: PushProgress) => void;
}

/** What a push did. */
export interface PushResult {
  /** The manifest digest. */
  digest: string;
  /** Each reference pushed, with the digest: `host/repo:tag@sha256:…`. */
  pushed: string[];
  layers: number;
  /** Layers the registry already had. */
  skipped: number;
  /** Compressed bytes uploaded. */
  uploaded: number;
  /**
   * Set when the VM was running: it was pushed from a copy of its disks, and
   * this says whether its file systems were frozen (through its agent) for the copy.
   */
  frozen?: boolean;
  /**
   * Set when the VM boots a kernel file (boot.loader: kernel): a Tart image
   * carries no kernel, so where it is pulled it boots its disk with EFI.
   */
  kernelBoot?: boolean;
}

/** Digests of a disk's chunks as pushed before, valid while the file is unchanged. */
interface IndexEntry {
  key: string;
  chunkSize: number;
  layers: Descriptor[];
  used: number;
}

async function fileKey(path: string): Promise<string> {
  const st = await Deno.stat(path);
  return `${st.dev}:${st.ino}:${st.size}:${st.mtime?.getTime() ?? 0}`;
}

async function readIndex(path: string): Promise<IndexEntry[]> {
  try {
    return (JSON.parse(await Deno.readTextFile(path)) as { entries: IndexEntry[] }).entries ?? [];
  } catch {
    return [];
  }
}

async function rememberPush(path: string, entry: IndexEntry): Promise<void> {
  const entries = (await readIndex(path)).filter((e) =>
    !(e.key === entry.key && e.chunkSize === entry.chunkSize)
  );
  entries.unshift(entry);
  await writeFileAtomic(path, JSON.stringify({ entries: entries.slice(0, 32) }) + "\n").catch(
    () => {},
  );
}

/** Makes sure `client`'s repository has a small blob: HEAD, mount, or upload. */
async function ensureBytes(
  client: RegistryClient,
  desc: Descriptor,
  bytes: Uint8Array<ArrayBuffer>,
  mountFrom: string | undefined,
): Promise<void> {
  if ((await client.blobSize(desc.digest)) !== undefined) return;
  if (mountFrom && (await client.mountBlob(desc.digest, mountFrom))) return;
  await client.uploadBytes(desc.digest, bytes);
}

/**
 * Pushes a VM to every reference in `refs`: a stopped VM under its lock, a
 * running one from a consistent copy of its disks.
 */
export async function pushVm(
  store: Store,
  name: string,
  refs: string[],
  opts: PushOptions,
): Promise<PushResult> {
  if (refs.length === 0) {
    throw usageError(
      "oci.no_reference",
      "push needs at least one reference",
      "e.g. cove push dev ghcr.io/me/dev:1",
    );
  }
  const parsed: Reference[] = refs.map((r) => {
    const p = parseReference(r);
    if (p.digest) {
      throw usageError(
        "oci.bad_reference",
        `'${r}': push to a tag, not a digest`,
        "the digest is printed after the push",
      );
    }
    return p;
  });
  const concurrency = parseFlag("--concurrency", opts.concurrency ?? 4);
  const chunkSize = parseFlag("--chunk-size", opts.chunkSize ?? DEFAULT_CHUNK);
  const bundle = await store.get(name);
  // Held for the whole push: the VM is "busy (push)", and start and delete refuse.
  const lock = await bundle.tryLock({ purpose: "push" });
  const job: PushJob = { name, parsed, concurrency, chunkSize, opts };
  if (!lock) {
    const h = (await bundle.holder()) ?? { purpose: "run" as const };
    if (h.purpose !== "run") throw heldError(name, "push", h);
    // A running VM is pushed from a consistent copy of its disks (frozen through the guest
    // agent when one answers), while it runs on.
    return await store.withCopy(
      bundle,
      copyRunningDisks,
      async (copy, frozen) => ({ ...(await pushBundle(copy, job, true)), frozen }),
    );
  }
  try {
    return await pushBundle(bundle, job);
  } finally {
    lock.release();
  }
}

/** What {@link pushBundle} pushes, and how. */
interface PushJob {
  /** The VM's name, for messages. */
  name: string;
  parsed: Reference[];
  concurrency: number;
  chunkSize: number;
  opts: PushOptions;
}

/** Pushes the files of `bundle`: the VM, or (`copy`) a copy of a running VM. */
async function pushBundle(
  bundle: Bundle,
  { name, parsed, concurrency, chunkSize, opts }: PushJob,
  copy = false,
): Promise<PushResult> {
  const cache = new OciCache(join(opts.home, "cache"));
  await cache.ensure();
  const indexPath = join(cache.dir, "push-index.json");
  const spec = await bundle.readSpec();
  const rootIndex = spec.disks.findIndex((d) => d.media === "disk");
  if (rootIndex < 0) throw usageError("oci.no_disk", `VM '${name}' has no disk to push`);
  const root = spec.disks[rootIndex];
  if (root.format === "qcow2") {
    throw usageError(
      "oci.disk_format",
      `VM '${name}' has a qcow2 disk; Tart images carry raw (or ASIF) disks`,
      "convert the disk to raw first",
    );
  }
  const diskPath = bundle.resolve(root.path);
  const diskSize = (await Deno.stat(diskPath)).size;
  const macos = spec.os === "macos";
  // A macOS image cannot boot without its identity and auxiliary storage: never push it empty.
  const unreadable = (what: string, path: string) => (e: unknown): never => {
    throw new CoveError(
      "oci.push_source",
      `cannot read the ${what} of VM '${name}' (${path}): ${
        e instanceof Error ? e.message : String(e)
      }`,
      {
        hint: "a macOS image needs it to boot; recreate or repair the VM",
        exit: ExitCode.Failure,
      },
    );
  };
  const identity: Partial<MachineIdentity> = await bundle.readMachine().catch((e) => {
    if (!macos && e instanceof Deno.errors.NotFound) return {};
    return unreadable("machine identity", bundle.machinePath)(e);
  });
  const install = macos ? await readInstallRecord(bundle) : undefined;
  const tart: TartConfig = tartFromSpec(spec, identity, install);
  const configBytes = new TextEncoder().encode(sortedJson(tart));
  const nvramPath = spec.os === "macos"
    ? bundle.resolve(MAC_AUX)
    : spec.boot.variableStore
    ? bundle.resolve(spec.boot.variableStore)
    : undefined;
  const nvramBytes = nvramPath
    ? await Deno.readFile(nvramPath).catch((e) => {
      if (!macos && e instanceof Deno.errors.NotFound) return new Uint8Array(0);
      return unreadable(macos ? "auxiliary storage" : "EFI variable store", nvramPath)(e);
    })
    : new Uint8Array(0);
  const ociBytes = ociConfigJson(tart);
  const small = async (
    mediaType: string,
    bytes: Uint8Array<ArrayBuffer>,
  ): Promise<Descriptor> => ({
    mediaType,
    size: bytes.length,
    digest: await sha256Digest(bytes),
  });
  const configDesc = await small(TART_CONFIG, configBytes);
  const nvramDesc = await small(TART_NVRAM, nvramBytes);
  const ociDesc = await small(OCI_CONFIG, ociBytes);

  const chunks: { index: number; offset: number; length: number }[] = [];
  for (let off = 0; off < diskSize; off += chunkSize) {
    chunks.push({
      index: chunks.length,
      offset: off,
      length: Math.min(chunkSize, diskSize - off),
    });
  }
  if (chunks.length === 0) chunks.push({ index: 0, offset: 0, length: 0 });

  const progress: PushProgress = { total: diskSize, done: 0, uploaded: 0, skipped: 0 };
  const report = () => opts.onProgress?.({ ...progress });
  const credentials = opts.credentials ?? defaultCredentialLookup(opts.home);
  const uploadChunk = opts.uploadChunkSize ?? 0;

  // One client per repository; the first one gets the disk uploaded, the others mount or re-upload.
  const repos = new Map<string, { client: RegistryClient; tags: string[]; ref: Reference }>();
  for (const p of parsed) {
    const key = `${p.registry}/${p.repository}`;
    const r = repos.get(key) ??
      {
        client: new RegistryClient(p.registry, p.repository, { ...opts, credentials }, true),
        tags: [],
        ref: p,
      };
    r.tags.push(p.tag!);
    repos.set(key, r);
  }

  // Digests known without reading: an earlier push of this very file, unchanged since.
  const key = await fileKey(diskPath);
  const known = (await readIndex(indexPath)).find((e) =>
    e.key === key && e.chunkSize === chunkSize
  );
  const diskDescs: Descriptor[] = known && known.layers.length === chunks.length
    ? [...known.layers]
    : new Array(chunks.length);
  let first: { registry: string; repository: string } | undefined;
  let manifestDigest = "";
  let manifest: Uint8Array<ArrayBuffer> | undefined;
  const pushed: string[] = [];
  const workers = WorkerPool.start(
    WorkerPool.defaultSize(Math.min(chunks.length, concurrency)),
    diskSize,
  );
  try {
    for (const { client, tags, ref } of repos.values()) {
      const mountFrom = first && first.registry === ref.registry ? first.repository : undefined;
      await runPool(
        chunks.map((c) => async (signal: AbortSignal) => {
          const desc = diskDescs[c.index];
          if (desc && (await client.blobSize(desc.digest)) !== undefined) {
            progress.skipped++;
            if (!first) progress.done += c.length;
            report();
            return;
          }
          if (desc && mountFrom && (await client.mountBlob(desc.digest, mountFrom))) {
            progress.skipped++;
            report();
            return;
          }
          // A retry starts the chunk again; progress counts each byte once.
          let counted = 0;
          const counter = () => {
            let seen = 0;
            return (n: number) => {
              seen += n;
              if (!first && seen > counted) {
                progress.done += seen - counted;
                counted = seen;
                report();
              }
            };
          };
          let inThread = !workers || uploadChunk !== 0;
          if (workers && !inThread) {
            try {
              await client.uploadVia(
                async (loc, headers) => {
                  const r = await workers.patchCompressed(
                    { diskPath, offset: c.offset, length: c.length },
                    loc,
                    headers,
                    { host: client.registry, insecure: client.insecure },
                    counter(),
                    signal,
                  );
                  diskDescs[c.index] = r.desc;
                  return { location: r.location, digest: r.desc.digest };
                },
                `disk layer ${c.index + 1}`,
                signal,
              );
            } catch (e) {
              // Its worker died: upload this chunk from this thread instead.
              if (!workerLost(e)) throw e;
              inThread = true;
            }
          }
          if (inThread) {
            await client.uploadStream(
              () => {
                const s = compressStream(diskPath, c.offset, c.length, counter());
                s.done.then((d) => {
                  diskDescs[c.index] = d;
                }, () => {});
                return s;
              },
              uploadChunk,
              `disk layer ${c.index + 1}`,
              signal,
            );
          }
          progress.uploaded += diskDescs[c.index].size;
          report();
        }),
        concurrency,
      );
      await ensureBytes(client, configDesc, configBytes, mountFrom);
      await ensureBytes(client, nvramDesc, nvramBytes, mountFrom);
      await ensureBytes(client, ociDesc, ociBytes, mountFrom);
      manifest ??= buildManifest({
        ociConfig: ociDesc,
        config: configDesc,
        disks: diskDescs,
        nvram: nvramDesc,
        diskSize,
      });
      for (const tag of tags) {
        manifestDigest = await client.putManifest(tag, manifest, OCI_MANIFEST);
        pushed.push(`${formatReference({ ...ref, tag })}@${manifestDigest}`);
      }
      first ??= { registry: ref.registry, repository: ref.repository };
    }
  } finally {
    workers?.close();
  }
  // Only if the disk did not change while it was read, and is not a copy about to be deleted.
  if (!copy && (await fileKey(diskPath)) === key) {
    await rememberPush(indexPath, { key, chunkSize, layers: diskDescs, used: Date.now() });
  }
  return {
    digest: manifestDigest,
    pushed,
    layers: chunks.length,
    skipped: progress.skipped,
    uploaded: progress.uploaded,
    ...(spec.boot.loader === "kernel" ? { kernelBoot: true } : {}),
  };
}
