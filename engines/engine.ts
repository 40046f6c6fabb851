/**
 * The Engine interface: the one seam between cove's engine-neutral core and
 * the hypervisors that run VMs (Virtualization.framework in `vz/`, QEMU in
 * `qemu/`). The supervisor in core drives any engine only through this file.
 *
 * Layering note: engines read the spec types (`core/spec/schema.ts`), the
 * error type (`core/errors.ts`) and the host facts (`core/host.ts`). Those
 * modules, with `core/units.ts`, are cove's shared vocabulary and import
 * nothing else from core; everything else in core sits above the engines.
 * Engines learn the bundle's file names only through {@link VmPaths}.
 * @module
 */
import type { HostInfo } from "../core/host.ts";
import type {
  ArchName,
  NetworkSpec,
  OsName,
  PortForwardSpec,
  VmSpec,
} from "../core/spec/schema.ts";

export type { HostInfo };

/**
 * The virtio serial (QEMU) or console (VZ) port name of the guest agent
 * channel: the name qemu-guest-agent's udev rule starts on.
 */
export const QGA_PORT_NAME = "org.qemu.guest_agent.0";

/** Engine identifiers; `auto` is resolved by {@link ./select.ts}. */
export type EngineId = "vz" | "qemu";

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
  /**
   * For an engine over a native library (vz): the library's ABI version,
   * or null with why it is not loaded. Shown by `cove version`.
   */
  nativeAbi?: { version: number | null; note?: string };
}

/**
 * The longest file name an engine puts in {@link VmPaths.runtimeDir}: the
 * supervisor keeps that directory short enough for a unix socket of this
 * name to fit (core/supervisor/paths.ts).
 */
export const RUNTIME_NAME_MAX = 16;

/** The files of a VM bundle that an engine may use. Paths are absolute. */
export interface VmPaths {
  /** The bundle directory. */
  dir: string;
  /** The serial console log. */
  consoleLog: string;
  /**
   * Engine-private runtime files (QMP socket, pid files) go here, with
   * names of at most {@link RUNTIME_NAME_MAX} bytes.
   */
  runtimeDir: string;
  /** Machine identity (JSON: uuid, VZ machine identifier, hardware model). */
  machine: string;
  /** Saved machine state for suspend/resume. */
  savedState: string;
  /** The Mac auxiliary storage of a macOS guest (vz). */
  auxStorage: string;
  /** The EFI variable store used when the spec names none (the bundle's default file). */
  efiVars: string;
  /**
   * Where the engine records the pid of the process that runs the guest (the
   * QEMU process; the supervisor itself for vz), so that cove can stop the
   * guest when the supervisor does not answer.
   */
  enginePid: string;
  /**
   * Where the engine serves the guest agent channel (virtio serial port
   * `org.qemu.guest_agent.0`) as a unix socket the supervisor connects to;
   * attached when the spec's `agent` is true.
   */
  agentSocket?: string;
}

/** Another VM of the same store, for engines that limit how many run at once. */
export interface PeerVm {
  /** Its bundle directory. */
  dir: string;
  os: OsName;
  arch: ArchName;
  /** True while its supervisor holds its lock. */
  running: boolean;
}

/** What the store tells an engine about the VMs around the one it starts. */
export interface EngineContext {
  /** The other VMs of the store (not the one being started). */
  peers(): Promise<PeerVm[]>;
}

/** How cove reaches a TCP port of the guest on one of its NICs. */
export type GuestRoute =
  /** Through a host port the engine forwards (reported in the live status). */
  | "port-forward"
  /** At the guest's own address on the network (DHCP lease, ARP table). */
  | "guest-address";

/** Guest access: how the host reaches the guest's SSH server, and what the engine must set up for it. */
export interface GuestAccess {
  /** How cove reaches a guest port on this NIC. */
  route(nic: NetworkSpec): GuestRoute;
  /**
   * The spec to start, with whatever the engine needs for cove to reach the
   * guest's SSH port (qemu's user networking: a forward from a free host
   * port). The spec on disk is not changed.
   */
  withAccess(spec: VmSpec): VmSpec;
  /**
   * NICs the engine adds to the guest so that the host reaches it (QEMU: one
   * per cove-network NIC, for its forwards, since the host is not on a cove
   * network). The guest's cloud-init seed gives each its static address.
   */
  forwardNics(spec: VmSpec): ForwardNic[];
}

/** A NIC the engine adds for the host to reach the guest: see {@link GuestAccess.forwardNics}. */
export interface ForwardNic {
  /** The spec NIC whose forwards it carries. */
  nic: number;
  mac: string;
  /** The guest's static address on it, ADDR/PREFIX (no gateway: it routes nothing else). */
  address: string;
}

/** The result of installing a guest OS from a restore image. */
export interface InstallResult {
  /** The CPUs and memory (bytes) the installed image needs at least. */
  cpus: number;
  memory: number;
  /** The OS version and build of the restore image installed (for the install record). */
  image: { version: string; build: string };
  /** The machine identifier the install made (its hash goes in the install record). */
  machineIdentifier: string;
}

