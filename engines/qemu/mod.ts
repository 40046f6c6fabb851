/**
 * The QEMU engine: runs Linux guests (x86_64 on q35, arm64 on virt) with
 * KVM, HVF or TCG, behind cove's {@link Engine} interface.
 *
 * `start` checks the spec (binary, firmware, kernel header, shares, host
 * ports), builds the argument array with {@link buildQemuArgs}, launches
 * QEMU so that it dies with the calling process ({@link spawnReaped}), attaches
 * to its serial console socket and its QMP socket, and returns a handle
 * whose state follows QMP events and the process's exit.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../../core/errors.ts";
import type { NetworkSpec, PortForwardSpec, VmSpec } from "../../core/spec/schema.ts";
import { parseSize } from "../../core/units.ts";
import { overlaps, parseCidr } from "../../core/net/networks.ts";
import type {
  Availability,
  Capabilities,
  Engine,
  EngineEvent,
  ExitInfo,
  ForwardNic,
  GuestAccess,
  HostInfo,
  RunningVm,
  StartRequest,
  VmPaths,
  VmState,
} from "../engine.ts";
import { BaseEngine } from "../base.ts";
import {
  type Accel,
  buildQemuArgs,
  forwardGuestAddress,
  forwardMac,
  forwardNet,
  type ForwardPlan,
  type QemuPlan,
  qemuSystemName,
  type SharePlan,
} from "./argv.ts";
import { chooseAccel, probeKvm } from "./accel.ts";
import { findFirmware, prepareFirmware, requireFirmware } from "./firmware.ts";
import { exists, findQemu, which } from "./host.ts";
import { checkKernel } from "./kernel.ts";
import { loadStateFrom, type QemuVersion, qemuVersion, saveStateTo } from "./migrate.ts";
import { Qmp } from "./qmp.ts";
import { spawnReaped } from "./reaper.ts";
import { findVirtiofsd, shareBackend, startVirtiofsd, type VirtiofsdProcess } from "./virtiofsd.ts";

/** How long QEMU may take to answer a QMP command during a stop. */
const QMP_STOP_TIMEOUT_MS = 5000;
/** How long a hard stop waits for QEMU to quit before SIGKILL. */
const HARD_STOP_GRACE_MS = 3000;
/**
 * How often a starting QEMU's console and QMP sockets are tried: a failed
 * connect costs next to nothing, and every start (a memory restore among
 * them) waits for the first that succeeds.
 */
const CONNECT_POLL_MS = 2;

/** Resolves a spec path against the bundle directory. */
function resolveIn(dir: string, p: string): string {
  return p.startsWith("/") ? p : join(dir, p);
}

/** The tag of a share: its own, or the directory's base name made safe. */
export function shareTag(path: string, tag: string | undefined, index: number): string {
  if (tag) return tag;
  const base = path.replace(/\/+$/, "").split("/").pop() ?? "";
  const safe = base.replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 36);
  return safe || `share${index}`;
}

/** Throws one line if a host port of a forward is taken. */
function checkPortFree(address: string, port: number, where: string): void {
  let l: Deno.Listener | undefined;
  try {
    l = Deno.listen({ hostname: address, port, transport: "tcp" });
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      throw new CoveError(
        "net.port_in_use",
        `${where}: host port ${address}:${port} is already in use`,
        {
          hint: "stop what listens there, or choose another host port (0 picks a free one)",
          exit: ExitCode.Host,
        },
      );
    }
    if (e instanceof Deno.errors.AddrNotAvailable) {
      throw new CoveError(
        "net.bad_address",
        `${where}: '${address}' is not an address of this host`,
        {
          exit: ExitCode.Usage,
        },
      );
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new CoveError("net.port_denied", `${where}: host port ${port} needs privileges`, {
        hint: "use a host port above 1023",
        exit: ExitCode.Host,
      });
    }
    throw e;
  } finally {
    l?.close();
  }
}

