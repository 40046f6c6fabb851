/**
 * Sources for `cove create NAME --from SRC`: what SRC is, and how it becomes
 * the files and spec of a new bundle.
 *
 * - a local raw disk (cloned copy-on-write or hole-preserving),
 * - a local qcow2 disk (converted to raw by {@link ./qcow2.ts}),
 * - a local ISO installer (attached as a cdrom; the root disk starts blank),
 * - an http(s) URL of any of those (downloaded through the cache),
 * - a catalog alias such as `debian:12` ({@link ./catalog.ts}),
 * - `oci://` and `ipsw:` references, handled by other modules through
 *   {@link registerSourceHandler}.
 *
 * `--kernel/--initrd/--cmdline` combine with a disk source (the disk is the
 * root device) and are applied by the spec flags, not here.
 *
 * Disk images that carry an OS (raw, qcow2, URLs, aliases) get a cloud-init
 * NoCloud seed attached as a read-only disk ({@link ../provision/seed.ts});
 * installer ISOs do not.
 *
 * Two steps: {@link resolveSource} looks at SRC and says what it is (cheap:
 * no download, so bad input fails before anything is staged), then
 * {@link materializeSource} fetches and places the files into the staging
 * bundle and returns the spec to write. {@link prepareSource} does both for
 * `cove create`. Everything is written into the staging directory, which the
 * store removes on failure: no partial VM is ever left.
 * @module
 */
import { basename, isAbsolute, resolve as resolvePath } from "node:path";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import type { DiskSpec, VmSpec } from "../spec/schema.ts";
import { type Bundle, BUNDLE_FILES } from "../store/bundle.ts";
import { cloneFile } from "../store/fsutil.ts";
import { formatSize, parseSize } from "../units.ts";
import { BlobCache } from "./cache.ts";
import { displayUrl } from "./url.ts";
import {
  catalogChecksum,
  type CatalogImage,
  hasAlias,
  loadCatalog,
  looksLikeAlias,
  resolveAlias,
} from "./catalog.ts";
import { type Checksum, download, type DownloadEvent, parseChecksum } from "./download.ts";
import { convertQcow2ToRaw, type ImageProbe, probeImage } from "./qcow2.ts";
import { attachSeedDisk, ensureSeed } from "../provision/seed.ts";

/** What a source turned out to be. */
export type SourceKind = "raw" | "qcow2" | "iso" | "url" | "catalog" | "oci" | "ipsw";

/** The result of {@link resolveSource}. */
export type ResolvedSource =
  | { kind: "raw" | "qcow2" | "iso"; path: string; probe: ImageProbe }
  | { kind: "url"; url: string; checksum?: Checksum }
  | { kind: "catalog"; alias: string }
  | { kind: "oci" | "ipsw"; ref: string };

/** Events while a source is fetched and placed. */
export type SourceEvent =
  | DownloadEvent
  | { type: "convert"; done: number; total: number }
  | { type: "install"; fraction: number }
  | { type: "resolve"; source: string; description: string };

/** Options of {@link prepareSource} and {@link materializeSource}. */
export interface SourceOptions {
  /** Progress: downloads and conversions. The CLI prints these; core never does. */
  onProgress?: (e: SourceEvent) => void;
  /** Expected checksum of a URL source (`sha256:…` / `sha512:…`). */
  checksum?: string;
  /** Attach a cloud-init seed: default yes for disk images, no for installers. */
  cloudInit?: boolean;
  cache?: BlobCache;
  signal?: AbortSignal;
  /** Accepted for the CLI's convenience; core does not print. */
  format?: "text" | "json";
}

/** Handles a scheme this module only routes (`oci://`, `ipsw:`). */
export type SourceHandler = (
  ref: string,
  staging: Bundle,
  spec: VmSpec,
  opts: SourceOptions,
) => Promise<VmSpec>;

const handlers = new Map<"oci" | "ipsw", SourceHandler>();

/** Lets the OCI and VZ modules take over their schemes. */
export function registerSourceHandler(kind: "oci" | "ipsw", h: SourceHandler): void {
  handlers.set(kind, h);
}

/** The bundle file name of the root disk made from a source. */
export const SOURCE_DISK: string = BUNDLE_FILES.rootDisk;
/** The bundle file name of an installer ISO downloaded from a URL. */
export const INSTALLER_ISO: string = BUNDLE_FILES.installerIso;

/**
 * Says what `src` is, without downloading anything: a URL, an `oci://` or
 * `ipsw:` reference, a local file (probed), or a catalog alias. Throws one
 * line for a missing file, an unknown alias, or a file that is not a disk
 * image.
 */
