/**
 * The client side of the control socket: what `cove stop`, `pause`,
 * `resume`, `console`, `list` and `get` use to talk to a VM's supervisor.
 * Every call first checks the bundle lock, so "not running" is one clear
 * line, never a connection error.
 * @module
 */
import type { ExitInfo } from "../../engines/engine.ts";
import { CoveError, ExitCode } from "../errors.ts";
import type { SaveResult, SnapshotMeta } from "../snapshot/snapshot.ts";
import type { RunningCopy } from "../store/store.ts";
import { isTag } from "../snapshot/tag.ts";
import type { Bundle } from "../store/bundle.ts";
import type { ActiveForward } from "../net/forwards.ts";
import { httpRequest, HttpTimeout, httpUpgrade } from "./http.ts";
import { consoleTailLines, writeLastExit } from "./lastexit.ts";
import { controlSocketTarget } from "./paths.ts";
import { CONSOLE_PROTOCOL, DEFAULT_STOP_TIMEOUT, type SupervisorStatus } from "./protocol.ts";

/** The error for commands that need a running VM. */
export function notRunning(bundle: Bundle, action: string): CoveError {
  return new CoveError("vm.not_running", `cannot ${action} '${bundle.name}': it is not running`, {
    hint: `start it with 'cove start ${bundle.name}'`,
    exit: ExitCode.State,
  });
}

async function assertRunning(bundle: Bundle, action: string): Promise<void> {
  if (!(await bundle.isRunning())) throw notRunning(bundle, action);
}

interface ErrorBody {
  error?: { code?: string; message?: string; hint?: string; exit?: number };
}

/** Calls the control API; maps errors to CoveErrors. */
export async function control<T>(
  bundle: Bundle,
  method: string,
  path: string,
  body?: unknown,
  opts: { timeoutMs?: number } = {},
): Promise<T> {
  const socket = await controlSocketTarget(bundle);
  let res;
  try {
    res = await httpRequest(socket, method, path, body, opts);
  } catch (e) {
    if (!(await bundle.isRunning())) throw notRunning(bundle, "reach");
    throw new CoveError(
      "vm.control",
      `the supervisor of '${bundle.name}' does not answer: ${e instanceof Error ? e.message : e}`,
      {
        hint: `see ${bundle.supervisorLog}`,
        exit: ExitCode.Failure,
        cause: e,
      },
    );
  }
  if (res.status >= 400) {
    let err: ErrorBody["error"];
    try {
      err = res.json<ErrorBody>()?.error;
    } catch { /* not JSON */ }
    throw new CoveError(
      err?.code ?? "vm.control",
      err?.message ?? `control API answered ${res.status}`,
      {
        hint: err?.hint,
        exit: (err?.exit as ExitCode | undefined) ?? ExitCode.Failure,
      },
    );
  }
  return res.json<T>();
}

/** The supervisor's status of a running VM. */
export async function vmStatus(
  bundle: Bundle,
  opts: { timeoutMs?: number } = {},
): Promise<SupervisorStatus> {
  await assertRunning(bundle, "query");
  return await control<SupervisorStatus>(bundle, "GET", "/status", undefined, opts);
}

/** Options of {@link stopVm}. */
export interface StopOptions {
  /** Power off at once instead of pressing the ACPI power button. */
  force?: boolean;
  /** Seconds to wait for a graceful stop before powering off. */
  timeoutSeconds?: number;
}

/** What a stop did. */
export interface StopResult {
  name: string;
  state: "stopped";
  exit: ExitInfo;
  /** True when the VM was powered off rather than shut down by the guest. */
  forced: boolean;
  /**
   * Set when the supervisor did not answer within the timeout and cove
   * killed the engine's process (and the supervisor) itself: one line saying so.
   */
  unresponsive?: string;
  /** What stopped it: the guest's ACPI handler, its agent (guest-shutdown), or a power-off. */
  via?: "acpi" | "agent" | "power-off";
}

/** How long a supervisor may take to answer beyond the stop's own timeout. */
const STOP_ANSWER_GRACE_MS = 10_000;
/** How long a supervisor may take to answer a status probe before a stop. */
const PROBE_MS = 2000;

