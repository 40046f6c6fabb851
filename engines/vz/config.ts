/**
 * Turns a cove spec into the configuration JSON of libcove_vz (the shape in
 * swift-shim/include/cove_vz.h). A pure function of its inputs, so the
 * mapping is pinned by golden files (tests/unit/golden/vz_*.json).
 *
 * Choices made here, not in Swift:
 * - `auto` input devices: macOS guests get USB + Mac keyboard and USB +
 *   trackpad (Mac keyboard needs macOS 14); Linux guests with a display get
 *   USB ones; headless guests none.
 * - a suspendable macOS VM (host macOS 14+) keeps only devices that VZ can
 *   save: Mac keyboard and trackpad, no entropy, sound output only and
 *   with no host sink.
 * - disk cache `auto` is `cached` for Linux guests (uncached host caching
 *   has corrupted Linux filesystems under VZ) and `automatic` for macOS.
 * - a cdrom is a read-only USB mass storage device; disks on bus `usb` too.
 * - macOS shares with `automount` share one device under VZ's automount
 *   tag, named by their tags, so they appear in /Volumes/My Shared Files.
 * @module
 */
import { QGA_PORT_NAME } from "../engine.ts";
import type { GuestProvisioning, VmPaths } from "../engine.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import { keyboardKind, shareTag } from "../../core/spec/fields.ts";
import { parseSize } from "../../core/units.ts";
import type {
  VzConfig,
  VzDirectoryShare,
  VzNetwork,
  VzStartOptions,
  VzStorage,
} from "../../ffi/cove_vz_json.ts";

/** Everything besides the spec that the configuration depends on. */
export interface VzConfigContext {
  paths: VmPaths;
  /** Base64 VZ identities from machine.json. */
  machineIdentifier?: string;
  hardwareModel?: string;
  /** The Mac auxiliary storage file (macOS guests). */
  auxiliaryStorage: string;
  /** The guest ends of the serial console pipes, when serial is not none. */
  serial?: { readFd: number; writeFd: number };
  /**
   * The guest ends of the guest agent channel's pipes, when the spec has
   * `agent: true`: a virtio console port named `org.qemu.guest_agent.0`.
   */
  agent?: { readFd: number; writeFd: number };
  /** Keep only devices that VZ can save and restore. */
  suspendable: boolean;
  /** Per NIC: the cove network a `mode: network` NIC joins (a vmnet network on VZ). */
  networks?: ({ subnet: string; mode: "host" | "shared" } | undefined)[];
  /** The host's macOS version, e.g. "15.1.0" (decides auto devices). */
  macosVersion: string;
}

/** The kernel command line used when the spec gives none. */
export const DEFAULT_CMDLINE = "console=hvc0";

/** Major version of "15.1.0". */
export function macosMajor(version: string): number {
  return Number(version.split(".")[0]) || 0;
}

function resolve(paths: VmPaths, p: string): string {
  return p.startsWith("/") ? p : `${paths.dir}/${p}`;
}

/** The shim configuration for a spec. */
export function buildVzConfig(spec: VmSpec, ctx: VzConfigContext): VzConfig {
  const macos = spec.os === "macos";
  const major = macosMajor(ctx.macosVersion);
  const config: VzConfig = {
    cpuCount: spec.cpus,
    memorySize: parseSize(spec.memory, "memory"),
    platform: macos
      ? {
        type: "mac",
        hardwareModel: ctx.hardwareModel ?? "",
        machineIdentifier: ctx.machineIdentifier ?? "",
        auxiliaryStorage: ctx.auxiliaryStorage,
      }
      : {
        type: "generic",
        ...(ctx.machineIdentifier ? { machineIdentifier: ctx.machineIdentifier } : {}),
        ...(spec.nested ? { nestedVirtualization: true } : {}),
      },
    bootLoader: bootLoader(spec, ctx.paths),
    storage: spec.disks.map((d, i): VzStorage => {
      const usb = d.media === "cdrom" || d.bus === "usb";
      const s: VzStorage = {
        type: usb ? "usb-mass-storage" : d.bus === "nvme" ? "nvme" : "virtio-block",
        path: resolve(ctx.paths, d.path),
        readOnly: d.readOnly || d.media === "cdrom",
        caching: d.cache === "auto" ? (macos ? "automatic" : "cached") : d.cache,
        sync: d.sync,
      };
      if (d.format === "asif") s.format = "asif";
      if (s.type === "virtio-block") s.identifier = `cove-disk${i}`;
      return s;
    }),
    network: spec.networks.flatMap((n, i): VzNetwork[] => {
      if (n.mode === "none" || n.mode === "user") return [];
      const cove = ctx.networks?.[i];
      const attachment: VzNetwork["attachment"] = n.mode === "bridged"
        ? { type: "bridged" as const, interface: n.interface ?? "" }
        : n.mode === "network"
        ? { type: "vmnet" as const, mode: cove?.mode ?? "host", subnet: cove?.subnet ?? "" }
        : { type: "nat" as const };
      return [n.mac ? { macAddress: n.mac.toLowerCase(), attachment } : { attachment }];
    }),
    directoryShares: shares(spec),
    entropy: spec.entropy && !(macos && ctx.suspendable),
    memoryBalloon: spec.balloon,
    socket: spec.vsock,
    serialPorts: ctx.serial
      ? [{ type: "fileHandles", readFd: ctx.serial.readFd, writeFd: ctx.serial.writeFd }]
      : [],
    consolePorts: spec.agent && ctx.agent
      ? [{
        name: QGA_PORT_NAME,
        isConsole: false,
        attachment: { type: "fileHandles", readFd: ctx.agent.readFd, writeFd: ctx.agent.writeFd },
      }]
      : [],
    clipboard: spec.clipboard,
    audio: spec.audio
      ? macos && ctx.suspendable
        // As Tart: a savable VM's sound output has no host sink.
        ? { input: false, output: true, noHostSink: true }
        : { input: true, output: true }
      : null,
    keyboards: keyboards(spec, major, ctx.suspendable),
    pointingDevices: pointingDevices(spec, ctx.suspendable),
    graphics: spec.display === "none" ? null : macos
      ? {
        type: "mac",
        displays: [{
          width: spec.display.width,
          height: spec.display.height,
          ppi: spec.display.ppi,
        }],
      }
      : { type: "virtio", scanouts: [{ width: spec.display.width, height: spec.display.height }] },
  };
  return config;
}

