/**
 * A VM running in this process through libcove_vz: the {@link RunningVm}
 * handle of the vz engine. It takes the shim's events with nonblocking
 * `next_event` calls in a loop (so the event loop never blocks), maps them
 * to engine events, carries the serial console over pipes, steps the AppKit
 * run loop from a timer while a window is open, and releases the VM once it
 * has ended for any reason.
 * @module
 */
import { CoveError, ExitCode } from "../../core/errors.ts";
import type { Availability, EngineEvent, ExitInfo, RunningVm, VmState } from "../engine.ts";
import type { CoveVz, VzEvent, VzState } from "../../ffi/cove_vz.ts";
import { fds, readableFromFd, writeAllFd } from "../../ffi/fd.ts";
import { vzError } from "./errors.ts";

/** How a VZ state reads as an engine state. */
export function engineState(s: VzState): VmState {
  switch (s) {
    case "starting":
    case "restoring":
      return "starting";
    case "running":
    case "resuming":
      return "running";
    case "pausing":
    case "paused":
      return "paused";
    case "stopping":
      return "stopping";
    case "saving":
      return "suspending";
    case "stopped":
      return "stopped";
    case "error":
      return "error";
  }
}

export interface VzRunningOptions {
  vz: CoveVz;
  handle: number;
  /** Host ends of the serial pipes: read guest output, write guest input. */
  console?: { readFd: number; writeFd: number };
  /** Where suspend saves the machine state. */
  savedState: string;
  /** Whether VZ can save this configuration, and if not why. */
  saveRestore: { supported: boolean; reason?: string };
  /** Step AppKit from a timer (a window is open). */
  pump: boolean;
  /** How long one next_event call waits, in ms. */
  pollMs?: number;
  info: Record<string, unknown>;
}

/** The running-VM handle of the vz engine. */
export class VzRunningVm implements RunningVm {
  readonly events: ReadableStream<EngineEvent>;
  readonly consoleOutput: ReadableStream<Uint8Array>;
  #o: VzRunningOptions;
  #emit!: ReadableStreamDefaultController<EngineEvent>;
  #state: VmState = "starting";
  #exit?: ExitInfo;
  #ending = false;
  #done: Promise<ExitInfo>;
  #resolve!: (e: ExitInfo) => void;
  #intent?: "host" | "suspended";
  #pumpTimer?: ReturnType<typeof setInterval>;
  #loop: Promise<void>;