function signal(pid: number, sig: Deno.Signal): boolean {
  try {
    Deno.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

async function waitReleased(bundle: Bundle, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  // An ephemeral bundle is deleted on exit: a vanished lock is released.
  const held = () => bundle.holder().then((h) => h?.purpose === "run", () => false);
  while (await held()) {
    if (Date.now() > deadline) return false;
    await new Promise((res) => setTimeout(res, 50));
  }
  return true;
}

/**
 * Stops a VM whose supervisor does not answer: kills the process that runs
 * the guest (the pid the engine recorded in the bundle), then the
 * supervisor (the lock holder), and records the end.
 */
async function killUnresponsive(bundle: Bundle, waitedMs: number): Promise<StopResult> {
  const holder = await bundle.holder();
  const enginePid = await bundle.enginePid();
  const killed: string[] = [];
  if (enginePid && enginePid !== Deno.pid && signal(enginePid, "SIGKILL")) {
    killed.push(`its engine process (pid ${enginePid})`);
  }
  const sup = holder?.purpose === "run" ? holder.pid : undefined;
  if (sup && sup !== Deno.pid && sup !== enginePid && signal(sup, "SIGKILL")) {
    killed.push(`the supervisor (pid ${sup})`);
  }
  const line = `the supervisor of '${bundle.name}' did not answer within ${
    Math.round(waitedMs / 100) / 10
  }s; cove killed ${killed.length ? killed.join(" and ") : "nothing (no pid was recorded)"}`;
  if (!(await waitReleased(bundle, 10_000))) {
    throw new CoveError("vm.unresponsive", line + ", and the VM still holds its lock", {
      hint: `kill it by hand${sup ? ` (kill -9 ${sup})` : ""}; see ${bundle.supervisorLog}`,
      exit: ExitCode.State,
    });
  }
  const tail = await Deno.readFile(bundle.consoleLog).then(
    (b) => consoleTailLines(b.subarray(Math.max(0, b.length - 8192)), 8),
    () => [],
  );
  const message = "the supervisor did not answer: killed by cove stop";
  await writeLastExit(bundle, {
    time: new Date().toISOString(),
    reason: "crash",
    message,
    consoleTail: tail,
  }).catch(() => {});
  return {
    name: bundle.name,
    state: "stopped",
    exit: { reason: "crash", message },
    forced: true,
    unresponsive: line,
  };
}

/**
 * Stops a running VM and waits until its supervisor has let go of the
 * bundle. Bounded: a supervisor that does not answer within the timeout
 * (plus a short grace) has its engine process killed by cove, which says so
 * in {@link StopResult.unresponsive}.
 */
export async function stopVm(bundle: Bundle, opts: StopOptions = {}): Promise<StopResult> {
  await assertRunning(bundle, "stop");
  const timeout = opts.timeoutSeconds ?? DEFAULT_STOP_TIMEOUT;
  const socket = await controlSocketTarget(bundle);
  // A supervisor that accepts but never answers is found at once, not after the whole timeout.
  const probeMs = Math.min(PROBE_MS, Math.max(500, timeout * 1000));
  try {
    await httpRequest(socket, "GET", "/status", undefined, { timeoutMs: probeMs });
  } catch (e) {
    if (e instanceof HttpTimeout) return await killUnresponsive(bundle, probeMs);
    // Not listening yet (starting): the stop request below says what it says.
  }
  const answerMs = timeout * 1000 + STOP_ANSWER_GRACE_MS;
  let r: StopResult;
  try {
    r = await control<StopResult>(bundle, "POST", "/stop", { force: !!opts.force, timeout }, {
      timeoutMs: answerMs,
    });
  } catch (e) {
    if (e instanceof CoveError && e.cause instanceof HttpTimeout) {
      return await killUnresponsive(bundle, answerMs + probeMs);
    }
    throw e;
  }
  // The supervisor answers, then cleans up and releases the lock.
  await waitReleased(bundle, 10_000);
  return r;
}

/** Pauses a running VM. */
export async function pauseVm(bundle: Bundle): Promise<{ name: string; state: string }> {
  await assertRunning(bundle, "pause");
  return await control(bundle, "POST", "/pause");
}

/** Resumes a paused VM. */
export async function resumeVm(bundle: Bundle): Promise<{ name: string; state: string }> {
  await assertRunning(bundle, "resume");
  return await control(bundle, "POST", "/resume");
}

/** Suspends a running VM (saves its state and stops it) where the engine can. */
export async function suspendVm(bundle: Bundle): Promise<{ name: string; state: string }> {
  await assertRunning(bundle, "suspend");
  const r = await control<{ name: string; state: string }>(bundle, "POST", "/suspend", undefined, {
    timeoutMs: SNAPSHOT_TIMEOUT_MS,
  });
  // The supervisor answers, then ends and releases the lock.
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && (await bundle.isRunning().catch(() => false))) {
    await new Promise((res) => setTimeout(res, 50));
  }
  return { name: r.name, state: "suspended" };
}

/** How long a save of a running VM may take before the client gives up waiting (the save goes on). */
export const SNAPSHOT_TIMEOUT_MS = 15 * 60_000;

/** Asks the supervisor of a running VM to snapshot it (see core/snapshot). */
export async function snapshotRunningVm(
  bundle: Bundle,
  opts: { tag?: string; diskOnly?: boolean },
): Promise<SaveResult> {
  await assertRunning(bundle, "snapshot");
  return await control<SaveResult>(bundle, "POST", "/snapshot", {
    tag: opts.tag,
    diskOnly: !!opts.diskOnly,
  }, { timeoutMs: SNAPSHOT_TIMEOUT_MS });
}

/**
 * A consistent copy of a running VM's disks, for a clone or push of it: the
 * supervisor freezes the guest's file systems through its agent (when one
 * answers), pauses the VM, copies the disks copy-on-write where it can,
 * resumes it and thaws them; the copy lies hidden in the VM's snapshots
 * directory until {@link RunningCopy.release}.
 */
export async function copyRunningDisks(bundle: Bundle): Promise<RunningCopy> {
  await assertRunning(bundle, "copy");
  // diskOnly too: a supervisor of an older cove, which knows no copies, then takes no memory.
  const r = await control<SaveResult>(bundle, "POST", "/snapshot", { copy: true, diskOnly: true }, {
    timeoutMs: SNAPSHOT_TIMEOUT_MS,
  });
  if (!bundle.isSnapshotCopy(r.tag)) {
    // It made a snapshot for this request: not the user's, so it goes (a tag names no path).
    if (isTag(r.tag)) {
      await Deno.remove(bundle.snapshotDir(r.tag), { recursive: true }).catch(() => {});
    }
    throw new CoveError("vm.control", `the supervisor of '${bundle.name}' sent no copy`, {
      hint: "stop the VM and retry (an older cove may be running it)",
      exit: ExitCode.Failure,
    });
  }
  const dir = bundle.snapshotDir(r.tag);
  let meta: SnapshotMeta;
  try {
    meta = JSON.parse(await Deno.readTextFile(bundle.snapshotMetaPath(r.tag))) as SnapshotMeta;
  } catch (e) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }
  return {
    dir,
    frozen: r.frozen,
    disks: meta.disks.map((d) => ({
      index: d.index,
      path: d.path,
      file: d.file,
      method: d.method ?? "copy",
    })),
    firmware: (meta.firmware ?? []).map((f) => ({
      path: f.path,
      file: f.file,
      method: f.method ?? "copy",
    })),
    release: () => Deno.remove(dir, { recursive: true }).catch(() => {}),
  };
}

