/**
 * Tart's VM image format in OCI registries, exactly: media types,
 * annotations, manifest building and validation, and the translation of
 * Tart's `config.json` to and from cove's spec.
 *
 * A Tart image is an OCI image manifest whose config blob is a small OCI
 * image config (`os`, `architecture`, a disk-format label) and whose layers
 * are, in order: one `…tart.config.v1` (Tart's config.json), N
 * `…tart.disk.v2` (the disk cut into chunks, each compressed on its own with
 * Apple's LZ4 framing, annotated with its uncompressed size and the sha256
 * of its uncompressed bytes) and one `…tart.nvram.v1` (EFI variable store
 * or Mac auxiliary storage). The manifest carries the uncompressed disk
 * size. `…tart.disk.v1` (one LZ4 stream for the whole disk) is refused.
 * @module
 */
import { CoveError, ExitCode } from "../errors.ts";
import type { SpecParsed } from "../spec/schema.ts";
import { formatSize, parseSize } from "../units.ts";
import { BUNDLE_FILES } from "../store/bundle.ts";

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
export const TART_CONFIG = "application/vnd.cirruslabs.tart.config.v1";
export const TART_DISK_V1 = "application/vnd.cirruslabs.tart.disk.v1";
export const TART_DISK_V2 = "application/vnd.cirruslabs.tart.disk.v2";
export const TART_NVRAM = "application/vnd.cirruslabs.tart.nvram.v1";

export const ANN_DISK_SIZE = "org.cirruslabs.tart.uncompressed-disk-size";
export const ANN_UPLOAD_TIME = "org.cirruslabs.tart.upload-time";
export const ANN_UNCOMPRESSED_SIZE = "org.cirruslabs.tart.uncompressed-size";
export const ANN_UNCOMPRESSED_DIGEST = "org.cirruslabs.tart.uncompressed-content-digest";
export const LABEL_DISK_FORMAT = "org.cirruslabs.tart.disk.format";

/** Tart's default (and cove's default) disk chunk size. */
export const DEFAULT_CHUNK = 512 * 1024 * 1024;

/** An OCI descriptor. */
export interface Descriptor {
  mediaType: string;
  size: number;
  digest: string;
  annotations?: Record<string, string>;
}

/** An OCI image manifest. */
export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** One disk layer with its place in the disk. */
export interface DiskLayer extends Descriptor {
  index: number;
  /** Offset of the chunk in the uncompressed disk. */
  offset: number;
  uncompressedSize: number;
  uncompressedDigest?: string;
}

/** A validated Tart image manifest. */
export interface TartImage {
  manifest: Manifest;
  config: Descriptor;
  disks: DiskLayer[];
  nvram?: Descriptor;
  /** Sum of the disk layers' uncompressed sizes. */
  diskSize: number;
}

const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;

function notVm(
  ref: string,
  why: string,
  hint = "cove pulls VM images in Tart's format, such as ghcr.io/cirruslabs/*",
): CoveError {
  return new CoveError("oci.not_vm", `'${ref}' is not a VM image: ${why}`, {
    hint,
    exit: ExitCode.Usage,
  });
}

/**
 * Parses and checks a manifest as a Tart VM image. Refuses container
 * images, indexes and other artifacts with a line that says what it is.
 */
