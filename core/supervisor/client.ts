/**
 * The client side of the control socket: what `cove stop`, `pause`,
 * `resume`, `console`, `list` and `get` use to talk to a VM's supervisor.
 * Every call first checks the bundle lock, so "not running" is one clear
 * line, never a connection error.
 * @module
 */
import type { ExitInfo } from "../../engines/engine.ts";
import { CoveError, ExitCode } from "../errors.ts";
import type { Bundle } from "../store/bundle.ts";
import type { ActiveForward } from "../net/forwards.ts";
import { httpRequest, httpUpgrade } from "./http.ts";
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
}

/** Stops a running VM and waits until its supervisor has let go of the bundle. */
export async function stopVm(bundle: Bundle, opts: StopOptions = {}): Promise<StopResult> {
  await assertRunning(bundle, "stop");
  const timeout = opts.timeoutSeconds ?? DEFAULT_STOP_TIMEOUT;
  const r = await control<StopResult>(bundle, "POST", "/stop", { force: !!opts.force, timeout });
  // The supervisor answers, then cleans up and releases the lock.
  const deadline = Date.now() + 10_000;
  const running = () => bundle.isRunning().catch(() => false); // an ephemeral bundle is deleted on exit
  while (Date.now() < deadline && (await running())) {
    await new Promise((res) => setTimeout(res, 50));
  }
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
  return await control(bundle, "POST", "/suspend");
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
