/**
 * The Virtualization.framework engine: macOS and Linux arm64 guests on
 * Apple silicon, through libcove_vz (ffi/cove_vz.ts). It checks a spec in
 * TypeScript first (./preflight.ts), builds the shim's JSON (./config.ts),
 * and runs the VM inside this process (./running.ts). The native library is
 * opened on first use, never at import.
 *
 * Through the Engine interface it also limits macOS guests to two at once
 * (the store's peers come in the validate context) and installs macOS from
 * restore images ({@link VzEngine.restoreImageInstaller}, over ./install.ts).
 * @module
 */
import { basename } from "node:path";
import { CoveError, ExitCode } from "../../core/errors.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import { BaseEngine } from "../base.ts";
import type {
  Availability,
  Capabilities,
  Engine,
  EngineContext,
  HostInfo,
  RestoreImageInstaller,
  RunningVm,
  StartRequest,
  VmPaths,
} from "../engine.ts";
import { type CoveVz, openCoveVz, type VzHostInfo } from "../../ffi/cove_vz.ts";
import { fds } from "../../ffi/fd.ts";
import { serveAgentBridge } from "./agent_bridge.ts";
import { buildVzConfig, buildVzStartOptions, macosMajor, wantsSuspendable } from "./config.ts";
import { parseVzProcesses, vmLimitError, vzError, type VzProcess } from "./errors.ts";
import { preflight } from "./preflight.ts";
import { VzRunningVm } from "./running.ts";

/** The vz fields of a bundle's machine.json (other fields are kept as they are). */
export interface VzIdentity {
  vzMachineIdentifier?: string;
  vzHardwareModel?: string;
}

/** Reads machine.json; a missing file is an empty identity. */
export async function readIdentity(path: string): Promise<VzIdentity & Record<string, unknown>> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return {};
    throw e;
  }
}

