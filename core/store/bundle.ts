/**
 * A VM bundle: the directory `$COVE_HOME/vms/NAME/` and the files it owns
 * (spec, disks, machine identity, engine state, console log, control socket,
 * lock). The Bundle type is the only code that knows these file names.
 *
 * A VM is running exactly when some process holds the exclusive lock on the
 * bundle's `lock` file (flock): no pid files, and a dead supervisor releases
 * its lock with its last breath.
 * @module
 */
import { join } from "node:path";
import { stringify } from "yaml";
import type { VmPaths } from "../../engines/engine.ts";
import { CoveError, ExitCode } from "../errors.ts";
import { applyDefaults, CONSOLE_LOG } from "../spec/defaults.ts";
import { parseSpec } from "../spec/load.ts";
import type { SpecParsed, VmSpec } from "../spec/schema.ts";
import { detectHost } from "../host.ts";
import { writeFileAtomic } from "./fsutil.ts";

/** Machine identity kept in `machine.json`; a clone gets a new one. */
export interface MachineIdentity {
  /** SMBIOS/system UUID for qemu, and cove's own identity of the machine. */
  uuid: string;
  /** VZGenericMachineIdentifier / VZMacMachineIdentifier dataRepresentation, base64. */
  vzMachineIdentifier?: string;
  /** VZMacHardwareModel dataRepresentation, base64 (macOS guests). */
  vzHardwareModel?: string;
  /** When the VM was created (ISO 8601). */
  created: string;
}

/** A held bundle lock; release it, or let the process exit. */
export interface BundleLock {
  release(): void;
}

/** The files of one VM. */
export class Bundle {
  constructor(readonly name: string, readonly dir: string) {}

  get specPath(): string {
    return join(this.dir, "cove.yaml");
  }
  get lockPath(): string {
    return join(this.dir, "lock");
  }
  get machinePath(): string {
    return join(this.dir, "machine.json");
  }
  get consoleLog(): string {
    return join(this.dir, CONSOLE_LOG);
  }
  get controlSocket(): string {
    return join(this.dir, "control.sock");
  }
  get supervisorLog(): string {
    return join(this.dir, "supervisor.log");
  }
  get lastExitPath(): string {
    return join(this.dir, "last-exit.json");
  }
  get runtimeDir(): string {
    return join(this.dir, "run");
  }
  get savedStatePath(): string {
    return join(this.dir, "state.vzvmsave");
  }
  /**
   * macOS guests: the first account's password (0600), kept only until the
   * first boot has provisioned the guest and cove's key is installed.
   */
  get provisionPasswordPath(): string {
    return join(this.dir, "provision-password");
  }
  /**
   * macOS guests: how and where macOS was installed (restore image, host
   * identity hash, time) and how far first-boot provisioning got.
   */
  get installRecordPath(): string {
    return join(this.dir, "install.json");
  }

  /** Resolves a path from the spec (relative paths are inside the bundle). */
  resolve(p: string): string {
    return p.startsWith("/") ? p : join(this.dir, p);
  }

  /** The paths an engine may use. */
  vmPaths(): VmPaths {
    return {
      dir: this.dir,
      consoleLog: this.consoleLog,
      runtimeDir: this.runtimeDir,
      machine: this.machinePath,
      savedState: this.savedStatePath,
    };
  }

  /** Reads and validates cove.yaml, without defaults. */
  async readParsedSpec(): Promise<SpecParsed> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.specPath);
    } catch (e) {
      throw new CoveError("vm.broken", `VM '${this.name}' has no readable cove.yaml`, {
        hint: `restore ${this.specPath} or delete the VM`,
        cause: e,
      });
    }
    return parseSpec(text, this.specPath);
  }

  /** Reads cove.yaml with every default applied for this host. */
  async readSpec(): Promise<VmSpec> {
    return applyDefaults(await this.readParsedSpec(), detectHost(), this.name);
  }

  /** Writes cove.yaml atomically (0600). */
  async writeSpec(spec: SpecParsed | VmSpec): Promise<void> {
    await writeFileAtomic(this.specPath, specYaml(spec));
  }

  async readMachine(): Promise<MachineIdentity> {
    return JSON.parse(await Deno.readTextFile(this.machinePath)) as MachineIdentity;
  }

  async writeMachine(m: MachineIdentity): Promise<void> {
    await writeFileAtomic(this.machinePath, JSON.stringify(m, null, 2) + "\n");
  }

  /**
   * Tries to take the exclusive lock; null when another process holds it.
   * With `retryMs`, keeps trying for that long: a process that needs the
   * lock for real (a supervisor starting, delete, clone) must not fail
   * because a `cove list` is probing the lock at that very moment.
   */
  async tryLock(opts: { retryMs?: number } = {}): Promise<BundleLock | null> {
    const f = await Deno.open(this.lockPath, {
      read: true,
      write: true,
      create: true,
      mode: 0o600,
    });
    let ok = false;
    try {
      const until = Date.now() + (opts.retryMs ?? 0);
      ok = await f.tryLock(true);
      while (!ok && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 20));
        ok = await f.tryLock(true);
      }
    } catch (e) {
      f.close();
      throw e;
    }
    if (!ok) {
      f.close();
      return null;
    }
    let held = true;
    return {
      release() {
        if (!held) return;
        held = false;
        try {
          f.unlockSync();
        } finally {
          f.close();
        }
      },
    };
  }

  /** True when a supervisor holds the bundle lock (a single try: probes never wait). */
  async isRunning(): Promise<boolean> {
    const lock = await this.tryLock();
    if (!lock) return true;
    lock.release();
    return false;
  }

  /** Throws a clear state error when the VM is running. */
  async assertStopped(action: string): Promise<void> {
    if (await this.isRunning()) {
      throw new CoveError("vm.running", `cannot ${action} '${this.name}': it is running`, {
        hint: `stop it first with 'cove stop ${this.name}'`,
        exit: ExitCode.State,
      });
    }
  }
}

/**
 * How long a process that needs a bundle lock for real keeps trying: longer
 * than any probe (`isRunning`, `cove list`) holds it.
 */
export const LOCK_RETRY_MS = 300;

/** The YAML text cove writes for a spec. */
export function specYaml(spec: SpecParsed | VmSpec): string {
  return "# cove VM spec: see 'cove schema' and the README's config reference\n" +
    stringify(spec, { lineWidth: 0 });
}
