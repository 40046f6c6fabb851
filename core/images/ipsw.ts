/**
 * macOS guests from restore images: `cove create NAME --from ipsw:latest`,
 * `--from ipsw:PATH.ipsw`, `--from ipsw:https://…/x.ipsw` (a bare `.ipsw`
 * path or URL works too). The IPSW is downloaded through the image cache
 * (resumable, verified against nothing but its own size: Apple publishes no
 * checksums), the root disk is created sparse at its full size, and the
 * engine's {@link RestoreImageInstaller} (vz: VZMacOSInstaller) installs
 * with progress. Only a Mac with Apple silicon can do this; elsewhere it is
 * one clear line.
 * @module
 */
import type { RestoreImageInstaller } from "../../engines/engine.ts";
import { loadEngine, restoreImageEngineId } from "../../engines/select.ts";
import { CoveError, ExitCode } from "../errors.ts";
import { detectHost, type HostInfo } from "../host.ts";
import { memoryBytes } from "../spec/defaults.ts";
import type { VmSpec } from "../spec/schema.ts";
import type { Bundle } from "../store/bundle.ts";
import { ensureSparseFile } from "../store/fsutil.ts";
import { formatSize, parseSize } from "../units.ts";
import { download } from "./download.ts";
import { hostIdentityHash, sha256Hex, writeInstallRecord } from "../provision/macos.ts";
import type { SourceEvent, SourceOptions } from "./source.ts";

/** True for sources that install macOS. */
export function isIpswSource(src: string): boolean {
  return src.startsWith("ipsw:") || /\.ipsw$/i.test(src.split("?")[0]);
}

/** Where an IPSW source points: the newest image, a URL, or a local file. */
export type IpswLocation = { kind: "latest" } | { kind: "url"; url: string } | {
  kind: "file";
  path: string;
};

/** Parses `ipsw:latest`, `ipsw:URL`, `ipsw:PATH`, or a bare URL/path ending in .ipsw. */
export function parseIpswSource(src: string): IpswLocation {
  const rest = src.startsWith("ipsw:") ? src.slice(5) : src;
  if (rest === "latest" || rest === "") return { kind: "latest" };
  if (/^https?:\/\//i.test(rest)) return { kind: "url", url: rest };
  return { kind: "file", path: rest };
}

/** Refuses hosts that cannot install macOS. */
export function assertCanInstallMacOS(host: HostInfo = detectHost()): void {
  if (restoreImageEngineId(host) === undefined) throw noInstaller();
}

/** The installer of the engine that installs restore images on this host. */
export async function restoreImageInstaller(
  host: HostInfo = detectHost(),
): Promise<RestoreImageInstaller> {
  const id = restoreImageEngineId(host);
  const installer = id ? (await loadEngine(id)).restoreImageInstaller() : undefined;
  if (!installer) throw noInstaller();
  return installer;
}

function noInstaller(): CoveError {
  return new CoveError(
    "ipsw.host",
    "installing macOS from an IPSW needs a Mac with Apple silicon (the vz engine)",
    {
      hint:
        "run this on an Apple silicon Mac, or pull a ready macOS image with 'cove clone REF NAME'",
      exit: ExitCode.Host,
    },
  );
}

/**
 * The source handler for IPSW sources: installs macOS into the staging
 * bundle and returns the spec with the CPU and memory the image needs.
 */
export async function installFromIpsw(
  src: string,
  staging: Bundle,
  spec: VmSpec,
  opts: SourceOptions,
): Promise<VmSpec> {
  const installer = await restoreImageInstaller();
  if (spec.os !== "macos") {
    throw new CoveError("ipsw.os", "--from ipsw: creates macOS guests; remove --os linux", {
      exit: ExitCode.Usage,
    });
  }
  const emit: (e: SourceEvent) => void = opts.onProgress ?? (() => {});
  const where = parseIpswSource(src);
  let ipsw: string;
  if (where.kind === "file") {
    ipsw = where.path;
    await Deno.stat(ipsw).catch(() => {
      throw new CoveError("ipsw.not_found", `--from: '${ipsw}' does not exist`, {
        hint: "give a .ipsw file, an https URL, or ipsw:latest",
        exit: ExitCode.NotFound,
      });
    });
  } else {
    const url = where.kind === "url" ? where.url : (await installer.latest()).url;
    emit({ type: "resolve", source: src, description: `macOS restore image ${url}` });
    ipsw = (await download(url, { cache: opts.cache, onProgress: emit, signal: opts.signal })).path;
  }
  const root = spec.disks.find((d) => d.media === "disk");
  if (!root) throw new CoveError("ipsw.no_disk", "a macOS guest needs a root disk", { exit: 2 });
  const disk = staging.resolve(root.path);
  await ensureSparseFile(disk, parseSize(root.size ?? "64GiB"), "disks[0].size");
  const result = await installer.install({
    image: ipsw,
    paths: staging.vmPaths(),
    disk,
    cpus: spec.cpus,
    memory: memoryBytes(spec),
    signal: opts.signal,
    onProgress: (fraction) => emit({ type: "install", fraction }),
  });
  await writeInstallRecord(staging, {
    restoreImage: { version: result.image.version, build: result.image.build },
    hostIdentity: await hostIdentityHash(),
    machineIdentity: await sha256Hex(result.machineIdentifier),
    installedAt: new Date().toISOString(),
  });
  return { ...spec, cpus: result.cpus, memory: formatSize(result.memory) };
}