/** A free TCP port on `address`. */
function freePort(address: string): number {
  const l = Deno.listen({ hostname: address, port: 0, transport: "tcp" });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A stable vsock CID (3..2^31) from the machine UUID. */
function vsockCid(uuid: string | undefined): number {
  let h = 2166136261;
  for (const c of uuid ?? crypto.randomUUID()) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return 3 + (h % 0x7ffffff0);
}

async function readUuid(paths: VmPaths): Promise<string | undefined> {
  try {
    const m = JSON.parse(await Deno.readTextFile(paths.machine)) as { uuid?: string };
    return typeof m.uuid === "string" && /^[0-9a-f-]{36}$/i.test(m.uuid) ? m.uuid : undefined;
  } catch {
    return undefined;
  }
}

/** The checks of {@link QemuEngine.validate}, shared with start. */
async function check(spec: VmSpec, paths: VmPaths, opts: { ports: boolean }): Promise<string> {
  if (spec.os === "macos") {
    throw new CoveError("qemu.no_macos", "the qemu engine cannot run macOS guests", {
      hint: "macOS guests need the vz engine on a Mac with Apple silicon",
      exit: ExitCode.Host,
    });
  }
  if (spec.rosetta) {
    throw new CoveError("qemu.no_rosetta", "rosetta: Rosetta sharing needs the vz engine", {
      hint: "set rosetta: false, or use engine: vz on a Mac",
      exit: ExitCode.Usage,
    });
  }
  const binary = findQemu(spec.arch, spec.qemu.binary);
  if (spec.boot.loader === "macos") {
    throw new CoveError(
      "qemu.bad_loader",
      "boot.loader: the qemu engine boots with efi or kernel",
      {
        exit: ExitCode.Usage,
      },
    );
  }
  if (spec.boot.loader === "efi") {
    const vars = spec.boot.variableStore
      ? resolveIn(paths.dir, spec.boot.variableStore)
      : undefined;
    requireFirmware(spec.arch, vars);
  } else {
    await checkKernel(resolveIn(paths.dir, spec.boot.kernel ?? ""), spec.arch);
    if (spec.boot.initrd && !exists(resolveIn(paths.dir, spec.boot.initrd))) {
      throw new CoveError("boot.not_found", `boot.initrd: '${spec.boot.initrd}' does not exist`, {
        hint: "give the path of an initrd, or remove boot.initrd",
        exit: ExitCode.Usage,
      });
    }
  }
  spec.disks.forEach((d, i) => {
    if (!exists(resolveIn(paths.dir, d.path))) {
      throw new CoveError("disk.not_found", `disks[${i}]: '${d.path}' does not exist`, {
        hint: d.media === "cdrom"
          ? "give the path of an ISO image"
          : "create the disk or fix its path",
        exit: ExitCode.Usage,
      });
    }
    if (d.format === "asif") {
      throw new CoveError("disk.format", `disks[${i}]: the asif format needs the vz engine`, {
        hint: "convert the disk to raw or qcow2",
        exit: ExitCode.Usage,
      });
    }
  });
  const tags = new Set<string>();
  spec.shares.forEach((s, i) => {
    let st: Deno.FileInfo | undefined;
    try {
      st = Deno.statSync(s.path);
    } catch { /* reported below */ }
    if (!st?.isDirectory) {
      throw new CoveError(
        "share.not_found",
        `shares[${i}]: '${s.path}' ${st ? "is not a directory" : "does not exist"}`,
        {
          hint: "share an existing host directory",
          exit: ExitCode.Usage,
        },
      );
    }
    const tag = shareTag(s.path, s.tag, i);
    if (tags.has(tag)) {
      throw new CoveError("share.tag", `shares[${i}]: the tag '${tag}' is used twice`, {
        hint: "give each share its own tag",
        exit: ExitCode.Usage,
      });
    }
    tags.add(tag);
  });
  if (spec.audio) {
    throw new CoveError("qemu.no_audio", "audio: the qemu engine has no audio device yet", {
      hint: "set audio: false",
      exit: ExitCode.Usage,
    });
  }
  const macs = spec.networks.map((n) => n.mac?.toLowerCase());
  spec.networks.forEach((n, i) => {
    const clash = n.mode === "network" && n.mac ? macs.indexOf(forwardMac(n.mac)) : -1;
    if (clash >= 0) {
      throw new CoveError(
        "qemu.network",
        `networks[${i}]: the MAC of its forward NIC, ${
          forwardMac(n.mac!)
        }, is the MAC of networks[${clash}]`,
        {
          hint:
            `give networks[${clash}] another MAC (cove gives a cove-network NIC's forward NIC its MAC with the second octet's lowest bit flipped)`,
          exit: ExitCode.Usage,
        },
      );
    }
    if (n.mode === "network" && n.forwards.length > 0 && !n.mac) {
      throw new CoveError(
        "qemu.network",
        `networks[${i}]: forwards on a cove network need the NIC's MAC address`,
        {
          hint: "set networks[].mac, or let cove create the VM to give it one",
          exit: ExitCode.Usage,
        },
      );
    }
  });
  if (opts.ports) {
    spec.networks.forEach((n, i) => {
      n.forwards.forEach((f, j) => {
        if (f.host !== 0 && f.protocol === "tcp") {
          checkPortFree(f.address, f.host, `networks[${i}].forwards[${j}]`);
        }
      });
    });
  }
  return binary;
}

/** How cove reaches a qemu guest: see {@link QemuEngine.guestAccess}. */
export const qemuAccess: GuestAccess = {
  route(nic: NetworkSpec) {
    return nic.mode === "bridged" ? "guest-address" : "port-forward";
  },
  /**
   * The SSH forward goes on the first user (or nat) NIC; a VM on cove
   * networks only gets it on its first cove-network NIC, whose forward NIC
   * carries it.
   */
  withAccess(spec: VmSpec): VmSpec {
    let i = spec.networks.findIndex((n) => n.mode === "user" || n.mode === "nat");
    if (i < 0) i = spec.networks.findIndex((n) => n.mode === "network" && n.mac);
    if (i < 0) return spec;
    const port = spec.provision.sshPort;
    const nic = spec.networks[i];
    if (nic.forwards.some((f) => f.guest === port && f.protocol === "tcp")) return spec;
    const networks = [...spec.networks];
    networks[i] = {
      ...nic,
      forwards: [...nic.forwards, { host: 0, guest: port, protocol: "tcp", address: "127.0.0.1" }],
    };
    return { ...spec, networks };
  },
  /**
   * Every NIC on a cove network gets a second, private NIC on its own user
   * network (`restrict=on`: the guest reaches nothing through it), which
   * carries the NIC's forwards with hostfwd: the host is not on a cove
   * network, so neither hostfwd nor the supervisor's proxy could reach it there.
   */
  forwardNics(spec: VmSpec): ForwardNic[] {
    const out: ForwardNic[] = [];
    spec.networks.forEach((n, i) => {
      if (n.mode !== "network" || !n.mac) return;
      out.push({ nic: i, mac: forwardMac(n.mac), address: `${forwardGuestAddress(i)}/24` });
    });
    return out;
  },
};

/** QEMU's noise that is not an error. */
function isNoise(line: string): boolean {
  return /QEMU waiting for connection|warning: host doesn't support requested feature/.test(line);
}

/** A NIC whose forwards QEMU serves with hostfwd: its user-networking netdev, and the guest's address there ("" for slirp's default). */
interface HostfwdNic {
  netdev: string;
  guest: string;
}

/** The engine object. */
export class QemuEngine extends BaseEngine implements Engine {
  readonly id = "qemu" as const;

  /**
   * User networking (`user`, and `nat`, which qemu runs as user networking)
   * reaches the guest through a host port forward; bridged NICs at the
   * guest's address.
   */
  override guestAccess(): GuestAccess {
    return qemuAccess;
  }

  async capabilities(host: HostInfo): Promise<Capabilities> {
    const native = which(qemuSystemName(host.arch));
    const x86 = which(qemuSystemName("x86_64"));
    const arm = which(qemuSystemName("arm64"));
    const details: Capabilities["details"] = { binary: native ?? null };
    let accelNote = "tcg";
    if (native) {
      if (host.os === "linux") {
        const p = await probeKvm(native, host.arch);
        accelNote = p.usable ? "kvm" : `tcg (kvm not usable: ${p.reason})`;
        details.kvm = p.usable ? "usable" : `not usable: ${p.reason}`;
      } else if (host.os === "darwin") accelNote = "hvf";
      try {
        const out = await new Deno.Command(native, {
          args: ["--version"],
          stdout: "piped",
          stderr: "null",
        }).output();
        details.version = new TextDecoder().decode(out.stdout).split("\n")[0].replace(
          /^QEMU emulator version /,
          "",
        );
      } catch { /* keep going */ }
    }
    details.accel = accelNote;
    details.firmwareX86 = findFirmware("x86_64")?.code ?? null;
    details.firmwareArm64 = findFirmware("arm64")?.code ?? null;
    const vfs = findVirtiofsd();
    details.virtiofsd = vfs ? vfs.path : null;
    const missing = (arch: "x86_64" | "arm64") =>
      `${qemuSystemName(arch)} is not installed (${
        arch === "arm64" ? "qemu-system-arm" : "qemu-system-x86"
      })`;
    const yes = { available: true };
    const vsock = exists("/dev/vhost-vsock");
    return {
      engine: "qemu",
      available: !!(x86 || arm),
      reason: x86 || arm
        ? undefined
        : "QEMU is not installed (apt-get install qemu-system-x86 or brew install qemu)",
      guests: {
        "linux/x86_64": x86 ? yes : { available: false, reason: missing("x86_64") },
        "linux/arm64": arm ? yes : { available: false, reason: missing("arm64") },
        "macos/arm64": { available: false, reason: "macOS guests need the vz engine" },
        "macos/x86_64": { available: false, reason: "macOS guests need the vz engine" },
      },
      features: {
        "user-net": yes,
        nat: yes,
        "port-forward": yes,
        bridged: exists("/usr/lib/qemu/qemu-bridge-helper")
          ? yes
          : { available: false, reason: "qemu-bridge-helper is not installed" },
        shares: { available: true, reason: vfs ? "virtiofs" : "9p" },
        vsock: vsock
          ? yes
          : { available: false, reason: "/dev/vhost-vsock does not exist (modprobe vhost_vsock)" },
        entropy: yes,
        balloon: yes,
        display: yes,
        "usb-storage": yes,
        nvme: yes,
        suspend: yes,
        rosetta: { available: false, reason: "Rosetta needs the vz engine" },
        audio: { available: false, reason: "no audio device in the qemu engine yet" },
        clipboard: { available: false, reason: "no clipboard sharing in the qemu engine yet" },
        nested: {
          available: accelNote === "kvm",
          reason: accelNote === "kvm" ? undefined : "needs kvm",
        },
      },
      details,
    };
  }

  /**
   * User networking (`user`, and `nat`, which QEMU runs as user networking)
   * forwards with hostfwd; a guest on a bridge or tap has its own address,
   * and the supervisor's proxy forwards to it.
   */
  override forwardsPorts(nic: NetworkSpec): boolean {
    // A cove network's forwards go through its NIC's forward NIC (see qemuAccess.forwardNics).
    return nic.mode === "user" || nic.mode === "nat" || nic.mode === "network";
  }

  /** QEMU joins a cove network through cove's switch. */
  needsSwitch(nic: NetworkSpec): boolean {
    return nic.mode === "network";
  }

  async validate(spec: VmSpec, _host: HostInfo, paths: VmPaths): Promise<void> {
    await check(spec, paths, { ports: true });
  }

  async start(req: StartRequest): Promise<RunningVm> {
    if (req.resumeFrom) return await this.#launch(req, req.resumeFrom);
    if (req.restore && exists(req.paths.savedState)) {
      // Resume what `cove suspend` saved; if QEMU cannot load it (the spec changed), boot afresh.
      try {
        const vm = await this.#launch(req, req.paths.savedState);
        await Deno.remove(req.paths.savedState).catch(() => {});
        return vm;
      } catch (e) {
        await Deno.remove(req.paths.savedState).catch(() => {});
        const vm = await this.#launch(req, undefined);
        const why = e instanceof Error ? e.message : String(e);
        vm.note(`the suspended state could not be resumed (${why}); booted afresh`);
        return vm;
      }
    }
    return await this.#launch(req, undefined);
  }

  async #launch(req: StartRequest, incoming: string | undefined): Promise<QemuVm> {
    const { spec, paths } = req;
    const host = req.host;
    const binary = await check(spec, paths, { ports: true });
    spec.networks.forEach((n, i) => {
      if (n.mode === "network" && !req.networks?.[i]?.socket) {
        throw new CoveError(
          "qemu.network",
          `networks[${i}]: no switch socket for cove network '${n.network}'`,
          { exit: ExitCode.Failure },
        );
      }
    });
    // Every cove network of this VM stays clear of the private networks of its forward NICs.
    const fwdNets = qemuAccess.forwardNics(spec).map((f) => forwardNet(f.nic));
    spec.networks.forEach((n, i) => {
      const subnet = req.networks?.[i]?.subnet;
      const clash = subnet &&
        fwdNets.find((net) => overlaps(parseCidr(subnet), parseCidr(`${net}/24`)));
      if (n.mode === "network" && clash) {
        throw new CoveError(
          "qemu.network",
          `networks[${i}]: cove network '${n.network}' (${subnet}) overlaps ${clash}/24, a private network that carries this VM's forwards`,
          {
            hint: "recreate the network with a --subnet outside 10.0.200.0/21",
            exit: ExitCode.Usage,
          },
        );
      }
    });
    const accel = await chooseAccel(spec, host, binary);
    await Deno.mkdir(paths.runtimeDir, { recursive: true, mode: 0o700 });
    const rt = (f: string) => join(paths.runtimeDir, f); // names of at most RUNTIME_NAME_MAX bytes
    const plan: QemuPlan = {
      name: req.name,
      accel: accel.accel,
      diskPaths: spec.disks.map((d) => resolveIn(paths.dir, d.path)),
      forwards: spec.networks.map((n) =>
        n.forwards.map((f): ForwardPlan => ({
          protocol: f.protocol,
          address: f.address,
          host: f.host === 0 ? freePort(f.address) : f.host,
          guest: f.guest,
        }))
      ),
      networkSockets: req.networks?.map((n) => n?.socket),
      taps: spec.networks.map((n) =>
        n.mode === "bridged" && !!n.interface && exists(`/sys/class/net/${n.interface}/tun_flags`)
      ),
      shares: [],
      qmpSocket: rt("qmp.sock"),
      consoleSocket: rt("console.sock"),
      pidFile: paths.enginePid,
      uuid: await readUuid(paths),
      graphics: req.graphics && hostCanShowWindows(),
      memoryBytes: parseSize(spec.memory, "memory"),
      incoming: incoming !== undefined,
      savedState: paths.savedState,
    };
    if (spec.boot.loader === "kernel") {
      plan.kernel = resolveIn(paths.dir, spec.boot.kernel ?? "");
      if (spec.boot.initrd) plan.initrd = resolveIn(paths.dir, spec.boot.initrd);
    } else {
      const vars = spec.boot.variableStore
        ? resolveIn(paths.dir, spec.boot.variableStore)
        : undefined;
      plan.firmware = await prepareFirmware(requireFirmware(spec.arch, vars), vars);
    }
    if (spec.vsock && exists("/dev/vhost-vsock")) plan.vsockCid = vsockCid(plan.uuid);
    if (spec.agent && paths.agentSocket) plan.agentSocket = paths.agentSocket;
    for (const f of [plan.qmpSocket, plan.consoleSocket, plan.pidFile, plan.agentSocket ?? ""]) {
      await Deno.remove(f).catch(() => {});
    }

    const helpers: VirtiofsdProcess[] = [];
    const killHelpers = () => helpers.forEach((h) => h.kill());
    let shareWhy = "";
    try {
      if (spec.shares.length > 0) {
        const backend = shareBackend();
        shareWhy = backend.why;
        for (const [i, s] of spec.shares.entries()) {
          const share: SharePlan = {
            tag: shareTag(s.path, s.tag, i),
            path: s.path,
            readOnly: s.readOnly,
            kind: backend.kind,
          };
          if (backend.kind === "virtiofs" && backend.virtiofsd) {
            share.socket = rt(`fs${i}.sock`);
            helpers.push(await startVirtiofsd(backend.virtiofsd, share.socket, s.path, s.readOnly));
          }
          plan.shares.push(share);
        }
      }
      const args = buildQemuArgs(spec, plan);
      const vm = await QemuVm.launch(binary, args, plan, {
        accel: accel.accel,
        accelWhy: accel.why,
        shareWhy,
        hostfwdNics: spec.networks.map((n, i) =>
          n.mode === "user" || n.mode === "nat"
            ? { netdev: `cove-net${i}`, guest: "" }
            : n.mode === "network" && n.mac
            ? { netdev: `cove-fwd${i}`, guest: forwardGuestAddress(i) }
            : undefined
        ),
      }, helpers);
      if (incoming !== undefined) await vm.resumeFromState(incoming);
      return vm;
    } catch (e) {
      killHelpers();
      throw e;
    }
  }
}

