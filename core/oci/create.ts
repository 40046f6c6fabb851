/**
 * VMs from OCI images: `cove create NAME --from oci://REF` and `cove clone
 * REF NEW`. Pulls the image into the cache (core/oci/pull.ts), translates
 * Tart's config.json into a cove spec, and creates the VM with the store's
 * atomic create: disk and NVRAM cloned from the cache copy-on-write where
 * the file system allows, else hole-preserving, the Mac identity written to
 * machine.json. The VM appears only when complete.
 * @module
 */
import { writeInstallRecord } from "../provision/macos.ts";
import { CoveError, ExitCode } from "../errors.ts";
import { detectHost } from "../host.ts";
import type { SourceHandler, SourceOptions } from "../images/source.ts";
import { applyFlags, readConfigFile, type SpecFlags } from "../spec/compose.ts";
import { applyDefaults } from "../spec/defaults.ts";
import type { SpecParsed, VmSpec } from "../spec/schema.ts";
import type { Bundle, MachineIdentity } from "../store/bundle.ts";
import { cloneFile, writeFileAtomic } from "../store/fsutil.ts";
import { randomMac, type Store } from "../store/store.ts";
import { parseSize } from "../units.ts";
import { type PulledImage, pullImage, type PullOptions } from "./pull.ts";
import { EFI_VARS, MAC_AUX, specFromTart } from "./tart.ts";

/** Options of {@link createFromOci}. */
export interface CreateFromOciOptions extends Omit<PullOptions, "home"> {
  /** Spec values that win over the image's config. */
  overrides?: Partial<SpecParsed>;
  /**
   * A cove.yaml (`--config`) whose settings win over the image's, except
   * os, arch, boot and the root disk's file; its root disk size applies.
   */
  config?: string;
  /** Flags that win over the image and the config: `--cpus`, `--memory`, `--disk-size`... */
  flags?: SpecFlags;
  /** Keep the image's MAC address instead of giving the VM a new one. */
  keepMac?: boolean;
}

/** What {@link createFromOci} made. */
export interface CreatedFromOci {
  bundle: Bundle;
  image: PulledImage;
}

/**
 * Pulls `ref` (or finds it in the cache) and creates VM `name` from it,
 * atomically: the VM appears only when complete. The disk is cloned from
 * the cache copy-on-write where the file system allows, else hole-preserving.
 */
export async function createFromOci(
  store: Store,
  name: string,
  ref: string,
  opts: CreateFromOciOptions = {},
): Promise<CreatedFromOci> {
  store.bundle(name); // validates the name before any download
  if (await store.exists(name)) {
    throw new CoveError("vm.exists", `a VM named '${name}' already exists`, {
      hint: "choose another name, or delete the existing VM first",
      exit: ExitCode.Usage,
    });
  }
  // The config file and the flags are checked before anything is downloaded.
  const config = opts.config ? await readConfigFile(opts.config) : undefined;
  if (opts.flags) applyFlags(config ?? ({} as SpecParsed), opts.flags);
  const image = await pullImage(ref, { ...opts, home: store.home });
  const fromTart = specFromTart(image.tart);
  let spec: SpecParsed = { ...fromTart.spec, ...opts.overrides };
  if (config) spec = overlayConfig(spec, config);
  if (opts.flags) spec = applyFlags(spec, opts.flags);
  if (!opts.keepMac && spec.networks) {
    spec.networks = spec.networks.map((n) => ({ ...n, mac: randomMac() }));
  }
  const bundle = await store.create(name, {
    spec,
    populate: (staging, full) => placeImage(image, staging, full, fromTart),
  });
  return { bundle, image };
}

/** Lays a config file over an image's spec: the image keeps os, arch, boot and its root disk file. */
function overlayConfig(image: SpecParsed, config: SpecParsed): SpecParsed {
  const { os: _os, arch: _arch, boot: _boot, disks, ...rest } = config;
  const out: SpecParsed = { ...image, ...rest };
  const size = disks?.find((d) => (d.media ?? "disk") === "disk")?.size;
  if (size !== undefined && out.disks?.length) {
    const i = Math.max(0, out.disks.findIndex((d) => (d.media ?? "disk") === "disk"));
    out.disks = out.disks.map((d, j) => (j === i ? { ...d, size } : d));
  }
  return out;
}

