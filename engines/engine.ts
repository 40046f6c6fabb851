/**
 * The Engine interface: the one seam between cove's engine-neutral core and
 * the hypervisors that run VMs (Virtualization.framework in `vz/`, QEMU in
 * `qemu/`). The supervisor in core drives any engine only through this file.
 *
 * Layering note: engines read the spec types (`core/spec/schema.ts`) and the
 * error type (`core/errors.ts`). Those two modules, with `core/units.ts`, are
 * cove's shared vocabulary and import nothing else from core; everything else
 * in core sits above the engines.
 * @module
 */
import type { ArchName, OsName, VmSpec } from "../core/spec/schema.ts";

/** Engine identifiers; `auto` is resolved by {@link ./select.ts}. */
export type EngineId = "vz" | "qemu";

/** Facts about the host that engines and defaults depend on. */
export interface HostInfo {
  os: "linux" | "darwin" | "other";
  arch: ArchName;
  cpus: number;
  /** Total memory in bytes. */
  memory: number;
  /** macOS product version, e.g. "15.1", on macOS hosts. */
  macosVersion?: string;
}

/** Whether something is available, and if not, why. */
export interface Availability {
  available: boolean;
  /** Why not, as one line a user can act on. */
  reason?: string;
}

/** The devices and features an engine may or may not offer on a host. */
export type Feature =
  | "nat"
  | "bridged"
  | "user-net"
  | "port-forward"
  | "shares"
  | "rosetta"
  | "nested"
  | "display"
  | "audio"
  | "clipboard"
  | "vsock"
  | "entropy"
  | "balloon"
  | "suspend"
  | "usb-storage"
  | "nvme";

/** What an engine can do on this host. */
export interface Capabilities extends Availability {
  engine: EngineId;
  /** Which guests run, keyed `os/arch`, e.g. `linux/arm64`. */
  guests: Record<`${OsName}/${ArchName}`, Availability>;
  features: Partial<Record<Feature, Availability>>;
  /** Free-form details shown by `cove doctor` (binary paths, accelerator, library). */
  details: Record<string, string | number | boolean | null>;
}

/** The files of a VM bundle that an engine may use. Paths are absolute. */
export interface VmPaths {
  /** The bundle directory. */
  dir: string;
  /** The serial console log. */
  consoleLog: string;
  /** Engine-private runtime files (QMP socket, pid files) go here. */
  runtimeDir: string;
  /** Machine identity (JSON: uuid, VZ machine identifier, hardware model). */
  machine: string;
  /** Saved machine state for suspend/resume. */
  savedState: string;
}

/**
 * macOS guests (27+): the account Setup Assistant would ask for, created
 * unattended at the first boot after install (VZMacGuestProvisioningOptions).
 * Engines that cannot provision a guest this way ignore it.
 */
export interface GuestProvisioning {
  username: string;
  fullName: string;
  password: string;
  logsInAutomatically: boolean;
  enablesRemoteLogin: boolean;
}

/** Everything an engine needs to start a VM. */
export interface StartRequest {
  /** The first boot after a macOS install: provision the guest's account. */
  guestProvisioning?: GuestProvisioning;
  name: string;
  spec: VmSpec;
  paths: VmPaths;
  /** Show a window (vz) / graphical output; false for headless. */
  graphics: boolean;
  /** Resume from saved state if present (vz). */
  restore: boolean;
}

/** The lifecycle states a running handle reports. */
export type VmState =
  | "starting"
  | "running"
  | "paused"
  | "stopping"
  | "suspending"
  | "stopped"
  | "error";

/** How a VM ended. */
export interface ExitInfo {
  /** guest: the guest powered off; host: cove stopped it; crash: the engine died or failed. */
  reason: "guest" | "host" | "crash" | "suspended";
  /** One line explaining a crash. */
  message?: string;
}

/** Events from a running VM, in order. */
export type EngineEvent =
  | { type: "state"; state: VmState }
  | { type: "exit"; exit: ExitInfo }
  | { type: "log"; level: "info" | "warn" | "error"; message: string };

/** A started VM. */
export interface RunningVm {
  /** Events until (and including) the exit event; then the stream closes. */
  readonly events: ReadableStream<EngineEvent>;
  /** Bytes from the guest's serial console. Read by exactly one consumer (the supervisor). */
  readonly consoleOutput: ReadableStream<Uint8Array>;
  /** Sends bytes to the guest's serial console. */
  writeConsole(data: Uint8Array): Promise<void>;
  /** The current state. */
  state(): VmState;
  /** Ask the guest to shut down (ACPI power button / VZ requestStop). */
  requestStop(): Promise<void>;
  /** Stop at once (power off). */
  stop(): Promise<void>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Save the machine state to paths.savedState and stop; rejects if unsupported. */
  suspend(): Promise<void>;
  /** Resolves when the VM has ended, for whatever reason. */
  wait(): Promise<ExitInfo>;
  /** Engine facts shown by `cove get` (pid, accelerator, forwarded ports). */
  info(): Record<string, unknown>;
}

/** One hypervisor behind cove's lifecycle. */
export interface Engine {
  readonly id: EngineId;
  /** What this engine can do on this host. Must not start a VM. */
  capabilities(host: HostInfo): Promise<Capabilities>;
  /**
   * Engine-specific checks of a spec before anything starts. Throws a
   * CoveError naming the first problem.
   */
  validate(spec: VmSpec, host: HostInfo, paths: VmPaths): Promise<void>;
  /** Starts the VM. The returned handle is running or starting. */
  start(req: StartRequest): Promise<RunningVm>;
}