  constructor(o: VzRunningOptions) {
    this.#o = o;
    this.events = new ReadableStream<EngineEvent>({ start: (c) => void (this.#emit = c) });
    this.consoleOutput = o.console
      ? readableFromFd(o.console.readFd)
      : new ReadableStream({ start: (c) => c.close() });
    this.#done = new Promise((r) => (this.#resolve = r));
    if (o.pump) this.#pumpTimer = setInterval(() => o.vz.pump(0), 16);
    this.#loop = this.#pumpEvents();
  }

  state(): VmState {
    return this.#state;
  }

  info(): Record<string, unknown> {
    return {
      engine: "vz",
      pid: Deno.pid,
      handle: this.#o.handle,
      suspendable: this.#o.saveRestore.supported,
      ...this.#o.info,
    };
  }

  wait(): Promise<ExitInfo> {
    return this.#done;
  }

  async writeConsole(data: Uint8Array): Promise<void> {
    if (!this.#o.console) {
      throw new CoveError("vz.console", "this VM has no serial console", { exit: ExitCode.State });
    }
    if (this.#ending) {
      throw new CoveError("vm.not_running", "the VM has stopped", { exit: ExitCode.State });
    }
    await writeAllFd(this.#o.console.writeFd, data);
  }

  async requestStop(): Promise<void> {
    await this.#call("request stop", () => this.#o.vz.requestStop(this.#o.handle));
  }

  async stop(): Promise<void> {
    if (this.#ending) return;
    this.#intent ??= "host";
    try {
      await this.#call("stop", () => this.#o.vz.stop(this.#o.handle));
    } catch (e) {
      if (this.#ending) return; // the guest stopped first
      throw e;
    }
    await this.#finish({ reason: this.#intent ?? "host" });
  }

  async pause(): Promise<void> {
    await this.#call("pause", () => this.#o.vz.pause(this.#o.handle));
    await this.settled();
  }

  async resume(): Promise<void> {
    await this.#call("resume", () => this.#o.vz.resume(this.#o.handle));
    await this.settled();
  }

  /** Pauses, saves the machine state to the bundle, and stops. */
  async suspend(): Promise<void> {
    if (!this.#o.saveRestore.supported) {
      throw new CoveError(
        "vz.suspend",
        `this VM cannot be suspended: ${this.#o.saveRestore.reason ?? "VZ cannot save it"}`,
        {
          hint:
            "suspend needs macOS 14+ and a VM without USB input, entropy or sound input (see 'cove doctor')",
          exit: ExitCode.Host,
        },
      );
    }
    const { vz, handle, savedState } = this.#o;
    if ((await vz.state(handle)).state === "running") {
      await this.#call("pause", () => vz.pause(handle));
    }
    try {
      await this.#call("save", () => vz.save(handle, savedState));
    } catch (e) {
      await this.#call("resume", () => vz.resume(handle)).catch(() => {});
      throw e;
    }
    this.#intent = "suspended";
    await this.stop();
  }

  /** Whether VZ can save this configuration (validateSaveRestoreSupport, macOS 14+), and if not why. */
  saveStateSupport(): Availability {
    return this.#o.saveRestore.supported
      ? { available: true }
      : { available: false, reason: this.#o.saveRestore.reason ?? "VZ cannot save it" };
  }

  /**
   * Writes the machine state of the paused VM to `path`
   * (saveMachineStateTo, macOS 14+); the VM stays paused.
   */
  async saveState(path: string): Promise<void> {
    if (!this.#o.saveRestore.supported) {
      throw new CoveError(
        "vz.save",
        `this VM's state cannot be saved: ${this.#o.saveRestore.reason ?? "VZ cannot save it"}`,
        {
          hint: "take a --disk-only snapshot, or remove USB input, entropy and sound input",
          exit: ExitCode.Host,
        },
      );
    }
    await this.#call("save", () => this.#o.vz.save(this.#o.handle, path));
    // The state follows the shim's events: wait (bounded) until "saving" has given way to "paused".
    await this.#caughtUp("paused");
  }

  /**
   * Waits (bounded) until the events taken so far have brought {@link state}
   * to the library's own state, so that a start, restore or resume that has
   * returned reads as its outcome ("running") rather than as an earlier event
   * still queued ("starting"). The engine calls it before handing the VM out.
   */
  async settled(): Promise<void> {
    const now = async () => engineState((await this.#o.vz.state(this.#o.handle)).state);
    try {
      if (this.#ending || (await this.#caughtUp(await now()))) return;
      // The events never got there (or it has moved on since): the library's state now.
      if (!this.#ending) this.#setState(await now());
    } catch { /* the pump reports a library that has gone away */ }
  }

  /** Whether the state reached `target` (or the VM ended) within 5 s of events. */
  async #caughtUp(target: VmState): Promise<boolean> {
    const deadline = Date.now() + 5000;
    while (this.#state !== target && !this.#ending) {
      if (Date.now() >= deadline) return false;
      await new Promise((r) => setTimeout(r, 5));
    }
    return true;
  }

  /** Ends a VM that failed while starting: releases it without a stop. */
  async abandon(message: string): Promise<void> {
    await this.#finish({ reason: "crash", message });
  }

  /** Connects to a guest vsock port; the fd is the caller's to close. */
  async vsockConnect(port: number): Promise<number> {
    const r = await this.#call(
      "vsock connect",
      () => this.#o.vz.vsockConnect(this.#o.handle, port),
    );
    return r.fd;
  }

  /** Sets the memory the guest should keep, through the balloon. */
  async setMemoryTarget(bytes: number): Promise<number> {
    return await this.#call(
      "set balloon target",
      () => this.#o.vz.setBalloonTarget(this.#o.handle, bytes),
    );
  }

  async #call<T>(what: string, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      throw vzError(e, what);
    }
  }

  #push(e: EngineEvent): void {
    if (this.#exit && e.type !== "exit") return;
    try {
      this.#emit.enqueue(e);
    } catch { /* the consumer cancelled */ }
  }

  #setState(s: VmState): void {
    if (s === this.#state) return;
    this.#state = s;
    this.#push({ type: "state", state: s });
  }

  async #pumpEvents(): Promise<void> {
    const { vz, handle } = this.#o;
    const poll = this.#o.pollMs ?? 250;
    while (true) {
      let r: { event: VzEvent | null; closed: boolean };
      try {
        r = await vz.nextEvent(handle, poll);
      } catch (e) {
        await this.#finish({ reason: "crash", message: vzError(e, "events").message });
        return;
      }
      if (r.closed) return;
      if (r.event) await this.#onEvent(r.event);
    }
  }

  async #onEvent(e: VzEvent): Promise<void> {
    switch (e.type) {
      case "state":
        if (!this.#ending) this.#setState(engineState(e.state));
        break;
      case "guest-stopped":
        await this.#finish({ reason: "guest" });
        break;
      case "stopped-with-error":
        await this.#finish({ reason: "crash", message: e.error.message });
        break;
      case "network-disconnected":
        this.#push({
          type: "log",
          level: "warn",
          message: `network ${e.index} disconnected: ${e.error.message}`,
        });
        break;
      case "vsock-connection":
        fds().close(e.fd); // no listener is registered by the engine itself
        break;
      case "window-closed":
        this.#push({ type: "log", level: "info", message: "window closed: stopping the VM" });
        this.stop().catch(() => {});
        break;
      case "install-progress":
      case "install-finished":
      case "install-failed":
        break;
    }
  }

  /** Ends the VM once: releases it, stops the pump, closes pipes, reports the exit. */
  async #finish(exit: ExitInfo): Promise<void> {
    if (this.#ending) return;
    this.#ending = true;
    if (this.#pumpTimer !== undefined) clearInterval(this.#pumpTimer);
    this.#setState(exit.reason === "crash" ? "error" : "stopped");
    try {
      await this.#o.vz.release(this.#o.handle);
    } catch { /* already gone */ }
    this.#exit = exit;
    if (this.#o.console) {
      try {
        fds().close(this.#o.console.writeFd);
      } catch { /* closed */ }
    }
    this.#push({ type: "exit", exit });
    try {
      this.#emit.close();
    } catch { /* cancelled */ }
    this.#resolve(exit);
  }
}
