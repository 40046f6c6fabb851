/**
 * The snapshot commands as a library API (`cove snapshot save|ls|restore|rm`):
 * a stopped VM is snapshotted and restored here, under its bundle lock; a
 * running VM is snapshotted by its supervisor, through the control socket,
 * because the supervisor owns the engine handle.
 * @module
 */
import { resolveEngineId } from "../../engines/select.ts";
import { CoveError, ExitCode } from "../errors.ts";
import { detectHost } from "../host.ts";
import type { Store } from "../store/store.ts";
import { snapshotRunningVm, stopVm } from "../supervisor/client.ts";
import { startDetached } from "../supervisor/start.ts";
import {
  listSnapshots,
  readMeta,
  removeSnapshots,
  type RestoreResult,
  restoreStopped,
  type SaveResult,
  saveStopped,
  type SnapshotInfo,
  validateTag,
} from "./snapshot.ts";

export {
  defaultTag,
  type RestoreResult,
  type SaveResult,
  type SnapshotInfo,
  type SnapshotMeta,
  TAG_RULE,
  validateTag,
} from "./snapshot.ts";
export { type GuestHooks, NO_AGENT } from "./guest.ts";

/** Options of {@link saveSnapshot}. */
export interface SaveSnapshotOptions {
  tag?: string;
  /** Disks only, even of a running VM. */
  diskOnly?: boolean;
}

/** Snapshots a VM: its disks when stopped; disks and memory (unless diskOnly) when running. */
export async function saveSnapshot(
  store: Store,
  name: string,
  opts: SaveSnapshotOptions = {},
): Promise<SaveResult> {
  const b = await store.get(name);
  if (opts.tag !== undefined) validateTag(opts.tag);
  // One probe first: a running VM's supervisor holds the lock, and waiting for it would only add time.
  if (await b.isRunning()) return await snapshotRunningVm(b, opts);
  const lock = await b.tryLock({ purpose: "change" });
  if (!lock) return await snapshotRunningVm(b, opts);
  try {
    const spec = await b.readSpecSummarized();
    return await saveStopped(b, spec, resolveEngineId(spec, detectHost()), { tag: opts.tag });
  } finally {
    lock.release();
  }
}

/** A VM's snapshots, oldest first. */
export async function listVmSnapshots(store: Store, name: string): Promise<SnapshotInfo[]> {
  return await listSnapshots(await store.get(name));
}

/** Options of {@link restoreSnapshot}. */
export interface RestoreSnapshotOptions {
  /** Stop a running VM first (power off). */
  force?: boolean;
  /** Restore the disks only. */
  diskOnly?: boolean;
  /** How long a resumed VM may take to run again (ms). */
  timeoutMs?: number;
}

/** What a restore did; `started` when the VM runs again from the snapshot's memory. */
export interface RestoreSnapshotResult extends RestoreResult {
  started: boolean;
}

/**
 * Restores a snapshot: the disks, and with memory the VM runs on from the
 * moment it was saved. A running VM is refused (exit 4) unless `force`.
 */
export async function restoreSnapshot(
  store: Store,
  name: string,
  tag: string,
  opts: RestoreSnapshotOptions = {},
): Promise<RestoreSnapshotResult> {
  const b = await store.get(name);
  await readMeta(b, tag); // a missing tag is refused before anything stops
  if (await b.isRunning()) {
    if (!opts.force) {
      throw new CoveError("vm.running", `cannot restore '${name}': it is running`, {
        hint: `stop it first with 'cove stop ${name}', or pass --force to power it off`,
        exit: ExitCode.State,
      });
    }
    await stopVm(b, { force: true });
  }
  const lock = await b.tryLock({ purpose: "change" });
  if (!lock) {
    throw new CoveError("vm.running", `cannot restore '${name}': it is running`, {
      hint: `stop it first with 'cove stop ${name}'`,
      exit: ExitCode.State,
    });
  }
  let r: RestoreResult;
  try {
    // From the summary when it describes cove.yaml as it is (see Bundle.readSpecSummarized).
    const spec = await b.readSpecSummarized();
    r = await restoreStopped(b, tag, spec, resolveEngineId(spec, detectHost()), {
      diskOnly: opts.diskOnly,
    });
  } finally {
    lock.release();
  }
  if (!r.memory) return { ...r, started: false };
  await startDetached(store, name, { timeoutMs: opts.timeoutMs ?? 120_000 });
  return { ...r, started: true };
}

/** Removes snapshots of a VM; every tag must exist. */
export async function removeVmSnapshots(
  store: Store,
  name: string,
  tags: string[],
): Promise<string[]> {
  return await removeSnapshots(await store.get(name), tags);
}
