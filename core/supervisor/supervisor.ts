/**
 * The supervisor: `cove run NAME`. It holds the bundle lock for as long as
 * the VM runs (that lock *is* "running"), starts the engine, copies the
 * serial console to `console.log` and to attached clients, serves the
 * control socket (see docs/control-api.md), stops the VM gracefully on
 * SIGINT/SIGTERM/SIGHUP (hard after a timeout, or at a second signal), and
 * records how the run ended in `last-exit.json`. Whatever happens, it
 * leaves no lock, socket or runtime directory behind.
 * @module
 */
import { dirname } from "node:path";
import type {
  CoveNetworkAttachment,
  Engine,
  EngineContext,
  ExitInfo,
  RunningVm,
  VmState,
} from "../../engines/engine.ts";
import { loadEngine, resolveEngineId } from "../../engines/select.ts";
import { AgentChannel } from "../agent/channel.ts";
import { readGuestText } from "../agent/cp.ts";
import { agentSnapshotHooks } from "../agent/freeze.ts";
import { prepareGuest } from "../provision/prepare.ts";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import { detectHost } from "../host.ts";
import type { PortForwardSpec, VmSpec } from "../spec/schema.ts";
import { type Bundle, type BundleLock, heldError } from "../store/bundle.ts";
import { engineActive, ForwardSet, planForwards, type PortOwner } from "../net/forwards.ts";
import { macResolver } from "../net/resolve.ts";
import { ensureSwitch, joinNetwork } from "../net/join.ts";
import { type NetworkInfo, NetworkStore } from "../net/networks.ts";
import {
  type AutoForwarder,
  autoForwardRule,
  type ReadGuestFile,
  startAutoForward,
} from "../net/autoforward.ts";
import { Store } from "../store/store.ts";
import {
  type HttpRequest,
  type HttpResult,
  type HttpServer,
  serveHttp,
  writeAll,
  writeUpgrade,
} from "./http.ts";
import { type GuestHooks, NO_AGENT } from "../snapshot/guest.ts";
import {
  clearResumeRequest,
  COPY_GRACE_MS,
  type LiveVm,
  readResumeRequest,
  recoverBundle,
  type SaveResult,
  saveRunning,
} from "../snapshot/snapshot.ts";
import { describeEvent, type SupervisorEvent } from "./events.ts";
import { consoleTailLines, type LastExit, writeLastExit } from "./lastexit.ts";
import { type RuntimeLayout, runtimeLayout } from "./paths.ts";
import { CONSOLE_PROTOCOL, DEFAULT_STOP_TIMEOUT, type SupervisorStatus } from "./protocol.ts";
import {
  firstBootProvisioning,
  keyInstallPending,
  markGuestProvisioned,
} from "../provision/macos.ts";

export { CONSOLE_PROTOCOL, DEFAULT_STOP_TIMEOUT, type SupervisorStatus };

export { describeEvent, type SupervisorEvent };

/** How long to listen for an error answer to guest-shutdown (it answers only on failure). */
const AGENT_SHUTDOWN_ERROR_WAIT_MS = 3_000;

/** Seconds a guest may take to power off after guest-shutdown, before the power-off. */
export const AGENT_SHUTDOWN_WAIT_S = 30;

/** How a stop ended: the guest's ACPI handler, its agent, or a power-off. */
export interface StopOutcome {
  exit: ExitInfo;
  forced: boolean;
  via: "acpi" | "agent" | "power-off";
}

/** Agent commands clients may not send: the supervisor keeps the channel in sync itself. */
const RESERVED_AGENT_COMMANDS = new Set(["guest-sync", "guest-sync-delimited"]);

/** Options of {@link runSupervisor}. */
export interface RunOptions {
  /** Run a copy-on-write clone and delete it afterwards. */
  ephemeral?: boolean;
  /** Show a display window (vz / qemu with a display). */
  graphics?: boolean;
  /** Seconds a graceful stop on SIGINT/SIGTERM may take. */
  stopTimeout?: number;
  /** Every event of the run (the supervisor also appends them to supervisor.log). */
  onEvent?: (e: SupervisorEvent) => void;
  /** Called once the VM runs, with the live supervisor. */
  onRunning?: (sup: Supervisor) => void | Promise<void>;
  /** Port forwards for this run only (`--forward`), on top of the spec's. */
  forwards?: PortForwardSpec[];
  /**
   * The run lock of `name` that the caller already holds (a fresh
   * ephemeral clone made by `cove job run`, so that no sweep takes it
   * before it runs); the supervisor takes it over and releases it.
   */
  lock?: BundleLock;
}

/** The ring buffer and fan-out of console output. */
export class ConsoleHub {
  #ring = new Uint8Array(64 * 1024);
  #len = 0;
  #subs = new Map<(b: Uint8Array) => void, (() => void) | undefined>();
  #closed = false;
  #file: Deno.FsFile | undefined;

  constructor(file?: Deno.FsFile) {
    this.#file = file;
  }