/** A running QEMU. */
class QemuVm implements RunningVm {
  readonly events: ReadableStream<EngineEvent>;
  readonly consoleOutput: ReadableStream<Uint8Array>;
  #events!: ReadableStreamDefaultController<EngineEvent>;
  #state: VmState = "starting";
  #child: Deno.ChildProcess;
  #console: Deno.UnixConn;
  #qmp: Qmp;
  #exit: Promise<ExitInfo>;
  #stopRequested: "graceful" | "hard" | "suspend" | null = null;
  #guestShutdown = false;
  #stderr: string[];
  #info: Record<string, unknown>;

  private constructor(
    child: Deno.ChildProcess,
    consoleConn: Deno.UnixConn,
    qmp: Qmp,
    stderr: string[],
    exited: Promise<Deno.CommandStatus>,
    plan: QemuPlan,
    info: Record<string, unknown>,
    helpers: VirtiofsdProcess[],
  ) {
    this.#child = child;
    this.#console = consoleConn;
    this.#qmp = qmp;
    this.#stderr = stderr;
    this.#info = info;
    this.events = new ReadableStream<EngineEvent>({
      start: (c) => {
        this.#events = c;
      },
    });
    this.consoleOutput = consoleConn.readable;
    qmp.onEvent((e) => {
      if (e.event === "STOP" && this.#state === "running") this.#setState("paused");
      else if (e.event === "RESUME" && this.#state !== "stopping") this.#setState("running");
      else if (e.event === "SHUTDOWN") {
        this.#guestShutdown = e.data?.guest === true;
        this.#setState("stopping");
      }
    });
    this.#setState("running");
    this.#exit = exited.then(async (status) => {
      for (const h of helpers) h.kill();
      for (const f of [plan.qmpSocket, plan.consoleSocket, plan.pidFile, plan.agentSocket ?? ""]) {
        if (f) await Deno.remove(f).catch(() => {});
      }
      for (const s of plan.shares) if (s.socket) await Deno.remove(s.socket).catch(() => {});
      let exit: ExitInfo;
      if (this.#stopRequested === "suspend") exit = { reason: "suspended" };
      else if (this.#stopRequested === "hard") exit = { reason: "host" };
      else if (status.success && this.#stopRequested === "graceful") exit = { reason: "host" };
      else if (status.success) exit = { reason: this.#guestShutdown ? "guest" : "host" };
      else {
        const last = this.#stderr.filter((l) => !isNoise(l)).pop();
        const how = status.signal
          ? `was killed by ${status.signal}`
          : `exited with status ${status.code}`;
        exit = {
          reason: "crash",
          message: last
            ? `qemu ${how}: ${last.replace(/^qemu-system-[a-z0-9_]+: /, "")}`
            : `qemu ${how}`,
        };
      }
      this.#setState(exit.reason === "crash" ? "error" : "stopped");
      this.#emit({ type: "exit", exit });
      try {
        this.#events.close();
      } catch { /* already closed */ }
      qmp.close();
      return exit;
    });
  }

  /** Spawns QEMU, attaches to its console and QMP, and returns the handle. */
  static async launch(
    binary: string,
    args: string[],
    plan: QemuPlan,
    facts: {
      accel: Accel;
      accelWhy: string;
      shareWhy: string;
      hostfwdNics: (HostfwdNic | undefined)[];
    },
    helpers: VirtiofsdProcess[],
  ): Promise<QemuVm> {
    // Its own session: a Ctrl-C at the terminal reaches the supervisor only,
    // which then shuts the guest down gracefully.
    const { child, reaper: r } = spawnReaped(binary, args, { detached: true });
    const stderr: string[] = [];
    const logQueue: string[] = [];
    const sink: { onLine?: (l: string) => void } = {};
    const stderrDone = (async () => {
      const dec = new TextDecoder();
      let buf = "";
      for await (const chunk of child.stderr) {
        buf += dec.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trimEnd();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          stderr.push(line);
          if (stderr.length > 200) stderr.shift();
          if (sink.onLine) sink.onLine(line);
          else logQueue.push(line);
        }
      }
      if (buf.trim()) {
        stderr.push(buf.trim());
        if (sink.onLine) sink.onLine(buf.trim());
      }
    })().catch(() => {});
    let exited = false;
    const status = child.status.then(async (s) => {
      exited = true;
      // The watchdog's stdin: closing it ends its reader.
      if (r.holdStdin) await child.stdin.close().catch(() => {});
      await Promise.race([stderrDone, new Promise((res) => setTimeout(res, 1000))]);
      return s;
    });
    const hardKill = () => {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      const pid = readPid(plan.pidFile);
      if (pid && !r.directPid) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
    };
    const fail = async (what: string): Promise<never> => {
      hardKill();
      const s = await status;
      const last = stderr.filter((l) => !isNoise(l)).pop();
      const msg = last ? last.replace(/^qemu-system-[a-z0-9_]+: /, "") : `exit status ${s.code}`;
      throw new CoveError("qemu.failed", `qemu ${what}: ${msg}`, {
        hint: "run with --debug, or see supervisor.log in the VM's directory",
        exit: ExitCode.Failure,
      });
    };

    // The console socket: QEMU waits (wait=on) until we connect.
    let consoleConn: Deno.UnixConn | undefined;
    const deadline = Date.now() + 30_000;
    while (!consoleConn) {
      if (exited) return await fail("failed to start");
      if (Date.now() > deadline) return await fail("did not open its console within 30 s");
      try {
        consoleConn = await Deno.connect({ transport: "unix", path: plan.consoleSocket });
      } catch {
        await new Promise((res) => setTimeout(res, CONNECT_POLL_MS));
      }
    }
    let qmp: Qmp | undefined;
    while (!qmp) {
      if (exited) {
        consoleConn.close();
        return await fail("failed to start");
      }
      if (Date.now() > deadline) {
        consoleConn.close();
        return await fail("did not answer on QMP within 30 s");
      }
      try {
        qmp = await Qmp.connect(plan.qmpSocket, Math.max(1000, deadline - Date.now()));
      } catch {
        await new Promise((res) => setTimeout(res, CONNECT_POLL_MS));
      }
    }
    const info: Record<string, unknown> = {
      pid: readPid(plan.pidFile) ?? child.pid,
      binary,
      accel: facts.accel,
      accelReason: facts.accelWhy,
      reaper: r.kind,
      forwards: plan.forwards.flat(),
      shares: plan.shares.map((s) => ({ tag: s.tag, path: s.path, kind: s.kind })),
      shareBackend: facts.shareWhy || undefined,
      vsockCid: plan.vsockCid,
      argv: [binary, ...args],
    };
    const vm = new QemuVm(child, consoleConn, qmp, stderr, status, plan, info, helpers);
    vm.#hardKill = hardKill;
    vm.#hostfwdNics = facts.hostfwdNics;
    vm.#savedState = plan.savedState ?? "";
    for (const l of logQueue) if (!isNoise(l)) vm.#emit({ type: "log", level: "warn", message: l });
    sink.onLine = (l) => {
      if (!isNoise(l)) vm.#emit({ type: "log", level: "warn", message: l });
    };
    return vm;
  }

  #hardKill: () => void = () => {};
  /** Per NIC: the user-networking netdev where hostfwd_add works, and the guest's address on it. */
  #hostfwdNics: (HostfwdNic | undefined)[] = [];
  #savedState = "";
  #version: QemuVersion | undefined;

  /** QEMU's version, asked once. */
  async #qemuVersion(): Promise<QemuVersion> {
    this.#version ??= await qemuVersion(this.#qmp);
    return this.#version;
  }

  #emit(e: EngineEvent): void {
    try {
      this.#events.enqueue(e);
    } catch { /* stream closed */ }
  }

  #setState(s: VmState): void {
    if (this.#state === s) return;
    this.#state = s;
    this.#emit({ type: "state", state: s });
  }

  async writeConsole(data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) off += await this.#console.write(data.subarray(off));
  }