export async function resolveSource(
  src: string,
  opts: { checksum?: string } = {},
): Promise<ResolvedSource> {
  if (src.startsWith("ipsw:") || /\.ipsw$/i.test(src.split("?")[0])) {
    return { kind: "ipsw", ref: src };
  }
  if (/^https?:\/\//i.test(src)) {
    return {
      kind: "url",
      url: src,
      checksum: opts.checksum ? parseChecksum(opts.checksum) : undefined,
    };
  }
  if (src.startsWith("oci://")) return { kind: "oci", ref: src };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(src)) {
    throw new CoveError("source.scheme", `--from: cannot use ${src.split("://")[0]}:// sources`, {
      hint: "use a file, an http(s) URL, an alias like debian:12, oci:// or ipsw:",
      exit: ExitCode.Usage,
    });
  }
  const path = isAbsolute(src) ? src : resolvePath(src);
  let exists = false;
  try {
    const st = await Deno.stat(path);
    exists = true;
    if (!st.isFile) {
      throw new CoveError("source.not_file", `--from: '${src}' is not a file`, {
        hint: "give a disk image, an ISO, a URL or an alias",
        exit: ExitCode.Usage,
      });
    }
  } catch (e) {
    if (e instanceof CoveError) throw e;
    if (!(e instanceof Deno.errors.NotFound)) throw toCoveError(e, `--from ${src}`);
  }
  if (!exists) {
    if (looksLikeAlias(src)) {
      const cat = loadCatalog();
      // resolveAlias throws the one-line "unknown image; known: ..." error.
      if (!hasAlias(src, cat)) resolveAlias(src, "x86_64", cat);
      return { kind: "catalog", alias: src };
    }
    throw new CoveError("source.not_found", `--from: '${src}' does not exist`, {
      hint: "give a disk image, an ISO, a URL, or an alias like debian:12",
      exit: ExitCode.NotFound,
    });
  }
  const probe = await probeImage(path);
  if (probe.format === "other") throw notAnImage(src, probe);
  return { kind: probe.format, path, probe };
}

function notAnImage(what: string, probe: ImageProbe): CoveError {
  return new CoveError(
    "source.not_image",
    `${what} is not a disk image (${probe.detail ?? "unrecognised data"})`,
    {
      hint: probe.detail?.includes("compressed") || probe.detail?.includes("archive")
        ? "decompress it first: cove reads raw, qcow2 and ISO images"
        : "cove reads raw, qcow2 and ISO images",
      exit: ExitCode.Usage,
    },
  );
}

/**
 * Fetches and places a resolved source into the staging bundle and returns
 * the spec to write. `spec` has every default applied (arch, disks, boot).
 */
export async function materializeSource(
  source: ResolvedSource,
  staging: Bundle,
  spec: VmSpec,
  opts: SourceOptions = {},
): Promise<VmSpec> {
  const emit = opts.onProgress ?? (() => {});
  switch (source.kind) {
    case "oci":
    case "ipsw": {
      const h = handlers.get(source.kind) ??
        (source.kind === "ipsw" ? (await import("./ipsw.ts")).installFromIpsw : undefined);
      if (!h) {
        throw new CoveError(
          "source.elsewhere",
          source.kind === "oci"
            ? `--from ${source.ref}: registry images are created with 'cove clone REF NAME'`
            : `--from ${source.ref}: macOS installs from IPSW need the vz engine on a Mac`,
          { exit: ExitCode.Usage },
        );
      }
      return await h(source.ref, staging, spec, opts);
    }
    case "raw":
    case "qcow2":
      return await placeDisk(source.path, source.probe, staging, spec, opts, emit);
    case "iso":
      return withInstaller(spec, source.path);
    case "url":
      return await fromUrl(source.url, source.checksum, staging, spec, opts, emit);
    case "catalog": {
      const img = resolveAlias(source.alias, spec.arch);
      return await fromCatalog(img, staging, spec, opts, emit);
    }
  }
}

/**
 * What `cove create --from SRC` calls: resolves SRC now (so bad input fails
 * before anything is staged) and returns the populate step for the store.
 */
export async function prepareSource(
  src: string,
  opts: SourceOptions = {},
): Promise<(staging: Bundle, spec: VmSpec) => Promise<VmSpec>> {
  const source = await resolveSource(src, opts);
  return (staging, spec) => materializeSource(source, staging, spec, opts);
}

async function fromCatalog(
  img: CatalogImage,
  staging: Bundle,
  spec: VmSpec,
  opts: SourceOptions,
  emit: (e: SourceEvent) => void,
): Promise<VmSpec> {
  emit({ type: "resolve", source: img.alias, description: `${img.description}, ${img.arch}` });
  const checksum = await catalogChecksum(img);
  const blob = await download(img.url, {
    cache: opts.cache,
    checksum,
    onProgress: emit,
    signal: opts.signal,
    check: refuseWebPages,
  });
  return await validated(img.url, blob, opts, async () => {
    const probe = await probeImage(blob.path);
    if (probe.format === "other") throw notAnImage(displayUrl(img.url), probe);
    if (probe.format === "iso") {
      return withInstaller(spec, await linkIntoBundle(blob.path, staging));
    }
    const out = await placeDisk(blob.path, probe, staging, spec, opts, emit);
    return { ...out, os: "linux" };
  });
}

/**
 * Runs the validation of a downloaded blob (probe, conversion). When it
 * finds the download is not a usable image, the blob leaves the cache, so
 * the next try asks the server again instead of failing from the cache for
 * ever; and the error names the URL the user gave, not the cache's file.
 */