  /** Appends output: to console.log, the ring and every subscriber. */
  push(b: Uint8Array): void {
    try {
      let off = 0;
      while (this.#file && off < b.length) off += this.#file.writeSync(b.subarray(off));
    } catch { /* a full disk must not stop the VM */ }
    if (b.length >= this.#ring.length) {
      this.#ring.set(b.subarray(b.length - this.#ring.length));
      this.#len = this.#ring.length;
    } else {
      const keep = Math.min(this.#len, this.#ring.length - b.length);
      this.#ring.copyWithin(0, this.#len - keep, this.#len);
      this.#ring.set(b, keep);
      this.#len = keep + b.length;
    }
    for (const s of this.#subs.keys()) s(b);
  }

  /** The last `n` bytes of output. */
  tail(n = this.#ring.length): Uint8Array {
    const k = Math.max(0, Math.min(n, this.#len));
    return this.#ring.slice(this.#len - k, this.#len);
  }

  /**
   * Calls `fn` with every new chunk until the returned function is called;
   * calls `onClose` (once) when the hub closes, i.e. the VM stopped.
   */
  subscribe(fn: (b: Uint8Array) => void, onClose?: () => void): () => void {
    if (this.#closed) {
      onClose?.();
      return () => {};
    }
    this.#subs.set(fn, onClose);
    return () => void this.#subs.delete(fn);
  }

  /** True once {@link close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes console.log and tells every subscriber that no more output will come. */
  close(): void {
    this.#closed = true;
    const ends = [...this.#subs.values()];
    this.#subs.clear();
    for (const end of ends) {
      try {
        end?.();
      } catch { /* a subscriber's problem */ }
    }
    try {
      this.#file?.close();
    } catch { /* closed */ }
    this.#file = undefined;
  }
}

/** A live supervisor, as seen by the control API and by `cove run --console`. */
export class Supervisor {
  readonly hub: ConsoleHub;
  state: VmState = "starting";
  vm: RunningVm | undefined;
  readonly startedAt = new Date().toISOString();
  #stopping: Promise<StopOutcome> | undefined;
  #attached = Promise.withResolvers<RunningVm>();
  /** The spec the VM was started with (before guest preparation): what snapshots record. */
  spec: VmSpec | undefined;
  /**
   * The guest agent's snapshot steps. No agent channel exists yet, so
   * {@link NO_AGENT}; the agent's supervisor side sets its hooks here.
   */
  guest: GuestHooks = NO_AGENT;
  #saving: Promise<unknown> = Promise.resolve();
  #saveUnderWay = false;
  /** True while the VM is paused by a save (and not yet resumed). */
  #pausedBySave = false;
  /** The guest agent channel (owned here; reached through `/agent`). */
  readonly agent: AgentChannel;
  /** The run's port forwards (spec, flags, automatic). */
  forwards: ForwardSet | undefined;
  /** The cove networks joined, with the VM's address on each. */
  networks: { nic: number; network: string; address: string }[] = [];
  #auto: AutoForwarder[] = [];

  constructor(
    readonly bundle: Bundle,
    readonly engineId: string,
    hub: ConsoleHub,
    readonly emit: (e: SupervisorEvent) => void,
    agent?: AgentChannel,
  ) {
    this.hub = hub;
    this.agent = agent ?? new AgentChannel(bundle.name, undefined);
    if (this.agent.enabled) {
      this.guest = agentSnapshotHooks(
        this.agent,
        () => this.syncGuestClock(),
        (message) => this.emit({ type: "note", message }),
      );
    }
  }

  /**
   * Sets the guest clock to the host's (guest-set-time), as after a resume.
   * Best effort and bounded: returns what happened, in one word or line.
   */
  async syncGuestClock(): Promise<string> {
    if (!this.agent.enabled) return "skipped (agent: false)";
    try {
      await this.agent.command("guest-set-time", { time: Date.now() * 1e6 }, { timeoutMs: 10_000 });
      this.emit({ type: "note", message: "guest clock set through the agent" });
      return "set";
    } catch (e) {
      const why = toCoveError(e).message;
      this.emit({ type: "note", message: `guest clock not set: ${why}` });
      return `not set: ${why}`;
    }
  }

  status(): SupervisorStatus {
    return {
      name: this.bundle.name,
      state: this.state,
      engine: this.engineId,
      pid: Deno.pid,
      startedAt: this.startedAt,
      consoleLog: this.bundle.consoleLog,
      info: this.vm?.info() ?? {},
      forwards: this.forwards?.list() ?? [],
      networks: this.networks,
    };
  }

  /** Sends bytes to the guest's console. */
  async input(b: Uint8Array): Promise<void> {
    if (!this.vm) {
      throw new CoveError("vm.state", "the VM is still starting", { exit: ExitCode.State });
    }
    await this.vm.writeConsole(b);
  }

  /**
   * Stops the VM: ACPI power button; if the guest ignores it for `timeout`
   * seconds, guest-shutdown through the agent (when there is one) for up to
   * {@link AGENT_SHUTDOWN_WAIT_S} more; then power off. With `force`, power
   * off at once.
   */
  stop(force: boolean, timeout: number): Promise<StopOutcome> {
    const vm = this.vm;
    if (!vm) {
      // Still starting: power off as soon as it runs.
      return this.#attached.promise.then(() => this.stop(true, timeout));
    }
    if (force && this.#stopping) {
      // Escalate a graceful stop that is under way.
      void vm.stop().catch(() => {});
      return this.#stopping;
    }
    this.#stopping ??= (async () => {
      if (force) {
        this.emit({ type: "stopping", force: true });
        await vm.stop();
        return { exit: await vm.wait(), forced: true, via: "power-off" };
      }
      this.emit({ type: "stopping", force: false, timeoutSeconds: timeout });
      // The timeout runs from the request on, so an engine that never answers cannot hang the stop.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = new Promise<"timeout">((
        r,
      ) => (timer = setTimeout(() => r("timeout"), timeout * 1000)));
      let first: ExitInfo | "timeout";
      try {
        first = await Promise.race([
          vm.requestStop().then(() => Promise.race([vm.wait(), timedOut])),
          timedOut,
        ]);
      } catch (e) {
        clearTimeout(timer);
        this.emit({ type: "stop-failed", message: toCoveError(e).message });
        await vm.stop();
        return { exit: await vm.wait(), forced: true, via: "power-off" };
      }
      clearTimeout(timer);
      if (first === "timeout" && this.agent.enabled) {
        this.emit({
          type: "note",
          message:
            `the guest ignored the power button for ${timeout}s; asking its agent to shut down`,
        });
        const byAgent = await this.#agentShutdown(vm);
        if (byAgent) return { exit: byAgent, forced: false, via: "agent" };
      }
      if (first === "timeout") {
        this.emit({ type: "stop-timeout", timeoutSeconds: timeout });
        await vm.stop();
        return { exit: await vm.wait(), forced: true, via: "power-off" };
      }
      return { exit: first, forced: false, via: "acpi" };
    })();
    return this.#stopping;
  }

  /**
   * Resumes a guest that a save paused and did not resume (its resume
   * failed): called by every control request that finds it so while no save
   * is under way.
   */
  async healPause(): Promise<void> {
    const vm = this.vm;
    if (!vm || this.#saveUnderWay || !this.#pausedBySave) return;
    if (vm.state() === "paused") {
      this.emit({ type: "note", message: "resuming the guest a failed snapshot left paused" });
      await vm.resume().catch(() => {});
    }
    if (vm.state() !== "paused") this.#pausedBySave = false;
  }

  /**
   * Takes a snapshot of the running VM, or with `copy` a frozen copy of its
   * disks for a clone or push (one save at a time).
   */
  snapshot(
    opts: {
      tag?: string;
      diskOnly?: boolean;
      copy?: boolean;
      hook?: (phase: string) => Promise<void>;
    },
  ): Promise<SaveResult> {
    const vm = this.vm;
    const spec = this.spec;
    if (!vm || !spec) {
      throw new CoveError("vm.state", "the VM is still starting", { exit: ExitCode.State });
    }
    const live: LiveVm = {
      state: () => vm.state(),
      pause: async () => {
        await vm.pause();
        this.#pausedBySave = true;
      },
      resume: async () => {
        await vm.resume();
        this.#pausedBySave = false;
      },
      saveState: (path) => vm.saveState(path),
      saveStateSupport: () => vm.saveStateSupport(),
    };
    const run = this.#saving.then(async () => {
      await this.healPause();
      this.#saveUnderWay = true;
      try {
        const r = await saveRunning(this.bundle, spec, this.engineId, live, {
          ...opts,
          guest: this.guest,
        });
        if (opts.copy) {
          // Its client takes the copy an instant from now; one it never took (killed) goes later.
          const dir = this.bundle.snapshotDir(r.tag);
          const timer = setTimeout(
            () => void Deno.remove(dir, { recursive: true }).catch(() => {}),
            COPY_GRACE_MS,
          );
          Deno.unrefTimer(timer);
        }
        const how = `${r.frozen ? "file systems frozen, " : ""}paused ${Math.round(r.pausedMs)} ms`;
        this.emit({
          type: "note",
          message: opts.copy
            ? `copied the disks for a clone or push (${how})`
            : `snapshot ${r.tag} saved (${r.memory ? "memory and disks" : "disks"}; ${how})`,
        });
        return r;
      } finally {
        this.#saveUnderWay = false;
      }
    });
    this.#saving = run.catch(() => {});
    return run;
  }

  /** Suspends the VM (saves its state and stops), after any save under way. */
  suspend(): Promise<void> {
    const vm = this.vm;
    if (!vm) {
      throw new CoveError("vm.state", "the VM is still starting", { exit: ExitCode.State });
    }
    const run = this.#saving.then(async () => {
      await this.healPause();
      this.#saveUnderWay = true;
      try {
        await vm.suspend();
      } finally {
        this.#saveUnderWay = false;
      }
    });
    this.#saving = run.catch(() => {});
    return run;
  }

  /** guest-shutdown, then waits (bounded) for the guest to power off; null if it did not. */
  async #agentShutdown(vm: RunningVm): Promise<ExitInfo | null> {
    let sent = false;
    try {
      // guest-shutdown answers only when it fails: no answer within a few seconds is success.
      await this.agent.command("guest-shutdown", { mode: "powerdown" }, {
        timeoutMs: AGENT_SHUTDOWN_ERROR_WAIT_MS,
        onSent: () => (sent = true),
      });
    } catch (e) {
      const ce = toCoveError(e);
      // After the command went out, the channel closing means the guest is going down (QEMU
      // closes it as it exits); before, nothing was asked of the guest: no wait for a power-off.
      if (!sent || (ce.code !== "agent.timeout" && ce.code !== "agent.closed")) {
        this.emit({
          type: "note",
          message: `the agent could not shut the guest down: ${ce.message}`,
        });
        return null;
      }
    }
    this.emit({ type: "note", message: "guest-shutdown sent through the agent" });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await Promise.race([
      vm.wait(),
      new Promise<null>((
        res,
      ) => (timer = setTimeout(() => res(null), AGENT_SHUTDOWN_WAIT_S * 1000))),
    ]);
    clearTimeout(timer);
    if (!r) {
      this.emit({
        type: "note",
        message: `the guest did not power off ${AGENT_SHUTDOWN_WAIT_S}s after guest-shutdown`,
      });
    }
    return r;
  }

  /**
   * Starts the automatic forwards of every NIC with `autoForward`, reading
   * the guest's /proc/net/tcp* through `read` (the guest agent's file read).
   * Returns how many NICs it watches.
   */
  enableAutoForward(spec: VmSpec, read: ReadGuestFile): number {
    const set = this.forwards;
    if (!set || this.#auto.length > 0) return this.#auto.length;
    spec.networks.forEach((nic, i) => {
      const rule = autoForwardRule(nic);
      if (rule) {
        this.#auto.push(startAutoForward(set, i, rule, read, {
          log: (message) => this.emit({ type: "note", message }),
        }));
      }
    });
    return this.#auto.length;
  }

  /** Stops the automatic forwards (the VM stopped). */
  async stopAutoForward(): Promise<void> {
    const ws = this.#auto;
    this.#auto = [];
    await Promise.all(ws.map((w) => w.stop()));
  }

  /** Called by the run loop once the engine handle exists. */
  attach(vm: RunningVm): void {
    this.vm = vm;
    this.#attached.resolve(vm);
  }
}