export function parseTartManifest(ref: string, bytes: Uint8Array, contentType = ""): TartImage {
  let m: Manifest;
  try {
    m = JSON.parse(new TextDecoder().decode(bytes)) as Manifest;
  } catch {
    throw notVm(ref, "its manifest is not JSON");
  }
  if (typeof m !== "object" || m === null) throw notVm(ref, "its manifest is not a JSON object");
  const mt = m.mediaType ?? contentType;
  if (
    mt === OCI_INDEX || mt === DOCKER_LIST ||
    Array.isArray((m as { manifests?: unknown }).manifests)
  ) {
    throw notVm(ref, "it is a multi-platform image index (a container image)");
  }
  if (mt === DOCKER_MANIFEST) throw notVm(ref, "it is a Docker container image");
  if (mt && mt !== OCI_MANIFEST) throw notVm(ref, `its manifest has media type '${mt}'`);
  if (m.schemaVersion !== 2 || !m.config || !Array.isArray(m.layers)) {
    throw notVm(ref, "its manifest is not an OCI image manifest");
  }
  const types = m.layers.map((l) => l?.mediaType);
  if (types.includes(TART_DISK_V1)) {
    throw new CoveError(
      "oci.unsupported",
      `'${ref}' uses Tart's old disk format (${TART_DISK_V1}), which is unsupported`,
      { hint: "re-push the image with a current Tart or cove", exit: ExitCode.Usage },
    );
  }
  const foreign = types.find((t) => t !== TART_CONFIG && t !== TART_DISK_V2 && t !== TART_NVRAM);
  if (foreign !== undefined) {
    if (/tar|rootfs|docker\.image|oci\.image\.layer/.test(String(foreign))) {
      throw notVm(ref, `it is a container image (layer type '${foreign}')`);
    }
    throw notVm(ref, `it has a layer of type '${foreign}'`);
  }
  for (const l of [m.config, ...m.layers]) {
    if (
      !l || typeof l.digest !== "string" || !DIGEST_RE.test(l.digest) ||
      !Number.isSafeInteger(l.size) || l.size < 0
    ) {
      throw notVm(ref, "a descriptor in its manifest has a bad digest or size");
    }
  }
  const configs = m.layers.filter((l) => l.mediaType === TART_CONFIG);
  if (configs.length !== 1) {
    throw notVm(ref, `it has ${configs.length} Tart config layers, not one`);
  }
  const nvrams = m.layers.filter((l) => l.mediaType === TART_NVRAM);
  if (nvrams.length > 1) throw notVm(ref, "it has more than one NVRAM layer");
  const disks: DiskLayer[] = [];
  let offset = 0;
  for (const l of m.layers) {
    if (l.mediaType !== TART_DISK_V2) continue;
    const raw = l.annotations?.[ANN_UNCOMPRESSED_SIZE];
    const size = raw === undefined ? NaN : Number(raw);
    if (!Number.isSafeInteger(size) || size < 0) {
      throw notVm(
        ref,
        `disk layer ${disks.length + 1} has no valid '${ANN_UNCOMPRESSED_SIZE}' annotation`,
      );
    }
    const ud = l.annotations?.[ANN_UNCOMPRESSED_DIGEST];
    disks.push({
      ...l,
      index: disks.length,
      offset,
      uncompressedSize: size,
      uncompressedDigest: ud,
    });
    offset += size;
  }
  if (disks.length === 0) throw notVm(ref, "it has no disk layers");
  const declared = m.annotations?.[ANN_DISK_SIZE];
  if (declared !== undefined && Number(declared) !== offset) {
    throw notVm(ref, `its disk layers add up to ${offset} bytes but the manifest says ${declared}`);
  }
  return { manifest: m, config: configs[0], disks, nvram: nvrams[0], diskSize: offset };
}

/** JSON with object keys sorted, as Tart encodes manifests. */
export function sortedJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      return Object.fromEntries(
        Object.entries(v as Record<string, unknown>).sort((
          [a],
          [b],
        ) => (a < b ? -1 : a > b ? 1 : 0)),
      );
    }
    return v;
  });
}

/** Builds the manifest of a push. */
export function buildManifest(opts: {
  ociConfig: Descriptor;
  config: Descriptor;
  disks: Descriptor[];
  nvram: Descriptor;
  diskSize: number;
  uploadTime?: Date;
}): Uint8Array<ArrayBuffer> {
  const layer = (d: Descriptor): Descriptor => ({
    mediaType: d.mediaType,
    size: d.size,
    digest: d.digest,
    annotations: d.annotations ?? {},
  });
  const manifest: Manifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, size: opts.ociConfig.size, digest: opts.ociConfig.digest },
    layers: [layer(opts.config), ...opts.disks.map(layer), layer(opts.nvram)],
    annotations: {
      [ANN_DISK_SIZE]: String(opts.diskSize),
      [ANN_UPLOAD_TIME]: (opts.uploadTime ?? new Date()).toISOString().replace(/\.\d{3}Z$/, "Z"),
    },
  };
  return new TextEncoder().encode(sortedJson(manifest));
}