/** An attached console: bytes from the guest, and a way to type. */
export interface ConsoleStream {
  /** Guest output, starting with `replay` bytes of recent output. */
  readonly output: ReadableStream<Uint8Array>;
  write(data: Uint8Array): Promise<void>;
  close(): void;
}

/** Attaches to a running VM's serial console. */
export async function attachConsole(
  bundle: Bundle,
  opts: { replay?: number } = {},
): Promise<ConsoleStream> {
  await assertRunning(bundle, "attach to the console of");
  const socket = await controlSocketTarget(bundle);
  const { conn, first } = await httpUpgrade(
    socket,
    `/console?replay=${opts.replay ?? 0}`,
    CONSOLE_PROTOCOL,
  ).catch(
    (e) => {
      throw new CoveError(
        "vm.console",
        `cannot attach to the console of '${bundle.name}': ${e instanceof Error ? e.message : e}`,
        {
          exit: ExitCode.Failure,
        },
      );
    },
  );
  let closed = false;
  const output = new ReadableStream<Uint8Array>({
    start(c) {
      if (first.length) c.enqueue(first);
    },
    async pull(c) {
      const buf = new Uint8Array(16384);
      try {
        const n = await conn.read(buf);
        if (n === null) {
          c.close();
          return;
        }
        c.enqueue(buf.slice(0, n));
      } catch {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  });
  return {
    output,
    async write(data: Uint8Array) {
      let off = 0;
      while (off < data.length) off += await conn.write(data.subarray(off));
    },
    close() {
      if (closed) return;
      closed = true;
      try {
        conn.close();
      } catch { /* closed */ }
    },
  };
}

/** The active port forwards of a running VM (`cove port`), each with its origin. */
export async function vmForwards(
  bundle: Bundle,
): Promise<{ name: string; forwards: ActiveForward[] }> {
  await assertRunning(bundle, "list the forwards of");
  return await control(bundle, "GET", "/forwards");
}