/** Copies a pulled image's disk and NVRAM into a staging bundle; records the Mac identity. */
async function placeImage(
  image: PulledImage,
  staging: Bundle,
  spec: VmSpec,
  ids: { vzMachineIdentifier?: string; vzHardwareModel?: string },
): Promise<VmSpec> {
  const root = spec.disks.findIndex((d) => d.media === "disk");
  const diskPath = staging.resolve(spec.disks[root].path);
  await cloneFile(image.diskPath, diskPath);
  if (image.nvramPath && (await Deno.stat(image.nvramPath)).size > 0) {
    const target = spec.os === "macos" ? MAC_AUX : spec.boot.variableStore ?? EFI_VARS;
    await cloneFile(image.nvramPath, staging.resolve(target));
  }
  if (ids.vzHardwareModel || ids.vzMachineIdentifier) {
    const m: MachineIdentity = await staging.readMachine().catch(() => ({
      uuid: crypto.randomUUID(),
      created: new Date().toISOString(),
    }));
    if (ids.vzHardwareModel) m.vzHardwareModel = ids.vzHardwareModel;
    if (ids.vzMachineIdentifier) m.vzMachineIdentifier = ids.vzMachineIdentifier;
    await writeFileAtomic(staging.machinePath, JSON.stringify(m, null, 2) + "\n");
  }
  if (spec.os === "macos" && image.tart.coveInstall) {
    // The install record travels with the image: iCloud's answer stays true.
    await writeInstallRecord(staging, { ...image.tart.coveInstall });
  }
  // A disk size asked for (grow only) is applied by the store after this step.
  const size = spec.disks[root].size;
  const current = (await Deno.stat(diskPath)).size;
  if (size !== undefined && parseSize(size) < current) {
    const disks = [...spec.disks];
    disks[root] = { ...disks[root], size: undefined };
    return { ...spec, disks };
  }
  return spec;
}

/**
 * The `oci://` handler for `cove create NAME --from oci://REF` (see
 * core/images/source.ts). The image's config decides os, arch, boot,
 * display and the root disk; cpus, memory and disk size from flags win when
 * they differ from the defaults.
 */
export function ociSourceHandler(
  home: string,
  extra: Omit<PullOptions, "home"> = {},
): SourceHandler {
  return async (
    ref: string,
    staging: Bundle,
    spec: VmSpec,
    opts: SourceOptions,
  ): Promise<VmSpec> => {
    const emit = opts.onProgress;
    const image = await pullImage(ref, {
      ...extra,
      home,
      onProgress: emit
        ? (p) => emit({ type: "progress", url: ref, received: p.done, total: p.total })
        : extra.onProgress,
    });
    const fromTart = specFromTart(image.tart);
    const host = detectHost();
    const plain = applyDefaults({} as SpecParsed, host, staging.name);
    const parsed: SpecParsed = {
      ...spec,
      ...fromTart.spec,
      engine: spec.engine,
      shares: spec.shares,
      provision: spec.provision,
      qemu: spec.qemu,
      serial: spec.serial,
      cpus: spec.cpus !== plain.cpus ? spec.cpus : fromTart.spec.cpus,
      memory: parseSize(spec.memory) !== parseSize(plain.memory)
        ? spec.memory
        : fromTart.spec.memory,
      networks: fromTart.spec.networks?.map((n) => ({ ...n, mac: randomMac() })),
    };
    const wantSize = spec.disks[0]?.size !== plain.disks[0]?.size ? spec.disks[0]?.size : undefined;
    if (wantSize !== undefined && parsed.disks) {
      parsed.disks = [{ ...parsed.disks[0], size: wantSize }];
    }
    const full = applyDefaults(parsed, host, staging.name);
    return await placeImage(image, staging, full, fromTart);
  };
}