async function validated<T>(
  url: string,
  blob: { digest: string; path: string },
  opts: SourceOptions,
  fn: () => Promise<T>,
): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (!(e instanceof CoveError)) throw e;
    if (/^(source|image|qcow2)\./.test(e.code)) {
      await (opts.cache ?? new BlobCache()).remove([blob.digest]).catch(() => {});
    }
    // Any line that names the cache's file names the URL instead.
    const hex = basename(blob.path);
    if (!e.message.includes(hex)) throw e;
    const shown = e.message.replaceAll(blob.path, displayUrl(url)).replaceAll(hex, displayUrl(url));
    throw new CoveError(e.code, shown, {
      hint: e.hint,
      exit: e.exit,
      cause: e,
    });
  }
}

async function fromUrl(
  url: string,
  checksum: Checksum | undefined,
  staging: Bundle,
  spec: VmSpec,
  opts: SourceOptions,
  emit: (e: SourceEvent) => void,
): Promise<VmSpec> {
  const blob = await download(url, {
    cache: opts.cache,
    checksum,
    onProgress: emit,
    signal: opts.signal,
    check: refuseWebPages,
  });
  return await validated(url, blob, opts, async () => {
    const probe = await probeImage(blob.path);
    // Not an image: it leaves the cache, so the cache holds no useless entry.
    if (probe.format === "other") throw notAnImage(displayUrl(url), probe);
    if (probe.format === "iso") {
      return withInstaller(spec, await linkIntoBundle(blob.path, staging));
    }
    return await placeDisk(blob.path, probe, staging, spec, opts, emit);
  });
}

/** Refuses an HTML page before its body is downloaded. */
function refuseWebPages(res: Response, url: string): void {
  const type = res.headers.get("Content-Type") ?? "";
  if (/^text\/html|^application\/xhtml/i.test(type)) {
    throw new CoveError(
      "source.not_image",
      `${displayUrl(url)} is a web page (${type.split(";")[0]}), not a disk image`,
      {
        hint: "use the direct link to a raw, qcow2 or ISO image",
        exit: ExitCode.Usage,
      },
    );
  }
}

/** Puts a cached ISO into the bundle: a hard link (free), else a copy. */
async function linkIntoBundle(path: string, staging: Bundle): Promise<string> {
  const dst = staging.resolve(INSTALLER_ISO);
  try {
    await Deno.link(path, dst);
  } catch {
    await cloneFile(path, dst);
  }
  return INSTALLER_ISO;
}

/** Adds an installer ISO as a read-only cdrom after the (blank) root disk. */
function withInstaller(spec: VmSpec, isoPath: string): VmSpec {
  const cdrom: DiskSpec = {
    path: isoPath,
    format: "raw",
    media: "cdrom",
    readOnly: true,
    cache: "auto",
    sync: "full",
    // The engine picks the device for media cdrom (vz: USB mass storage, qemu: a CD drive).
    bus: "virtio",
  };
  const disks = spec.disks.filter((d) => d.path !== isoPath);
  return { ...spec, os: "linux", disks: [...disks, cdrom] };
}

/** Writes the root disk from a raw or qcow2 image, then attaches the seed. */
async function placeDisk(
  path: string,
  probe: ImageProbe,
  staging: Bundle,
  spec: VmSpec,
  opts: SourceOptions,
  emit: (e: SourceEvent) => void,
): Promise<VmSpec> {
  const rootIndex = Math.max(0, spec.disks.findIndex((d) => d.media === "disk"));
  const root = spec.disks[rootIndex] ?? defaultDisk();
  const name = root.path && !isAbsolute(root.path) ? root.path : SOURCE_DISK;
  const dst = staging.resolve(name);
  await Deno.remove(dst).catch(() => {});
  let size: number;
  if (probe.format === "qcow2") {
    const r = await convertQcow2ToRaw(path, dst, {
      signal: opts.signal,
      onProgress: (done, total) => emit({ type: "convert", done, total }),
    });
    size = r.size;
  } else {
    await cloneFile(path, dst);
    size = (await Deno.stat(dst)).size;
    // VZ needs raw disks in whole 512-byte sectors.
    if (size % 512 !== 0) {
      size += 512 - (size % 512);
      await Deno.truncate(dst, size);
    }
  }
  // The image decides the minimum; a smaller (default) size grows to fit.
  const wanted = root.size === undefined ? size : Math.max(size, parseSize(root.size, "disk size"));
  const disk: DiskSpec = {
    ...root,
    path: name,
    format: "raw",
    media: "disk",
    size: formatSize(wanted),
  };
  const disks = [...spec.disks];
  disks[rootIndex] = disk;
  let out: VmSpec = { ...spec, disks };
  if (opts.cloudInit ?? out.os === "linux") {
    out = attachSeedDisk(out);
    await ensureSeed(staging.dir, out);
  }
  return out;
}

function defaultDisk(): DiskSpec {
  return {
    path: SOURCE_DISK,
    format: "raw",
    media: "disk",
    readOnly: false,
    cache: "auto",
    sync: "full",
    bus: "virtio",
  };
}