/** Installs an OS from a vendor restore image into a new bundle (macOS IPSW on vz). */
export interface RestoreImageInstaller {
  /** The newest restore image this host supports, and where to download it. */
  latest(): Promise<{ url: string; description?: string }>;
  /**
   * Installs `image` (a local file) onto the root disk `disk` (created at its
   * full size) of the bundle at `paths`, writing the engine's state files and
   * machine identity there.
   */
  install(opts: {
    image: string;
    paths: VmPaths;
    disk: string;
    cpus?: number;
    memory?: number;
    signal?: AbortSignal;
    onProgress?: (fraction: number) => void;
  }): Promise<InstallResult>;
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
  /** Resume from paths.savedState if present (the state `suspend` wrote); the engine removes it once resumed. */
  restore: boolean;
  /** The host it runs on. */
  host: HostInfo;
  /**
   * Start from this machine-state file (written by {@link RunningVm.saveState})
   * instead of booting, and run on from there. The engine only reads it: a
   * snapshot's state stays intact for later restores. Rejects if the state
   * cannot be loaded (the VM does not run then).
   */
  resumeFrom?: string;
  /**
   * Per NIC (same order as spec.networks): the cove network a `mode:
   * network` NIC joins, as the supervisor found it.
   */
  networks?: (CoveNetworkAttachment | undefined)[];
}

/** A cove network (`cove network create`) that a NIC joins. */
export interface CoveNetworkAttachment {
  name: string;
  /** IPv4 CIDR. */
  subnet: string;
  /** vz: the vmnet mode; qemu networks are host-only either way. */
  mode: "host" | "shared";
  /** The switch's unix socket, for engines that join through cove's switch. */
  socket?: string;
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
  /**
   * Writes the machine state of a paused VM to `path` (a new file) and
   * leaves the VM paused, its disks flushed and safe to copy until
   * {@link resume}. Rejects with one line if the engine or this
   * configuration cannot save state; a partial file is the caller's to remove.
   */
  saveState(path: string): Promise<void>;
  /**
   * Whether {@link saveState} can work for this VM, and if not why (one
   * line): asked before a snapshot pauses the guest.
   */
  saveStateSupport(): Availability;
  /** Resolves when the VM has ended, for whatever reason. */
  wait(): Promise<ExitInfo>;
  /** Engine facts shown by `cove get` (pid, accelerator, forwarded ports). */
  info(): Record<string, unknown>;
  /**
   * Adds a forward, while the VM runs, to NIC `nic` (an index into
   * spec.networks) when the engine forwards that NIC's ports itself
   * ({@link Engine.forwardsPorts}; QEMU user networking: hostfwd_add): what
   * automatic forwards use there, since the host cannot reach such a guest's
   * address. Resolves with the host port bound (`host` 0 picks a free one);
   * rejects with `net.port_in_use` when the host port is taken. Absent when
   * the engine cannot.
   */
  addForward?(nic: number, f: PortForwardSpec): Promise<number>;
  /** Removes a forward that {@link addForward} added (`f.host` as it resolved). */
  removeForward?(nic: number, f: PortForwardSpec): Promise<void>;
}

/**
 * One hypervisor behind cove's lifecycle. Everything that differs between
 * engines is a method here (or of an object one returns); core never asks
 * which engine it holds. {@link ./base.ts} gives the defaults.
 */
export interface Engine {
  readonly id: EngineId;
  /** What this engine can do on this host. Must not start a VM. */
  capabilities(host: HostInfo): Promise<Capabilities>;
  /**
   * Engine-specific checks of a spec before anything starts, including
   * instance limits (`ctx` tells which other VMs run). Throws a CoveError
   * naming the first problem.
   */
  validate(spec: VmSpec, host: HostInfo, paths: VmPaths, ctx?: EngineContext): Promise<void>;
  /** Starts the VM. The returned handle is running or starting. */
  start(req: StartRequest): Promise<RunningVm>;
  /** How cove reaches the guest, and what the engine sets up for it. */
  guestAccess(): GuestAccess;
  /** The installer from restore images, or undefined when this engine has none. */
  restoreImageInstaller(): RestoreImageInstaller | undefined;
  /**
   * Whether the engine itself forwards the host ports of this NIC's
   * `forwards` (QEMU user networking: hostfwd). When false the supervisor's
   * proxy serves them, to the guest's own address, and the engine starts
   * with that NIC's `forwards` empty.
   */
  forwardsPorts(nic: NetworkSpec): boolean;
  /**
   * Whether a NIC on a cove network (`mode: network`) is joined through
   * cove's Ethernet switch (QEMU: a stream netdev); when false the engine
   * joins it by its own means (VZ: a vmnet network). Default false.
   */
  needsSwitch?(nic: NetworkSpec): boolean;
}
