/**
 * The JSON shapes that cross the libcove_vz C ABI, as TypeScript types:
 * the VM configuration the shim maps onto Virtualization.framework objects,
 * the results of each call, and the events taken with `next_event`.
 * `swift-shim/include/cove_vz.h` documents the same shapes; the Swift side
 * decodes them with Codable structs of the same field names.
 * @module
 */

/** An error as the shim reports it: NSError fields kept. */
export interface VzErrorJson {
  domain: string;
  code: number;
  message: string;
  /** localizedFailureReason, when set. */
  reason?: string;
  /** NSUnderlyingError, when set. */
  underlying?: VzErrorJson;
  /** For version gates: the macOS version that introduced the feature. */
  requires?: string;
}

/** Base64 of an opaque VZ data representation. */
export type Base64 = string;

export type VzPlatform =
  | {
    type: "mac";
    hardwareModel: Base64;
    machineIdentifier: Base64;
    auxiliaryStorage: string;
  }
  | {
    type: "generic";
    machineIdentifier?: Base64;
    nestedVirtualization?: boolean;
  };

export type VzBootLoader =
  | { type: "macos" }
  | { type: "efi"; variableStore: string }
  | { type: "linux"; kernel: string; initialRamdisk?: string; commandLine?: string };

export interface VzStorage {
  type: "virtio-block" | "nvme" | "usb-mass-storage";
  path: string;
  /** Absent means raw; asif needs macOS 26. */
  format?: "raw" | "asif";
  readOnly: boolean;
  caching: "automatic" | "cached" | "uncached";
  sync: "full" | "fsync" | "none";
  identifier?: string;
}

export type VzNetworkAttachment =
  | { type: "nat" }
  | { type: "bridged"; interface: string }
  /** A vmnet network made for a cove network (macOS 26+: VZVmnetNetworkDeviceAttachment). */
  | { type: "vmnet"; mode: "host" | "shared"; subnet: string }
  | { type: "fileHandle"; fd: number; mtu?: number };

export interface VzNetwork {
  macAddress?: string;
  attachment: VzNetworkAttachment;
}

export type VzShare =
  | { type: "single"; path: string; readOnly: boolean }
  | { type: "multiple"; directories: Record<string, { path: string; readOnly: boolean }> }
  | { type: "rosetta" };

export interface VzDirectoryShare {
  tag: string;
  /** macOS guests: use VZ's automount tag (the share appears under /Volumes). */
  automount?: boolean;
  share: VzShare;
}

export type VzSerialAttachment =
  | { type: "fileHandles"; readFd: number; writeFd: number }
  | { type: "file"; path: string; append: boolean };

export interface VzConsolePort {
  name: string;
  isConsole: boolean;
  attachment: VzSerialAttachment;
}

export interface VzDisplay {
  width: number;
  height: number;
  ppi: number;
}

export type VzGraphics =
  | { type: "mac"; displays: VzDisplay[] }
  | { type: "virtio"; scanouts: { width: number; height: number }[] };

/** The VM configuration given to `cove_vz_validate` and `cove_vz_create`. */
export interface VzConfig {
  cpuCount: number;
  memorySize: number;
  platform: VzPlatform;
  bootLoader: VzBootLoader;
  storage?: VzStorage[];
  network?: VzNetwork[];
  directoryShares?: VzDirectoryShare[];
  entropy?: boolean;
  memoryBalloon?: boolean;
  socket?: boolean;
  serialPorts?: VzSerialAttachment[];
  consolePorts?: VzConsolePort[];
  clipboard?: boolean;
  /** noHostSink: the output stream plays nowhere (suspendable VMs: VZ refuses to save a host sink). */
  audio?: { input: boolean; output: boolean; noHostSink?: boolean } | null;
  keyboards?: ("usb" | "mac")[];
  pointingDevices?: ("usb" | "trackpad")[];
  graphics?: VzGraphics | null;
}

/** What `cove_vz_host_info` reports. */
export interface VzHostInfo {
  supported: boolean;
  macosVersion: string;
  machineModel?: string;
  cpuCount: { min: number; max: number };
  memorySize: { min: number; max: number };
  nestedVirtualizationSupported: boolean;
  saveRestoreSupported: boolean;
  rosetta: "installed" | "notInstalled" | "notSupported";
  entitlements: { virtualization: boolean; networking: boolean };
  bridgedInterfaces: { identifier: string; name?: string }[];
  /** Set only by the test double. */
  testDouble?: boolean;
}

/** VZ's virtual machine states, as the shim names them. */
export type VzState =
  | "stopped"
  | "running"
  | "paused"
  | "error"
  | "starting"
  | "pausing"
  | "resuming"
  | "stopping"
  | "saving"
  | "restoring";

export interface VzStateInfo {
  state: VzState;
  canStart: boolean;
  canStop: boolean;
  canPause: boolean;
  canResume: boolean;
  canRequestStop: boolean;
}

/** Events queued by the shim, taken with `cove_vz_next_event`. */
export type VzEvent =
  | { type: "state"; state: VzState }
  | { type: "guest-stopped" }
  | { type: "stopped-with-error"; error: VzErrorJson }
  | { type: "network-disconnected"; index: number; error: VzErrorJson }
  | { type: "install-progress"; fraction: number }
  | { type: "install-finished" }
  | { type: "install-failed"; error: VzErrorJson }
  | { type: "vsock-connection"; port: number; sourcePort: number; fd: number }
  | { type: "window-closed" };

/** A macOS restore image (IPSW) and what it needs of the VM. */
export interface VzRestoreImage {
  /** The local IPSW's path, or the https URL of a fetched image. */
  url: string;
  buildVersion: string;
  operatingSystemVersion: string;
  supported: boolean;
  requirements: {
    hardwareModel: Base64;
    minimumCPUCount: number;
    minimumMemorySize: number;
  } | null;
}

export interface VzStartOptions {
  /** macOS guests: boot into recoveryOS. */
  recovery?: boolean;
  /**
   * macOS guests on a macOS 27 host: VZMacGuestProvisioningOptions, set with
   * VZMacOSVirtualMachineStartOptions.setGuestProvisioning(_:) (which
   * validates them). A guest older than 27 ignores them.
   */
  provisioning?: {
    username: string;
    fullName: string;
    password: string;
    logsInAutomatically: boolean;
    enablesRemoteLogin: boolean;
  };
}

export interface VzWindowOptions {
  title: string;
  width: number;
  height: number;
  capturesSystemKeys?: boolean;
  automaticallyReconfiguresDisplay?: boolean;
}