function bootLoader(spec: VmSpec, paths: VmPaths): VzConfig["bootLoader"] {
  const b = spec.boot;
  switch (b.loader) {
    case "macos":
      return { type: "macos" };
    case "efi":
      return { type: "efi", variableStore: resolve(paths, b.variableStore ?? paths.efiVars) };
    case "kernel": {
      const out: VzConfig["bootLoader"] = {
        type: "linux",
        kernel: resolve(paths, b.kernel ?? ""),
        commandLine: b.cmdline ?? DEFAULT_CMDLINE,
      };
      if (b.initrd) out.initialRamdisk = resolve(paths, b.initrd);
      return out;
    }
  }
}

function tagOf(path: string, tag?: string): string {
  return shareTag({ path, tag });
}

function shares(spec: VmSpec): VzDirectoryShare[] {
  const out: VzDirectoryShare[] = [];
  const automount = spec.os === "macos" ? spec.shares.filter((s) => s.automount) : [];
  if (automount.length > 0) {
    out.push({
      tag: "automount",
      automount: true,
      share: {
        type: "multiple",
        directories: Object.fromEntries(
          automount.map((s) => [tagOf(s.path, s.tag), { path: s.path, readOnly: s.readOnly }]),
        ),
      },
    });
  }
  for (const s of spec.shares) {
    if (automount.includes(s)) continue;
    out.push({
      tag: tagOf(s.path, s.tag),
      share: { type: "single", path: s.path, readOnly: s.readOnly },
    });
  }
  if (spec.rosetta) out.push({ tag: "rosetta", share: { type: "rosetta" } });
  return out;
}

function keyboards(spec: VmSpec, major: number, suspendable: boolean): ("usb" | "mac")[] {
  switch (keyboardKind(spec.keyboard)) {
    case "none":
      return [];
    case "usb":
      return ["usb"];
    case "mac":
      return ["mac"];
    case "auto":
      if (spec.os === "macos") {
        if (major < 14) return ["usb"];
        return suspendable ? ["mac"] : ["usb", "mac"];
      }
      return spec.display === "none" ? [] : ["usb"];
  }
}

function pointingDevices(spec: VmSpec, suspendable: boolean): ("usb" | "trackpad")[] {
  switch (spec.pointing) {
    case "none":
      return [];
    case "usb":
      return ["usb"];
    case "trackpad":
      return ["trackpad"];
    case "auto":
      if (spec.os === "macos") return suspendable ? ["trackpad"] : ["usb", "trackpad"];
      return spec.display === "none" ? [] : ["usb"];
  }
}

/**
 * Whether a VM is built to be suspendable: macOS guests on a host with
 * save/restore (macOS 14+) whose input devices VZ can save.
 */
export function wantsSuspendable(spec: VmSpec, macosVersion: string): boolean {
  return spec.os === "macos" && macosMajor(macosVersion) >= 14 &&
    keyboardKind(spec.keyboard) !== "usb" && spec.pointing !== "usb" &&
    !spec.disks.some((d) => d.media === "cdrom" || d.bus === "usb");
}

/**
 * The shim's start options: provisioning on the first boot after a macOS
 * install (the request carries it only then), nothing on later boots.
 */
export function buildVzStartOptions(
  spec: VmSpec,
  provisioning: GuestProvisioning | undefined,
): VzStartOptions {
  if (spec.os !== "macos" || !provisioning) return {};
  return {
    provisioning: {
      username: provisioning.username,
      fullName: provisioning.fullName,
      password: provisioning.password,
      logsInAutomatically: provisioning.logsInAutomatically,
      enablesRemoteLogin: provisioning.enablesRemoteLogin,
    },
  };
}