  state(): VmState {
    return this.#state;
  }

  async requestStop(): Promise<void> {
    if (this.#state === "stopped" || this.#state === "error") return;
    this.#stopRequested ??= "graceful";
    // A stuck QEMU must not hang the stop: every QMP call here has a deadline.
    if (this.#state === "paused") {
      await this.#qmp.execute("cont", undefined, QMP_STOP_TIMEOUT_MS).catch(() => {});
    }
    await this.#qmp.execute("system_powerdown", undefined, QMP_STOP_TIMEOUT_MS);
  }

  async stop(): Promise<void> {
    if (this.#state === "stopped" || this.#state === "error") return;
    this.#stopRequested = "hard";
    this.#setState("stopping");
    // The kill timer runs from the start, so a QEMU that never answers QMP is still killed.
    const timer = setTimeout(() => this.#hardKill(), HARD_STOP_GRACE_MS);
    try {
      await this.#qmp.execute("quit", undefined, HARD_STOP_GRACE_MS).catch(() => {});
      await this.#exit;
    } finally {
      clearTimeout(timer);
    }
  }

  async pause(): Promise<void> {
    await this.#switchState("pause", "running", "stop", "paused");
  }

  async resume(): Promise<void> {
    await this.#switchState("resume", "paused", "cont", "running");
  }

  /** Runs QMP `command` on a VM in state `from`, which then is in state `to`; refuses any other state. */
  async #switchState(verb: string, from: VmState, command: string, to: VmState): Promise<void> {
    if (this.#state !== from) {
      throw new CoveError("vm.state", `cannot ${verb}: the VM is ${this.#state}`, {
        exit: ExitCode.State,
      });
    }
    await this.#qmp.execute(command);
    this.#setState(to);
  }

  /** Pauses, saves the machine state to paths.savedState (via a temporary file) and quits. */
  async suspend(): Promise<void> {
    if (this.#state === "running") await this.pause();
    const tmp = `${this.#savedState}.partial`;
    await Deno.remove(tmp).catch(() => {});
    try {
      await this.saveState(tmp);
      await Deno.rename(tmp, this.#savedState);
    } catch (e) {
      await Deno.remove(tmp).catch(() => {});
      await this.resume().catch(() => {});
      throw e;
    }
    this.#stopRequested = "suspend";
    this.#setState("stopping");
    const timer = setTimeout(() => this.#hardKill(), HARD_STOP_GRACE_MS);
    try {
      await this.#qmp.execute("quit", undefined, HARD_STOP_GRACE_MS).catch(() => {});
      await this.#exit;
    } finally {
      clearTimeout(timer);
    }
  }

  saveStateSupport(): Availability {
    return { available: true };
  }

  async saveState(path: string): Promise<void> {
    if (this.#state !== "paused") {
      throw new CoveError("vm.state", `cannot save the machine state: the VM is ${this.#state}`, {
        hint: "pause it first",
        exit: ExitCode.State,
      });
    }
    await saveStateTo(this.#qmp, path, await this.#qemuVersion());
  }

  /** Loads the state of a QEMU started with `-incoming defer`, then runs it. */
  async resumeFromState(path: string): Promise<void> {
    this.#setState("starting");
    try {
      await loadStateFrom(this.#qmp, path, await this.#qemuVersion());
      await this.#qmp.execute("cont", undefined, QMP_STOP_TIMEOUT_MS);
      this.#setState("running");
    } catch (e) {
      this.#stopRequested = "hard";
      this.#hardKill();
      await this.#exit.catch(() => {});
      throw e;
    }
  }

  /** Logs a line through the event stream. */
  note(message: string): void {
    this.#emit({ type: "log", level: "warn", message });
  }

  wait(): Promise<ExitInfo> {
    return this.#exit;
  }

  info(): Record<string, unknown> {
    return { ...this.#info, state: this.#state };
  }

  /**
   * hostfwd_add on a user-networking NIC, or on a cove network NIC's
   * forward NIC (the HMP command, through QMP's human-monitor-command: QMP
   * has no command of its own for it). The host port is tried first, so a
   * taken one is `net.port_in_use`.
   */
  async addForward(nic: number, f: PortForwardSpec): Promise<number> {
    const where = `networks[${nic}]`;
    const on = this.#hostfwdNics[nic];
    if (!on) {
      throw new CoveError(
        "qemu.forward",
        `${where}: qemu adds forwards only on user networking or a cove network`,
        { exit: ExitCode.Usage },
      );
    }
    const host = f.host === 0 ? freePort(f.address) : f.host;
    if (f.protocol === "tcp") checkPortFree(f.address, host, where);
    const rule = `${f.protocol}:${f.address}:${host}-${on.guest}:${f.guest}`;
    const out = await this.#qmp.execute<string>("human-monitor-command", {
      "command-line": `hostfwd_add ${on.netdev} ${rule}`,
    }, QMP_STOP_TIMEOUT_MS);
    // HMP answers "" when it worked and a line of text when it did not.
    if (typeof out === "string" && out.trim() !== "") {
      throw new CoveError(
        /Could not set up host forwarding/.test(out) ? "net.port_in_use" : "qemu.failed",
        `${where}: qemu could not forward ${rule}: ${out.trim()}`,
        { exit: ExitCode.Host },
      );
    }
    return host;
  }

  /** hostfwd_remove of a forward {@link addForward} made. */
  async removeForward(nic: number, f: PortForwardSpec): Promise<void> {
    const netdev = this.#hostfwdNics[nic]?.netdev ?? `cove-net${nic}`;
    const out = await this.#qmp.execute<string>("human-monitor-command", {
      "command-line": `hostfwd_remove ${netdev} ${f.protocol}:${f.address}:${f.host}`,
    }, QMP_STOP_TIMEOUT_MS);
    if (typeof out === "string" && !/removed/.test(out)) {
      throw new CoveError(
        "qemu.failed",
        `networks[${nic}]: qemu could not remove the forward of host port ${f.host}: ${out.trim()}`,
        { exit: ExitCode.Host },
      );
    }
  }

  /** The child process (for tests). */
  get process(): Deno.ChildProcess {
    return this.#child;
  }
}

function readPid(pidFile: string): number | undefined {
  try {
    const n = Number(Deno.readTextFileSync(pidFile).trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** The QEMU engine. */
export const engine: Engine = new QemuEngine();

/** A QEMU window needs a GUI session: always on macOS, DISPLAY or WAYLAND_DISPLAY on Linux. */
function hostCanShowWindows(): boolean {
  if (Deno.build.os === "darwin") return true;
  return !!(Deno.env.get("DISPLAY") || Deno.env.get("WAYLAND_DISPLAY"));
}
