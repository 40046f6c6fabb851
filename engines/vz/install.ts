/**
 * macOS installation from a restore image (IPSW) with VZMacOSInstaller, for
 * `cove create NAME --from ipsw:latest|PATH.ipsw|URL`. The caller (core)
 * creates the bundle directory and the raw root disk, downloads the IPSW if
 * it is remote ({@link latestRestoreImage} gives the URL for `latest`), and
 * shows progress; this module does the VZ part:
 *
 * 1. load the IPSW and take the most featureful configuration this Mac
 *    supports (hardware model, minimum CPUs and memory);
 * 2. create the Mac auxiliary storage and a new machine identifier, and
 *    record both in machine.json;
 * 3. run the installer in a VM with that platform, reporting progress, and
 *    cancel it when the signal aborts.
 * @module
 */
import { CoveError, ExitCode } from "../../core/errors.ts";
import type { CoveVz, VzConfig, VzRestoreImage } from "../../ffi/cove_vz.ts";
import { vzError } from "./errors.ts";
import { engine, writeIdentity } from "./mod.ts";

export interface InstallMacOSOptions {
  /** A local IPSW file. */
  ipsw: string;
  /** Where the Mac auxiliary storage goes (the bundle's file). */
  auxiliaryStorage: string;
  /** The bundle's machine.json. */
  machine: string;
  /** The raw root disk, already created at its full size. */
  disk: string;
  /** Wanted CPUs and memory; raised to the image's minimum. */
  cpus?: number;
  memory?: number;
  /** Aborting cancels the install. */
  signal?: AbortSignal;
  /** The library; defaults to the vz engine's. */
  vz?: CoveVz;
}

export interface InstallMacOSResult {
  image: VzRestoreImage;
  cpus: number;
  memory: number;
  hardwareModel: string;
  machineIdentifier: string;
  auxiliaryStorage: string;
}

/** What the newest macOS this Mac supports is, and where to download it. */
export async function latestRestoreImage(vz?: CoveVz): Promise<VzRestoreImage> {
  const lib = vz ?? await engine.library();
  try {
    return await lib.restoreImageFetchLatest();
  } catch (e) {
    throw vzError(e, "fetching the latest macOS restore image");
  }
}

/** Installs macOS into a bundle; onProgress gets 0..1. */
export async function installMacOS(
  opts: InstallMacOSOptions,
  onProgress: (fraction: number) => void = () => {},
): Promise<InstallMacOSResult> {
  const vz = opts.vz ?? await engine.library();
  const call = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (e) {
      throw vzError(e, what);
    }
  };
  const image = await call("loading the IPSW", () => vz.restoreImageLoad(opts.ipsw));
  const req = image.requirements;
  if (!image.supported || !req) {
    throw new CoveError(
      "vz.ipsw_unsupported",
      `macOS ${image.operatingSystemVersion} (${image.buildVersion}) cannot be installed on this Mac`,
      { hint: "update this Mac's macOS, or use an older IPSW", exit: ExitCode.Host },
    );
  }
  const cpus = Math.max(req.minimumCPUCount, opts.cpus ?? 4);
  const memory = Math.max(req.minimumMemorySize, opts.memory ?? 8 * 2 ** 30);
  const auxiliaryStorage = opts.auxiliaryStorage;
  await Deno.remove(auxiliaryStorage).catch(() => {});
  await call(
    "creating auxiliary storage",
    () => vz.macAuxiliaryStorageCreate(auxiliaryStorage, req.hardwareModel),
  );
  const machineIdentifier = await call("machine identifier", () => vz.machineIdentifierNew("mac"));
  await writeIdentity(opts.machine, {
    vzHardwareModel: req.hardwareModel,
    vzMachineIdentifier: machineIdentifier,
  });

  const config: VzConfig = {
    cpuCount: cpus,
    memorySize: memory,
    platform: {
      type: "mac",
      hardwareModel: req.hardwareModel,
      machineIdentifier,
      auxiliaryStorage,
    },
    bootLoader: { type: "macos" },
    storage: [{
      type: "virtio-block",
      path: opts.disk,
      readOnly: false,
      caching: "automatic",
      sync: "full",
    }],
    network: [{ attachment: { type: "nat" } }],
    graphics: { type: "mac", displays: [{ width: 1920, height: 1200, ppi: 144 }] },
    keyboards: ["usb"],
    pointingDevices: ["usb"],
  };
  const handle = await call("creating the installer VM", () => vz.create(config));
  const onAbort = () => void vz.installCancel(handle).catch(() => {});
  try {
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    await call("starting the install", () => vz.installMacOS(handle, opts.ipsw));
    while (true) {
      const { event, closed } = await call("install", () => vz.nextEvent(handle, 500));
      if (closed) throw new CoveError("vz.install", "the installer VM went away", {});
      if (!event) continue;
      if (event.type === "install-progress") onProgress(event.fraction);
      if (event.type === "install-finished") break;
      if (event.type === "install-failed") {
        if (opts.signal?.aborted) {
          throw new CoveError("vz.cancelled", "macOS install cancelled", {
            exit: ExitCode.Interrupted,
          });
        }
        throw new CoveError("vz.install", `macOS install failed: ${event.error.message}`, {
          hint: "check the IPSW and free disk space, then retry",
        });
      }
    }
    onProgress(1);
  } finally {
    opts.signal?.removeEventListener("abort", onAbort);
    await vz.release(handle).catch(() => {});
  }
  return {
    image,
    cpus,
    memory,
    hardwareModel: req.hardwareModel,
    machineIdentifier,
    auxiliaryStorage,
  };
}