/** The small OCI image config Tart pushes (for registries that show os/arch). */
export function ociConfigJson(tart: TartConfig): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(sortedJson({
    architecture: tart.arch,
    os: tart.os,
    config: { Labels: { [LABEL_DISK_FORMAT]: tart.diskFormat ?? "raw" } },
  }));
}

/** Tart's config.json. */
export interface TartConfig {
  version: number;
  os: "darwin" | "linux";
  arch: "arm64" | "amd64";
  cpuCountMin: number;
  cpuCount: number;
  memorySizeMin: number;
  memorySize: number;
  macAddress: string;
  display?: { width: number; height: number; unit?: "pt" | "px" };
  displayRefit?: boolean;
  diskFormat?: string;
  /** VZMacMachineIdentifier dataRepresentation, base64 (macOS). */
  ecid?: string;
  /** VZMacHardwareModel dataRepresentation, base64 (macOS). */
  hardwareModel?: string;
  /**
   * cove's own field (Tart ignores unknown keys): how a macOS VM was
   * installed, so that `cove get` stays true about iCloud after a pull.
   */
  coveInstall?: TartInstallRecord;
}

/** The install record as it travels in the image config (no password, no progress). */
export interface TartInstallRecord {
  restoreImage: { version: string; build: string };
  hostIdentity: string;
  machineIdentity?: string;
  installedAt: string;
}

function installRecordOf(v: unknown): TartInstallRecord | undefined {
  if (!v || typeof v !== "object") return undefined;
  const r = v as Record<string, unknown>;
  const img = r.restoreImage as Record<string, unknown> | undefined;
  if (
    !img || typeof img.version !== "string" || typeof img.build !== "string" ||
    typeof r.hostIdentity !== "string" || typeof r.installedAt !== "string"
  ) return undefined;
  return {
    restoreImage: { version: img.version, build: img.build },
    hostIdentity: r.hostIdentity,
    ...(typeof r.machineIdentity === "string" ? { machineIdentity: r.machineIdentity } : {}),
    installedAt: r.installedAt,
  };
}

/** Reads and checks Tart's config.json. */
export function parseTartConfig(ref: string, bytes: Uint8Array): TartConfig {
  let c: Partial<TartConfig>;
  try {
    c = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw notVm(
      ref,
      "its config.json is not JSON",
      "the image is damaged; ask its publisher to push it again",
    );
  }
  const os = c.os ?? "darwin";
  const arch = c.arch ?? "arm64";
  if (os !== "darwin" && os !== "linux") throw notVm(ref, `its config names an unknown os '${os}'`);
  if (arch !== "arm64" && arch !== "amd64") {
    throw notVm(ref, `its config names an unknown arch '${arch}'`);
  }
  const num = (v: unknown, what: string): number => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      throw notVm(ref, `its config has no valid ${what}`);
    }
    return v;
  };
  return {
    version: typeof c.version === "number" ? c.version : 1,
    os,
    arch,
    cpuCount: num(c.cpuCount, "cpuCount"),
    cpuCountMin: typeof c.cpuCountMin === "number" ? c.cpuCountMin : num(c.cpuCount, "cpuCount"),
    memorySize: num(c.memorySize, "memorySize"),
    memorySizeMin: typeof c.memorySizeMin === "number"
      ? c.memorySizeMin
      : num(c.memorySize, "memorySize"),
    macAddress: typeof c.macAddress === "string" ? c.macAddress : "",
    display:
      c.display && typeof c.display.width === "number" && typeof c.display.height === "number"
        ? { width: c.display.width, height: c.display.height, unit: c.display.unit }
        : undefined,
    displayRefit: c.displayRefit,
    diskFormat: c.diskFormat ?? "raw",
    ecid: typeof c.ecid === "string" ? c.ecid : undefined,
    hardwareModel: typeof c.hardwareModel === "string" ? c.hardwareModel : undefined,
    ...(installRecordOf(c.coveInstall) ? { coveInstall: installRecordOf(c.coveInstall) } : {}),
  };
}

/** Where the pulled files go and what identity the VM gets. */
export interface SpecFromTart {
  spec: SpecParsed;
  /** For machine.json. */
  vzMachineIdentifier?: string;
  vzHardwareModel?: string;
}

