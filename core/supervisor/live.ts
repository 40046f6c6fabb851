/**
 * Live state for `cove list` and `cove get`: a VM is running exactly when
 * its supervisor holds the bundle lock; then the supervisor's status says
 * more (paused, QEMU pid, forwarded ports), or, when it accepts the
 * connection and then says nothing, that it is `unresponsive`. A push holds
 * the lock too: the VM is `busy`. A stopped VM shows how its last run
 * ended, with an error quoting the last console lines after a crash. This
 * only reads: it asks who holds the lock without taking it, and never
 * cleans up (the supervisor that starts next does).
 * @module
 */
import type { VmState } from "../../engines/engine.ts";
import type { Bundle, BundleState } from "../store/bundle.ts";
import { httpRequest, HttpTimeout } from "./http.ts";
import { type LastExit, lastExitError, readLastExit } from "./lastexit.ts";
import { controlSocketTarget } from "./paths.ts";
import type { SupervisorStatus } from "./protocol.ts";

/** What live state can say beyond the engine's states. */
export type LiveState = VmState | "busy" | "suspended" | "unresponsive";

/** The live state of one VM. */
export interface LiveStatus {
  /** "stopped" when nobody holds the lock; otherwise the supervisor's state, or what holds it. */
  state: LiveState;
  /** The supervisor's (or busy command's) pid, from the lock. */
  pid?: number;
  /** What a busy VM is doing (push, clone, ...). */
  busy?: string;
  /** The supervisor's status, when it answered. */
  supervisor?: SupervisorStatus;
  /** How the last run ended (stopped VMs). */
  lastExit?: LastExit;
  /** One line: a crash of the last run, or a supervisor that does not answer. */
  error?: string;
}

/** The live state of a bundle. Never throws, and changes nothing. */
export async function liveStatus(
  bundle: Bundle,
  opts: { timeoutMs?: number; stored?: BundleState } = {},
): Promise<LiveStatus> {
  // A state just read from the disk (a list row's) need not be probed again.
  const st = opts.stored ?? await bundle.state();
  if (st.state === "busy") {
    return { state: "busy", pid: st.pid, busy: st.purpose };
  }
  if (st.state !== "running") {
    const lastExit = await readLastExit(bundle);
    return {
      state: st.state === "suspended" ? "suspended" : "stopped",
      lastExit,
      error: lastExitError(lastExit),
    };
  }
  const timeoutMs = opts.timeoutMs ?? 2000;
  try {
    const res = await httpRequest(await controlSocketTarget(bundle), "GET", "/status", undefined, {
      timeoutMs,
    });
    if (res.status === 200) {
      const s = res.json<SupervisorStatus>();
      return { state: s.state, pid: st.pid, supervisor: s };
    }
    return { state: "running", pid: st.pid, error: `the supervisor answered ${res.status}` };
  } catch (e) {
    if (e instanceof HttpTimeout) {
      return {
        state: "unresponsive",
        pid: st.pid,
        error: `the supervisor${st.pid ? ` (pid ${st.pid})` : ""} did not answer within ${
          timeoutMs / 1000
        }s`,
      };
    }
    // Locked but no socket yet: the supervisor is starting.
    return { state: "starting", pid: st.pid };
  }
}

/** A list/get row that live state can refine. */
export interface LiveRow {
  name: string;
  state: "running" | "stopped" | "broken" | "suspended" | LiveState;
  /** What a busy VM is doing. */
  busy?: string;
  error?: string;
}

/**
 * Overlays live state on a `cove list`/`cove get` row: the supervisor's
 * state (paused, starting, ...) for a running VM, the last run's crash for a
 * stopped one. Adds `live` with the supervisor's details unless
 * `details: false` (the stable shape of `cove list --format json`). Never throws.
 * A row just read as stopped or suspended is not probed again: pass a fresh
 * row (from `Store.list`, `Store.summary` or `getVm`).
 */
export async function withLive<T extends LiveRow>(
  bundle: Bundle,
  row: T,
  opts: { details?: boolean } = {},
): Promise<T & { live?: LiveStatus }> {
  if (row.state === "broken" && !row.error) return row;
  // A row read from the disk as stopped or suspended was probed a moment ago: reuse that probe
  // (a VM that starts in between is a race either way); running and busy ones need the pid.
  const stored = row.state === "stopped" || row.state === "suspended"
    ? { state: row.state }
    : undefined;
  const live = await liveStatus(bundle, { stored });
  const out: T & { live?: LiveStatus } = opts.details === false ? { ...row } : { ...row, live };
  // A suspended VM is not running: the supervisor's "stopped" must not hide that it is suspended.
  if (row.state !== "broken" && !(row.state === "suspended" && live.state === "stopped")) {
    out.state = live.state;
  }
  if (live.busy) out.busy = live.busy;
  if (live.error && !row.error) out.error = live.error;
  return out;
}