/** Merges vz fields into machine.json, atomically (0600). */
export async function writeIdentity(path: string, fields: VzIdentity): Promise<void> {
  const merged = { ...(await readIdentity(path)), ...fields };
  const tmp = `${path}.${crypto.randomUUID()}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(merged, null, 2) + "\n", { mode: 0o600 });
  await Deno.rename(tmp, path);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** This Mac's VZ VMs and VM managers by process name (best effort; none when ps fails). */
export async function listVzProcesses(): Promise<VzProcess[]> {
  try {
    const out = await new Deno.Command("ps", {
      args: ["-axo", "pid=,comm="],
      stdout: "piped",
      stderr: "null",
    }).output();
    return parseVzProcesses(new TextDecoder().decode(out.stdout), Deno.pid);
  } catch {
    return [];
  }
}

export interface VzEngineOptions {
  /** Opens the library; tests point this at the test double. */
  open?: () => Promise<CoveVz>;
  /** The VZ processes of this Mac; default {@link listVzProcesses}. */
  vzProcesses?: () => Promise<VzProcess[]>;
}

/** The vz engine. */
export class VzEngine extends BaseEngine implements Engine {
  readonly id = "vz" as const;
  #open: () => Promise<CoveVz>;
  #lib?: Promise<CoveVz>;
  #processes: () => Promise<VzProcess[]>;
  /** The running macOS VMs of the store, by the bundle being started (from validate's context). */
  #macPeers = new Map<string, string[]>();

  constructor(opts: VzEngineOptions = {}) {
    super();
    this.#open = opts.open ?? (() => openCoveVz());
    this.#processes = opts.vzProcesses ?? listVzProcesses;
  }

  /** macOS from IPSW restore images, with VZMacOSInstaller. */
  override restoreImageInstaller(): RestoreImageInstaller {
    const lib = () => this.library();
    return {
      async latest() {
        const { latestRestoreImage } = await import("./install.ts");
        const image = await latestRestoreImage(await lib());
        return { url: image.url, description: `macOS restore image ${image.url}` };
      },
      async install(o) {
        const { installMacOS } = await import("./install.ts");
        const r = await installMacOS({
          ipsw: o.image,
          auxiliaryStorage: o.paths.auxStorage,
          machine: o.paths.machine,
          disk: o.disk,
          cpus: o.cpus,
          memory: o.memory,
          signal: o.signal,
          vz: await lib(),
        }, o.onProgress);
        return {
          cpus: r.cpus,
          memory: r.memory,
          image: { version: r.image.operatingSystemVersion, build: r.image.buildVersion },
          machineIdentifier: r.machineIdentifier,
        };
      },
    };
  }

  /** VZ's VM-limit refusal, told with what cove knows runs. */
  async #limitError(selfDir: string, cause: unknown): Promise<CoveError> {
    const cove = this.#macPeers.get(selfDir) ?? [];
    const others = await this.#processes().catch(() => []);
    return vmLimitError("start", { cove, others }, cause);
  }

  /** The opened library (once per process). */
  async library(): Promise<CoveVz> {
    this.#lib ??= this.#open().catch((e) => {
      this.#lib = undefined;
      throw vzError(e, "loading libcove_vz");
    });
    return await this.#lib;
  }

  async #hostInfo(): Promise<VzHostInfo> {
    const vz = await this.library();
    try {
      return await vz.hostInfo();
    } catch (e) {
      throw vzError(e, "host info");
    }
  }

  async capabilities(host: HostInfo): Promise<Capabilities> {
    const no = (reason: string): Availability => ({ available: false, reason });
    const guestsNone = {
      "macos/arm64": no("vz needs macOS on Apple silicon"),
      "macos/x86_64": no("macOS guests are arm64 only"),
      "linux/arm64": no("vz needs macOS on Apple silicon"),
      "linux/x86_64": no("vz runs arm64 guests; use qemu"),
    };
    if (host.os !== "darwin" || host.arch !== "arm64") {
      return {
        engine: "vz",
        ...no("vz needs macOS on Apple silicon"),
        guests: guestsNone,
        features: {},
        details: {},
        nativeAbi: { version: null, note: "vz needs macOS on Apple silicon" },
      };
    }
    let vz: CoveVz;
    let info: VzHostInfo;
    try {
      vz = await this.library();
      info = await vz.hostInfo();
    } catch (e) {
      const err = vzError(e, "vz");
      return {
        engine: "vz",
        ...no(err.line()),
        guests: guestsNone,
        features: {},
        details: {},
        nativeAbi: { version: null, note: err.line() },
      };
    }
    const yes: Availability = { available: true };
    const major = macosMajor(info.macosVersion);
    const entitled = info.entitlements.virtualization;
    const usable: Availability = !info.supported
      ? no("this Mac cannot run VZ VMs")
      : entitled
      ? yes
      : no("missing the com.apple.security.virtualization entitlement (make sign-dev)");
    return {
      engine: "vz",
      ...usable,
      guests: {
        "macos/arm64": usable,
        "linux/arm64": usable,
        "macos/x86_64": no("macOS guests are arm64 only"),
        "linux/x86_64": no("vz runs arm64 guests; use qemu"),
      },
      features: {
        nat: yes,
        bridged: info.entitlements.networking
          ? yes
          : no("needs the com.apple.vm.networking entitlement"),
        "user-net": no("user networking is QEMU's"),
        "port-forward": no("vz guests are reached at their NAT address"),
        shares: yes,
        rosetta: info.rosetta === "installed"
          ? yes
          : no(`Rosetta is ${info.rosetta === "notInstalled" ? "not installed" : "not supported"}`),
        nested: info.nestedVirtualizationSupported
          ? yes
          : no("needs macOS 15 and an M3 or later chip"),
        display: yes,
        audio: yes,
        clipboard: yes,
        vsock: yes,
        entropy: yes,
        balloon: yes,
        suspend: info.saveRestoreSupported ? yes : no("needs macOS 14"),
        "usb-storage": yes,
        nvme: major >= 14 ? yes : no("needs macOS 14"),
      },
      details: {
        library: vz.path,
        abiVersion: vz.abiVersion,
        macosVersion: info.macosVersion,
        machineModel: info.machineModel ?? null,
        entitlement: entitled,
        cpus: `${info.cpuCount.min}..${info.cpuCount.max}`,
      },
      nativeAbi: { version: vz.abiVersion },
    };
  }

  // VZ has no port forwarding of its own: BaseEngine's forwardsPorts (the supervisor's proxy).

  async validate(
    spec: VmSpec,
    host: HostInfo,
    paths: VmPaths,
    ctx?: EngineContext,
  ): Promise<void> {
    if (host.os !== "darwin" || host.arch !== "arm64") {
      throw new CoveError("vz.unsupported", "vz needs macOS on Apple silicon", {
        hint: "use engine: qemu",
        exit: ExitCode.Host,
      });
    }
    const info = await this.#hostInfo();
    const macPeers = spec.os === "macos" && ctx
      ? (await ctx.peers()).filter((p) => p.os === "macos" && p.running && p.dir !== paths.dir)
      : undefined;
    // Kept for the VM-limit message, should VZ refuse the start anyway (a leaked slot).
    if (macPeers) this.#macPeers.set(paths.dir, macPeers.map((p) => basename(p.dir)));
    await preflight({ spec, paths, host: info, runningMacOSVms: macPeers?.length });
  }

  async start(req: StartRequest): Promise<RunningVm> {
    const { spec, paths } = req;
    const vz = await this.library();
    const host = await this.#hostInfo();
    const call = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
      try {
        return await f();
      } catch (e) {
        throw vzError(e, what);
      }
    };

    const identity = await readIdentity(paths.machine);
    const auxiliaryStorage = paths.auxStorage;
    if (spec.os === "macos") {
      const hasAux = await exists(auxiliaryStorage);
      if (!hasAux && !identity.vzHardwareModel && !identity.vzMachineIdentifier) {
        throw new CoveError("vz.not_installed", `VM '${req.name}' has no installed macOS`, {
          hint: "create it with 'cove create NAME --from ipsw:latest'",
          exit: ExitCode.State,
        });
      }
      // Installed once, but a part of its identity is gone: say which.
      const missing = !identity.vzHardwareModel
        ? "hardware model (vzHardwareModel)"
        : !identity.vzMachineIdentifier
        ? "machine identifier (vzMachineIdentifier)"
        : !hasAux
        ? `auxiliary storage (${basename(auxiliaryStorage)})`
        : undefined;
      if (missing) {
        throw new CoveError(
          "vz.identity",
          `VM '${req.name}' has lost its macOS ${missing}; it cannot boot without it`,
          {
            hint:
              "restore machine.json and the bundle from a backup, or reinstall with 'cove create NAME --from ipsw:latest'",
            exit: ExitCode.State,
          },
        );
      }
    }
    if (spec.os === "linux" && !identity.vzMachineIdentifier) {
      identity.vzMachineIdentifier = await call(
        "machine identifier",
        () => vz.machineIdentifierNew("generic"),
      );
      await writeIdentity(paths.machine, { vzMachineIdentifier: identity.vzMachineIdentifier });
    }
    if (spec.boot.loader === "efi") {
      const store = spec.boot.variableStore ?? paths.efiVars;
      const path = store.startsWith("/") ? store : `${paths.dir}/${store}`;
      if (!(await exists(path))) {
        await call("EFI variable store", () => vz.efiVariableStoreCreate(path));
      }
    }

    // Serial console: two pipes; the shim dup()s the guest ends, we close ours after create.
    const f = fds();
    let guest: { readFd: number; writeFd: number } | undefined;
    let hostEnds: { readFd: number; writeFd: number } | undefined;
    if (spec.serial.mode !== "none") {
      const [guestIn, hostOut] = f.pipe();
      const [hostIn, guestOut] = f.pipe();
      guest = { readFd: guestIn, writeFd: guestOut };
      hostEnds = { readFd: hostIn, writeFd: hostOut };
    }
    // Guest agent channel: two more pipes behind a virtio console port, bridged to paths.agentSocket.
    let agentGuest: { readFd: number; writeFd: number } | undefined;
    let agentHost: { readFd: number; writeFd: number } | undefined;
    if (spec.agent && paths.agentSocket) {
      const [guestIn, hostOut] = f.pipe();
      const [hostIn, guestOut] = f.pipe();
      agentGuest = { readFd: guestIn, writeFd: guestOut };
      agentHost = { readFd: hostIn, writeFd: hostOut };
    }
    const suspendable = wantsSuspendable(spec, host.macosVersion);
    const config = buildVzConfig(spec, {
      agent: agentGuest,
      paths,
      machineIdentifier: identity.vzMachineIdentifier,
      hardwareModel: identity.vzHardwareModel,
      auxiliaryStorage,
      serial: guest,
      suspendable,
      macosVersion: host.macosVersion,
      networks: req.networks,
    });
    let handle: number;
    let saveRestore: { supported: boolean; reason?: string };
    try {
      const created = await call("create", () => vz.createWithInfo(config));
      handle = created.handle;
      saveRestore = {
        supported: created.saveRestore.supported,
        reason: created.saveRestore.error?.message,
      };
    } catch (e) {
      for (const ends of [hostEnds, agentHost]) {
        if (!ends) continue;
        f.close(ends.readFd);
        f.close(ends.writeFd);
      }
      throw e;
    } finally {
      for (const ends of [guest, agentGuest]) {
        if (!ends) continue;
        f.close(ends.readFd);
        f.close(ends.writeFd);
      }
    }
    const bridge = agentHost && paths.agentSocket
      ? serveAgentBridge(paths.agentSocket, agentHost)
      : undefined;

    const graphics = req.graphics && spec.display !== "none";
    const running = new VzRunningVm({
      vz,
      handle,
      console: hostEnds,
      savedState: paths.savedState,
      saveRestore,
      pump: graphics,
      info: { library: vz.path, suspendable, graphics },
    });
    try {
      if (req.resumeFrom) {
        // A snapshot's state: restored and resumed, never removed (it serves later restores too).
        if (!saveRestore.supported) {
          throw new CoveError(
            "vz.restore",
            `this VM's memory snapshot cannot be restored: ${
              saveRestore.reason ?? "VZ cannot restore this configuration"
            }`,
            { hint: "restore with --disk-only", exit: ExitCode.Host },
          );
        }
        await call("restore", () => vz.restore(handle, req.resumeFrom!));
        await call("resume", () => vz.resume(handle));
      } else {
        const restored = req.restore && saveRestore.supported &&
          (await exists(paths.savedState)) &&
          await this.#restore(vz, handle, paths.savedState);
        if (!restored) {
          const options = buildVzStartOptions(spec, req.guestProvisioning);
          await call("start", () => vz.start(handle, options));
        }
      }
      // The VM runs inside this process: it is the one to stop if the supervisor hangs.
      await Deno.writeTextFile(paths.enginePid, `${Deno.pid}\n`, { mode: 0o600 }).catch(() => {});
      if (graphics) {
        const d = spec.display === "none" ? { width: 1280, height: 800 } : spec.display;
        vz.showWindow(handle, {
          title: `cove: ${req.name}`,
          width: d.width,
          height: d.height,
          capturesSystemKeys: true,
        });
      }
    } catch (e) {
      let err = vzError(e, "start");
      if (err.code === "vz.limit") err = await this.#limitError(paths.dir, e);
      bridge?.close();
      await running.abandon(err.message);
      throw err;
    }
    await running.settled();
    if (bridge) void running.wait().finally(() => bridge.close());
    return running;
  }

  /** Restores saved state and resumes; false (state discarded) if VZ refuses it. */
  async #restore(vz: CoveVz, handle: number, savedState: string): Promise<boolean> {
    try {
      await vz.restore(handle, savedState);
      await vz.resume(handle);
      await Deno.remove(savedState);
      return true;
    } catch {
      await Deno.remove(savedState).catch(() => {});
      return false;
    }
  }
}

/** The engine instance `engines/select.ts` loads. */
export const engine = new VzEngine();