/** The root disk and NVRAM file names cove gives a VM made from an image. */
export const IMAGE_DISK: string = BUNDLE_FILES.rootDisk;
/** The Mac auxiliary storage (Tart's nvram layer) under the name the vz engine reads. */
export const MAC_AUX: string = BUNDLE_FILES.auxStorage;
/** The EFI variable store (Tart's nvram layer for Linux guests). */
export const EFI_VARS: string = BUNDLE_FILES.efiVars;

const MAC_RE = /^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/;

/** Translates Tart's config.json into a cove spec (before defaults). */
export function specFromTart(c: TartConfig): SpecFromTart {
  const macos = c.os === "darwin";
  const clamp = (v: number, lo: number, hi: number) => Math.max(lo, Math.min(hi, Math.round(v)));
  const spec: SpecParsed = {
    os: macos ? "macos" : "linux",
    arch: c.arch === "amd64" ? "x86_64" : "arm64",
    engine: "auto",
    cpus: clamp(c.cpuCount, 1, 256),
    memory: formatSize(c.memorySize),
    disks: [{
      path: IMAGE_DISK,
      format: c.diskFormat === "asif" ? "asif" : "raw",
      media: "disk",
      readOnly: false,
      cache: "auto",
      sync: "full",
      bus: "virtio",
    }],
    boot: macos ? { loader: "macos" } : { loader: "efi", variableStore: BUNDLE_FILES.efiVars },
    networks: [{
      mode: "nat",
      forwards: [],
      ...(MAC_RE.test(c.macAddress) ? { mac: c.macAddress.toLowerCase() } : {}),
    }],
    shares: [],
    rosetta: false,
    nested: false,
    display: c.display
      ? {
        width: clamp(c.display.width, 320, 8192),
        height: clamp(c.display.height, 200, 8192),
        ppi: c.display.unit === "px" ? 72 : 144,
      }
      : "none",
    audio: false,
    keyboard: "auto",
    pointing: "auto",
    clipboard: false,
    vsock: true,
    entropy: true,
    balloon: true,
  };
  return {
    spec,
    vzMachineIdentifier: macos ? c.ecid : undefined,
    vzHardwareModel: macos ? c.hardwareModel : undefined,
  };
}

/** Translates a cove spec (with defaults applied) into Tart's config.json. */
export function tartFromSpec(
  spec: {
    os: string;
    arch: string;
    cpus: number;
    memory: string | number;
    networks: { mode: string; mac?: string }[];
    display: "none" | { width: number; height: number; ppi: number };
    disks: { format: string }[];
  },
  identity: { vzMachineIdentifier?: string; vzHardwareModel?: string },
  install?: TartInstallRecord,
): TartConfig {
  const macos = spec.os === "macos";
  const memory = parseSize(spec.memory, "memory");
  const mac = spec.networks.find((n) => n.mac)?.mac ?? randomTartMac();
  const cfg: TartConfig = {
    version: 1,
    os: macos ? "darwin" : "linux",
    arch: spec.arch === "x86_64" ? "amd64" : "arm64",
    cpuCountMin: macos ? Math.min(spec.cpus, 4) : 1,
    cpuCount: spec.cpus,
    memorySizeMin: macos ? Math.min(memory, 4 * 2 ** 30) : Math.min(memory, 512 * 2 ** 20),
    memorySize: memory,
    macAddress: mac,
    diskFormat: spec.disks[0]?.format === "asif" ? "asif" : "raw",
  };
  if (spec.display !== "none") {
    cfg.display = {
      width: spec.display.width,
      height: spec.display.height,
      unit: spec.display.ppi <= 72 ? "px" : "pt",
    };
  }
  if (macos) {
    if (identity.vzMachineIdentifier) cfg.ecid = identity.vzMachineIdentifier;
    if (identity.vzHardwareModel) cfg.hardwareModel = identity.vzHardwareModel;
    if (install) {
      cfg.coveInstall = {
        restoreImage: install.restoreImage,
        hostIdentity: install.hostIdentity,
        ...(install.machineIdentity ? { machineIdentity: install.machineIdentity } : {}),
        installedAt: install.installedAt,
      };
    }
  }
  return cfg;
}

function randomTartMac(): string {
  const b = crypto.getRandomValues(new Uint8Array(6));
  b[0] = (b[0] & 0xfc) | 0x02;
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(":");
}