function errorBody(e: unknown): { status: number; body: unknown } {
  const ce = toCoveError(e);
  const status = ce.exit === ExitCode.State ? 409 : ce.exit === ExitCode.Usage ? 400 : 500;
  return { status, body: { error: ce.toJSON() } };
}

function parseJsonBody(req: HttpRequest): Record<string, unknown> {
  if (req.body.length === 0) return {};
  try {
    const v = JSON.parse(new TextDecoder().decode(req.body));
    return v && typeof v === "object" ? v as Record<string, unknown> : {};
  } catch {
    throw new CoveError("http.bad_json", "the request body is not JSON", { exit: ExitCode.Usage });
  }
}

/** Serves one upgraded console client until either side closes. */
async function serveConsoleClient(
  sup: Supervisor,
  conn: Deno.UnixConn,
  rest: Uint8Array,
  replay: number,
): Promise<void> {
  try {
    await writeUpgrade(conn, CONSOLE_PROTOCOL);
  } catch {
    // The client hung up during the upgrade.
    try {
      conn.close();
    } catch { /* closed */ }
    return;
  }
  let queue = Promise.resolve();
  let pending = 0;
  let dead = false;
  const send = (b: Uint8Array) => {
    if (dead) return;
    if (pending > 4 * 1024 * 1024) {
      dead = true; // a client that stopped reading is dropped, the VM never waits for it
      try {
        conn.close();
      } catch { /* closed */ }
      return;
    }
    pending += b.length;
    queue = queue.then(() => writeAll(conn, b)).then(
      () => void (pending -= b.length),
      () => void (dead = true),
    );
  };
  if (replay > 0) send(sup.hub.tail(replay));
  const unsubscribe = sup.hub.subscribe(send, () => {
    // The VM stopped: close the client's stream.
    dead = true;
    void queue.finally(() => {
      try {
        conn.close();
      } catch { /* closed */ }
    });
  });
  try {
    if (rest.length) await sup.input(rest);
    const buf = new Uint8Array(4096);
    while (!dead) {
      const n = await conn.read(buf);
      if (n === null) break;
      await sup.input(buf.slice(0, n));
    }
  } catch {
    /* client gone or VM stopped */
  } finally {
    unsubscribe();
    dead = true;
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

/** The control API handler (documented in docs/control-api.md). */
export function controlHandler(sup: Supervisor) {
  return async (req: HttpRequest, conn: Deno.UnixConn, rest: Uint8Array): Promise<HttpResult> => {
    const route = `${req.method} ${req.path}`;
    try {
      await sup.healPause();
      switch (route) {
        case "GET /status":
          return { status: 200, body: sup.status() };
        case "POST /stop": {
          const b = parseJsonBody(req);
          const force = b.force === true;
          const timeout = typeof b.timeout === "number" && b.timeout >= 0
            ? b.timeout
            : DEFAULT_STOP_TIMEOUT;
          const r = await sup.stop(force, timeout);
          return {
            status: 200,
            body: {
              name: sup.bundle.name,
              state: "stopped",
              exit: r.exit,
              forced: r.forced,
              via: r.via,
            },
          };
        }
        case "POST /pause":
        case "POST /resume":
        case "POST /suspend": {
          const vm = sup.vm;
          if (!vm) {
            throw new CoveError("vm.state", "the VM is still starting", { exit: ExitCode.State });
          }
          if (req.path === "/pause") await vm.pause();
          else if (req.path === "/resume") {
            await vm.resume();
            // A guest paused for an hour must not be an hour behind.
            const clock = await sup.syncGuestClock();
            return { status: 200, body: { name: sup.bundle.name, state: vm.state(), clock } };
          } else await sup.suspend();
          return { status: 200, body: { name: sup.bundle.name, state: vm.state() } };
        }
        case "POST /snapshot": {
          const b = parseJsonBody(req);
          if (b.tag !== undefined && typeof b.tag !== "string") {
            throw new CoveError("http.bad_input", "POST /snapshot: tag must be a string", {
              exit: ExitCode.Usage,
            });
          }
          const r = await sup.snapshot({
            tag: b.tag as string | undefined,
            diskOnly: b.diskOnly === true,
            copy: b.copy === true,
            hook: testStall(),
          });
          return { status: 200, body: r };
        }
        case "GET /agent":
          return { status: 200, body: await sup.agent.status() };
        case "POST /agent/command": {
          const b = parseJsonBody(req);
          if (typeof b.execute !== "string" || !/^guest-[a-z0-9-]+$/.test(b.execute)) {
            throw new CoveError(
              "http.bad_input",
              'POST /agent/command needs {"execute": "guest-..."}',
              { exit: ExitCode.Usage },
            );
          }
          if (RESERVED_AGENT_COMMANDS.has(b.execute)) {
            throw new CoveError(
              "agent.reserved",
              `${b.execute} is the supervisor's own: it keeps the channel in sync`,
              { exit: ExitCode.Usage },
            );
          }
          const args = b.arguments && typeof b.arguments === "object"
            ? b.arguments as Record<string, unknown>
            : undefined;
          const timeoutMs = typeof b.timeoutMs === "number"
            ? Math.max(100, Math.min(600_000, b.timeoutMs))
            : undefined;
          const ret = await sup.agent.command(b.execute, args, {
            timeoutMs,
            noReply: b.noReply === true,
          });
          return { status: 200, body: { return: ret ?? null } };
        }
        case "GET /console": {
          if ((req.headers.get("upgrade") ?? "").toLowerCase() !== CONSOLE_PROTOCOL) {
            return {
              status: 400,
              body: {
                error: {
                  code: "http.upgrade",
                  message: `GET /console needs 'Upgrade: ${CONSOLE_PROTOCOL}'`,
                },
              },
            };
          }
          const replay = Math.max(0, Math.min(65536, Number(req.query.get("replay") ?? "0") || 0));
          void serveConsoleClient(sup, conn, rest, replay).catch(() => {});
          return "upgraded";
        }
        case "GET /forwards":
          return {
            status: 200,
            body: { name: sup.bundle.name, forwards: sup.forwards?.list() ?? [] },
          };
        case "GET /console/tail": {
          const bytes = Math.max(0, Math.min(65536, Number(req.query.get("bytes") ?? "4096") || 0));
          return { status: 200, body: { text: new TextDecoder().decode(sup.hub.tail(bytes)) } };
        }
        case "POST /console/input": {
          const b = parseJsonBody(req);
          if (typeof b.data !== "string") {
            throw new CoveError("http.bad_input", 'POST /console/input needs {"data": "text"}', {
              exit: ExitCode.Usage,
            });
          }
          await sup.input(new TextEncoder().encode(b.data));
          return { status: 200, body: { written: new TextEncoder().encode(b.data).length } };
        }
        default:
          return {
            status: 404,
            body: { error: { code: "http.not_found", message: `no route ${route}` } },
          };
      }
    } catch (e) {
      return errorBody(e);
    }
  };
}

async function removeQuietly(path: string, recursive = false): Promise<void> {
  await Deno.remove(path, { recursive }).catch(() => {});
}

/** Removes what a previous (killed) run left, and makes the runtime directory. */
async function prepareRuntime(bundle: Bundle, layout: RuntimeLayout): Promise<void> {
  await removeQuietly(bundle.enginePidPath);
  await removeQuietly(bundle.controlSocket);
  await removeQuietly(layout.controlSocket);
  await removeQuietly(bundle.runtimeDir, true);
  await removeQuietly(layout.runtimeDir, true);
  await Deno.mkdir(layout.runtimeDir, { recursive: true, mode: 0o700 });
  await Deno.mkdir(dirname(layout.controlSocket), { recursive: true, mode: 0o700 });
  if (layout.runtimeLinked) await Deno.symlink(layout.runtimeDir, bundle.runtimeDir);
}

async function cleanupRuntime(bundle: Bundle, layout: RuntimeLayout): Promise<void> {
  await removeQuietly(bundle.controlSocket);
  await removeQuietly(layout.controlSocket);
  await removeQuietly(bundle.runtimeDir, true);
  await removeQuietly(layout.runtimeDir, true);
  await removeQuietly(bundle.enginePidPath);
  if (layout.runtimeLinked || layout.controlLinked) {
    // The short directory per bundle: remove it when empty.
    await Deno.remove(dirname(layout.controlLinked ? layout.controlSocket : layout.runtimeDir))
      .catch(() => {});
  }
}

/** How a supervised run ended. */
export interface RunResult {
  exit: ExitInfo;
  /** The last console lines, cleaned. */
  consoleTail: string[];
  /** The name actually run (the clone's, with --ephemeral). */
  name: string;
}

function nowLine(line: string): string {
  return `${new Date().toISOString()} ${line}\n`;
}

/**
 * Runs a VM under this process until it stops. Throws a CoveError for
 * anything that keeps it from starting (already running, bad spec, host
 * problems); returns how it ended otherwise.
 */
export async function runSupervisor(
  store: Store,
  name: string,
  opts: RunOptions = {},
): Promise<RunResult> {
  const original = await store.get(name);
  let bundle = original;
  let ephemeral = false;
  let heldLock: BundleLock | null = null;
  // Starting writes: first reap what killed runs left (never done by list).
  await store.sweep().catch(() => {});
  if (opts.ephemeral) {
    if (await original.isRunning()) {
      throw new CoveError("vm.running", `VM '${name}' is already running`, {
        hint: "--ephemeral runs a copy of a stopped VM",
        exit: ExitCode.State,
      });
    }
    const suffix = crypto.randomUUID().slice(0, 8);
    const cloneName = `${name.slice(0, 64 - 13)}-eph-${suffix}`;
    // The clone comes back locked, so no sweep can take it before we run it.
    const c = await store.clone(name, cloneName, { ephemeral: true });
    bundle = c.bundle;
    heldLock = c.lock ?? null;
    ephemeral = true;
  }
  let lock: BundleLock | null = null;
  try {
    // One try, never a wait: probes do not take the lock, and a second
    // start must fail at once rather than queue behind the first.
    lock = heldLock ?? opts.lock ?? await bundle.tryLock({ purpose: "run" });
    if (!lock) {
      const h = await bundle.holder();
      if (h && h.purpose !== "run") throw heldError(name, "start", h);
      throw new CoveError("vm.running", `VM '${name}' is already running`, {
        hint: `attach with 'cove console ${name}' or stop it with 'cove stop ${name}'`,
        exit: ExitCode.State,
      });
    }
    return await supervise(bundle, lock, opts);
  } finally {
    lock?.release();
    if (ephemeral) await store.delete(bundle.name).catch(() => {});
  }
}

async function supervise(bundle: Bundle, _lock: BundleLock, opts: RunOptions): Promise<RunResult> {
  let logFile: Deno.FsFile | undefined;
  try {
    logFile = await Deno.open(bundle.supervisorLog, { append: true, create: true, mode: 0o600 });
  } catch { /* logging is best effort */ }
  const log = (e: SupervisorEvent) => {
    try {
      logFile?.writeSync(new TextEncoder().encode(nowLine(describeEvent(e))));
    } catch { /* ignore */ }
    opts.onEvent?.(e);
  };
  const note = (message: string) => log({ type: "note", message });
  const layout = await runtimeLayout(bundle);
  let hub: ConsoleHub | undefined;
  let server: HttpServer | undefined;
  let agent: AgentChannel | undefined;
  let forwards: ForwardSet | undefined;
  let supervisor: Supervisor | undefined;
  const signals: [Deno.Signal, () => void][] = [];
  let spec: VmSpec;
  try {
    log({ type: "starting", pid: Deno.pid, name: bundle.name });
    await recoverBundle(bundle);
    // From the summary when it describes cove.yaml as it is: no YAML parser or validator to load.
    spec = await bundle.readSpecSummarized();
    const baseSpec = spec;
    // A hand-edited spec gets the same disk confinement as a created one.
    await bundle.checkDisks(spec);
    const host = detectHost();
    const engineId = resolveEngineId(spec, host);
    // cove networks: each must exist, and the VM gets its address on it (for the seed, below).
    const home = dirname(dirname(bundle.dir));
    const addresses: (string | undefined)[] = [];
    const infos: (NetworkInfo | undefined)[] = [];
    const joined: Supervisor["networks"] = [];
    for (const [i, n] of spec.networks.entries()) {
      if (n.mode !== "network" || !n.network) continue;
      const j = await joinNetwork(home, n.network, bundle.name);
      addresses[i] = j.address;
      infos[i] = j.info;
      joined.push({ nic: i, network: n.network, address: j.address });
      note(`network ${n.network} (${j.info.subnet}): ${j.address}`);
    }
    const engine: Engine = await loadEngine(engineId);
    // cloud-init seed (refreshed when the spec changed) and what the engine needs to reach the guest.
    spec = await prepareGuest(bundle.dir, spec, engine, addresses);
    // Who serves each forward: the engine (QEMU hostfwd) or this supervisor's proxy.
    const fwdPlan = planForwards(spec, opts.forwards ?? [], (n) => engine.forwardsPorts(n));
    // The switch of each cove network runs if the engine joins through it.
    const coveNetworks: (CoveNetworkAttachment | undefined)[] = [];
    for (const [i, n] of spec.networks.entries()) {
      const info = infos[i];
      if (!info) continue;
      coveNetworks[i] = {
        name: info.name,
        subnet: info.subnet,
        mode: info.mode,
        socket: engine.needsSwitch?.(n)
          ? await ensureSwitch(new NetworkStore(home), info.name)
          : undefined,
      };
    }
    await prepareRuntime(bundle, layout);
    const paths = {
      ...bundle.vmPaths(),
      runtimeDir: layout.runtimeDir,
      agentSocket: bundle.agentSocketIn(layout.runtimeDir),
    };
    // The proxied forwards listen before the VM starts; a refusal starts nothing.
    const nics = spec.networks;
    // A NIC on a cove network has the address the network handed out; any other is looked up by MAC.
    forwards = new ForwardSet((i) => {
      const fixed = addresses[i]?.split("/")[0];
      return fixed ? () => Promise.resolve(fixed) : macResolver(nics[i]?.mac ?? "");
    }, { log: note });
    const owner = portOwner(bundle);
    await forwards.probe(fwdPlan.all.filter((f) => !fwdPlan.proxied.includes(f)), owner);
    await engine.validate(fwdPlan.engineSpec, host, paths, storeContext(bundle));
    await forwards.openAll(fwdPlan.proxied, owner);
    for (const f of forwards.list()) {
      note(`forward ${f.address}:${f.host} -> guest ${f.guest}/${f.protocol} (${f.where}, proxy)`);
    }

    const consoleFile = await Deno.open(bundle.consoleLog, {
      write: true,
      create: true,
      truncate: true,
      mode: 0o600,
    });
    hub = new ConsoleHub(consoleFile);
    agent = new AgentChannel(bundle.name, spec.agent ? paths.agentSocket : undefined);
    const sup = new Supervisor(bundle, engineId, hub, log, agent);
    sup.spec = baseSpec;
    sup.forwards = forwards;
    sup.networks = joined;
    supervisor = sup;

    const listener = Deno.listen({ transport: "unix", path: layout.controlSocket });
    await Deno.chmod(layout.controlSocket, 0o600);
    if (layout.controlLinked) await Deno.symlink(layout.controlSocket, bundle.controlSocket);
    server = serveHttp(listener, controlHandler(sup));

    const timeout = opts.stopTimeout ?? DEFAULT_STOP_TIMEOUT;
    let interrupts = 0;
    const onSignal = (sig: Deno.Signal) => () => {
      interrupts++;
      log({ type: "signal", signal: sig });
      void sup.stop(interrupts > 1, timeout).catch(() => {});
    };
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as Deno.Signal[]) {
      const fn = onSignal(sig);
      try {
        Deno.addSignalListener(sig, fn);
        signals.push([sig, fn]);
      } catch { /* not on this OS */ }
    }

    // A memory restore waiting for this run: start from the snapshot's state.
    const resume = await readResumeRequest(bundle);
    let resumeFrom: string | undefined;
    if (resume) {
      const have = await Deno.stat(resume.state).then(() => true, () => false);
      if (have && resume.engine === engineId) resumeFrom = resume.state;
      else {
        log({
          type: "note",
          message: `warn: snapshot ${resume.tag}'s memory is gone or from another engine; booting`,
        });
        await clearResumeRequest(bundle);
      }
    }
    // A start that restores saved state resumes a guest whose clock stopped when it was saved.
    const restoring = await Deno.stat(bundle.savedStatePath).then(() => true, () => false);
    let vm: RunningVm;
    // macOS guests: the first boot after install creates the account unattended.
    const guestProvisioning = await firstBootProvisioning(bundle, spec);
    try {
      vm = await engine.start({
        name: bundle.name,
        spec: fwdPlan.engineSpec,
        paths,
        graphics: opts.graphics ?? false,
        restore: !resumeFrom,
        resumeFrom,
        host,
        networks: coveNetworks,
        ...(guestProvisioning ? { guestProvisioning } : {}),
      });
    } catch (e) {
      if (resumeFrom) {
        // Never retried: the next start boots the restored disks.
        await clearResumeRequest(bundle);
        const ce = toCoveError(e);
        throw new CoveError(
          "snapshot.resume_failed",
          `snapshot ${resume!.tag}'s memory could not be resumed: ${ce.message}`,
          { hint: "the next start boots the restored disks", exit: ce.exit },
        );
      }
      throw toCoveError(e);
    }
    forwards.setEngineForwards(engineActive(fwdPlan, vm.info().forwards));
    if (resumeFrom) {
      await clearResumeRequest(bundle);
      log({ type: "note", message: `resumed snapshot ${resume!.tag}` });
      // In the background, as after a resume from suspend: a guest whose agent is slow to answer
      // (or has none running) must not hold the VM in "starting", and `cove snapshot restore`
      // with it, for the agent's timeout. The clock set never throws; it logs how it went.
      void sup.guest.setClock();
    }
    if (guestProvisioning) {
      await markGuestProvisioned(bundle);
      note(`first boot: provisioning the guest's account '${guestProvisioning.username}'`);
    }
    sup.attach(vm);
    sup.state = vm.state();
    // Forwards opened while the VM runs (automatic ones) go through the engine on the NICs it
    // forwards itself: the proxy cannot reach a guest behind QEMU's user networking.
    const byEngine = spec.networks.map((n) => n.mode !== "none" && engine.forwardsPorts(n));
    const rule = ({ protocol, address, host, guest }: PortForwardSpec) => ({
      protocol,
      address,
      host,
      guest,
    });
    forwards.setLiveEngine({
      serves: (i) => byEngine[i] ?? false,
      add: (f) => {
        if (!vm.addForward) {
          // An engine that forwards a NIC's ports itself must add them live too.
          throw new CoveError(
            "internal",
            `${f.where}: the ${engineId} engine cannot add a forward while the VM runs`,
          );
        }
        return vm.addForward(f.network, rule(f));
      },
      remove: async (f) => await vm.removeForward?.(f.network, rule(f)),
    });
    if (restoring && spec.agent) void sup.syncGuestClock();
    // Automatic forwards watch the guest's listening sockets through its agent.
    if (agent?.enabled) {
      const channel = agent;
      const watched = sup.enableAutoForward(spec, (path) => readGuestText(channel, path));
      if (watched) note(`automatic forwards: watching ${watched} NIC(s) through the guest agent`);
    }
    log({ type: "running", info: { ...vm.info() } });
    const eventsDone = (async () => {
      for await (const ev of vm.events) {
        if (ev.type === "state") {
          sup.state = ev.state;
          log({ type: "state", state: ev.state });
        } else if (ev.type === "log") {
          log({ type: "engine-log", level: ev.level, message: ev.message });
        }
      }
    })().catch(() => {});
    const consoleDone = (async () => {
      for await (const chunk of vm.consoleOutput) hub!.push(chunk);
    })().catch(() => {});
    if (opts.onRunning) await opts.onRunning(sup);
    const firstBoot = (await keyInstallPending(bundle, spec))
      ? finishFirstBoot(bundle, spec, engineId, vm, note)
      : Promise.resolve();
    const exit = await vm.wait();
    await Promise.race([firstBoot, new Promise((r) => setTimeout(r, 1000))]);
    await Promise.race([
      Promise.all([eventsDone, consoleDone]),
      new Promise((r) => setTimeout(r, 2000)),
    ]);
    sup.state = exit.reason === "crash" ? "error" : "stopped";
    const consoleTail = consoleTailLines(hub.tail(8192), 8);
    const rec: LastExit = {
      time: new Date().toISOString(),
      reason: exit.reason,
      message: exit.message,
      consoleTail,
    };
    await writeLastExit(bundle, rec);
    log({ type: "stopped", reason: exit.reason, message: exit.message });
    return { exit, consoleTail, name: bundle.name };
  } catch (e) {
    const ce = toCoveError(e);
    log({ type: "failed", message: ce.line(), code: ce.code });
    await writeLastExit(bundle, {
      time: new Date().toISOString(),
      reason: "failed",
      message: ce.message,
      code: ce.code,
      consoleTail: hub ? consoleTailLines(hub.tail(8192), 8) : [],
    });
    throw ce;
  } finally {
    for (const [sig, fn] of signals) {
      try {
        Deno.removeSignalListener(sig, fn);
      } catch { /* ignore */ }
    }
    server?.close();
    await supervisor?.stopAutoForward();
    await forwards?.closeAll();
    await agent?.close();
    hub?.close();
    await cleanupRuntime(bundle, layout);
    try {
      logFile?.close();
    } catch { /* closed */ }
  }
}

/** What the engine learns about the other VMs of this bundle's store (for instance limits). */
function storeContext(bundle: Bundle): EngineContext {
  return {
    async peers() {
      const store = new Store(dirname(dirname(bundle.dir)));
      return (await store.list())
        .filter((v) => store.bundle(v.name).dir !== bundle.dir && v.os && v.arch)
        .map((v) => ({
          dir: store.bundle(v.name).dir,
          os: v.os as "linux" | "macos",
          arch: v.arch as "x86_64" | "arm64",
          running: v.state === "running",
        }));
    },
  };
}

/** Names the other running VM of this store whose forward holds a host port. */
function portOwner(bundle: Bundle): PortOwner {
  return async (f) => {
    const store = new Store(dirname(dirname(bundle.dir)));
    const { liveStatus } = await import("./live.ts");
    const { sameHostPort } = await import("../net/forwards.ts");
    for (const v of await store.list()) {
      if (v.state !== "running" || v.name === bundle.name) continue;
      const st = await liveStatus(store.bundle(v.name), { timeoutMs: 1000 });
      for (const o of st.supervisor?.forwards ?? []) {
        if (sameHostPort(o, f)) return `VM '${v.name}' (${o.where})`;
      }
    }
    return undefined;
  };
}

/**
 * Test seam, named as such: `COVE_TEST_SNAPSHOT_STALL=PHASE:MS[,PHASE:MS...]`
 * makes a save wait MS milliseconds at each PHASE (see SaveOptions.hook),
 * so the fault tests can kill a process at a known point of the save.
 */
function testStall(): ((phase: string) => Promise<void>) | undefined {
  const v = Deno.env.get("COVE_TEST_SNAPSHOT_STALL");
  if (!v) return undefined;
  const stalls = new Map<string, number>();
  for (const part of v.split(",")) {
    const m = /^([a-z-]+):(\d+)$/.exec(part.trim());
    if (m) stalls.set(m[1], Number(m[2]));
  }
  return (p) => {
    const ms = stalls.get(p);
    return ms ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
  };
}

/**
 * The rest of a macOS guest's first boot, beside the running VM: waits for
 * ssh, installs cove's key with the password, deletes the password. Logged;
 * a failure leaves the VM running and is kept in the install record.
 */
async function finishFirstBoot(
  bundle: Bundle,
  spec: VmSpec,
  engineId: string,
  vm: RunningVm,
  log: (line: string) => void,
): Promise<void> {
  try {
    const { runFirstBootKeyInstall } = await import("../provision/macos_firstboot.ts");
    await runFirstBootKeyInstall(bundle, spec, {
      status: () => Promise.resolve({ engine: engineId, ...vm.info() }),
      log,
    });
    log("first boot: cove's key is installed; the password file is deleted");
  } catch (e) {
    log(`first boot: ${toCoveError(e).line()}`);
  }
}
