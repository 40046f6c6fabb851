/**
 * Live state for `cove list` and `cove get`: a VM is running exactly when
 * its supervisor holds the bundle lock; then the supervisor's status says
 * more (paused, QEMU pid, forwarded ports). A stopped VM shows how its last
 * run ended, with an error quoting the last console lines after a crash.
 * @module
 */
import type { VmState } from "../../engines/engine.ts";
import type { Bundle } from "../store/bundle.ts";
import { httpRequest } from "./http.ts";
import { type LastExit, lastExitError, readLastExit } from "./lastexit.ts";
import { controlSocketTarget } from "./paths.ts";
import type { SupervisorStatus } from "./protocol.ts";

/** The live state of one VM. */
export interface LiveStatus {
  /** "stopped" when no supervisor holds the lock; otherwise the supervisor's state. */
  state: VmState;
  /** The supervisor's status, when it answered. */
  supervisor?: SupervisorStatus;
  /** How the last run ended (stopped VMs). */
  lastExit?: LastExit;
  /** One line: a crash of the last run, or a supervisor that does not answer. */
  error?: string;
}

/** Removes a stale control socket and runtime directory (and their short targets). Hold the lock. */
export async function removeStaleRuntime(bundle: Bundle): Promise<void> {
  for (const p of [bundle.controlSocket, bundle.runtimeDir]) {
    let st: Deno.FileInfo;
    try {
      st = await Deno.lstat(p);
    } catch {
      continue;
    }
    if (st.isSymlink) {
      const target = await Deno.readLink(p).catch(() => undefined);
      if (target) await Deno.remove(target, { recursive: true }).catch(() => {});
    }
    await Deno.remove(p, { recursive: true }).catch(() => {});
  }
}

/** The live state of a bundle. Never throws. */
export async function liveStatus(
  bundle: Bundle,
  opts: { timeoutMs?: number } = {},
): Promise<LiveStatus> {
  let running = false;
  try {
    const lock = await bundle.tryLock();
    if (lock) {
      // Nobody runs it: sweep what a killed supervisor left (only while holding the lock).
      try {
        await removeStaleRuntime(bundle);
      } finally {
        lock.release();
      }
    } else running = true;
  } catch {
    running = false;
  }
  if (!running) {
    const lastExit = await readLastExit(bundle);
    return { state: "stopped", lastExit, error: lastExitError(lastExit) };
  }
  try {
    const res = await httpRequest(await controlSocketTarget(bundle), "GET", "/status", undefined, {
      timeoutMs: opts.timeoutMs ?? 2000,
    });
    if (res.status === 200) {
      const s = res.json<SupervisorStatus>();
      return { state: s.state, supervisor: s };
    }
    return { state: "running", error: `the supervisor answered ${res.status}` };
  } catch {
    // Locked but no socket yet: the supervisor is starting (or stuck).
    return { state: "starting" };
  }
}

/** A list/get row that live state can refine. */
export interface LiveRow {
  name: string;
  state: "running" | "stopped" | "broken" | "suspended" | VmState;
  error?: string;
}

/**
 * Overlays live state on a `cove list`/`cove get` row: the supervisor's
 * state (paused, starting, ...) for a running VM, the last run's crash for a
 * stopped one. Adds `live` with the supervisor's details unless
 * `details: false` (the stable shape of `cove list --format json`). Never throws.
 */
export async function withLive<T extends LiveRow>(
  bundle: Bundle,
  row: T,
  opts: { details?: boolean } = {},
): Promise<T & { live?: LiveStatus }> {
  if (row.state === "broken" && !row.error) return row;
  const live = await liveStatus(bundle);
  const out: T & { live?: LiveStatus } = opts.details === false ? { ...row } : { ...row, live };
  // A suspended VM is not running: the supervisor's "stopped" must not hide that it is suspended.
  if (row.state !== "broken" && !(row.state === "suspended" && live.state === "stopped")) {
    out.state = live.state;
  }
  if (live.error && !row.error) out.error = live.error;
  return out;
}
