/**
 * Machine state to and from a file with QEMU's migration stream, over QMP:
 * `migrate` to `file:PATH` (QEMU 8.2+) or `exec:cat > PATH` (older QEMU,
 * e.g. Debian 12's 7.2) on a paused VM, and `migrate-incoming` from the
 * same URI on a QEMU started with `-incoming defer`. Every wait is bounded.
 * @module
 */
import { CoveError, ExitCode } from "../../core/errors.ts";
import { type Qmp, QmpError } from "./qmp.ts";

/** How long a state save or load may take at most. */
export const MIGRATE_TIMEOUT_MS = 10 * 60_000;

/** QEMU's version as reported over QMP. */
export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

/** The running QEMU's version. */
export async function qemuVersion(qmp: Qmp): Promise<QemuVersion> {
  const v = await qmp.execute<{ qemu: QemuVersion }>("query-version", undefined, 5000);
  return v.qemu;
}

/** True when QEMU has the `file:` migration URI (added in QEMU 8.2). */
export function hasFileUri(v: QemuVersion): boolean {
  return v.major > 8 || (v.major === 8 && v.minor >= 2);
}

/** Quotes a path for the `/bin/sh -c` that QEMU's `exec:` URI runs. */
export function shellQuote(path: string): string {
  if (/[\0\n]/.test(path)) {
    throw new CoveError("qemu.state_path", `cannot save machine state to '${path}'`, {
      hint: "use a COVE_HOME whose path has no newline",
      exit: ExitCode.Usage,
    });
  }
  return `'${path.replaceAll("'", `'\\''`)}'`;
}

/** The migration URI that writes (`out`) or reads (`in`) `path`. */
export function migrationUri(v: QemuVersion, path: string, dir: "out" | "in"): string {
  if (hasFileUri(v)) return `file:${path}`;
  return dir === "out" ? `exec:cat > ${shellQuote(path)}` : `exec:cat ${shellQuote(path)}`;
}

interface MigrateStatus {
  status?: string;
  "error-desc"?: string;
}

function stateError(what: string, why: string): CoveError {
  return new CoveError("qemu.state", `${what} failed: ${why}`, {
    hint: "check free space in the VM's directory; see supervisor.log",
    exit: ExitCode.Failure,
  });
}

/**
 * Waits for the migration to end: woken by QEMU's MIGRATION events (the
 * `events` capability), with a slow poll of `query-migrate` as a safety net.
 * Resolves on `completed` (the event's or the query's); rejects with the
 * reason on `failed`/`cancelled`, when QEMU exits, or after
 * {@link MIGRATE_TIMEOUT_MS}.
 */
async function migrationDone(qmp: Qmp, what: string, started: () => Promise<void>): Promise<void> {
  // An event may come while a query is on its way: remember it, so the loop does not sleep past it.
  let signalled = false;
  // QEMU sends `completed` as it sets the status that query-migrate would report next (incoming:
  // once the state is loaded and the run state set): that ends the wait without one more query. A
  // failure is still read from query-migrate, which says why.
  let completed = false;
  let wake: (() => void) | undefined;
  const off = qmp.onEvent((e) => {
    if (e.event !== "MIGRATION") return;
    if (e.data?.status === "completed") completed = true;
    signalled = true;
    wake?.();
  });
  try {
    await qmp.execute("migrate-set-capabilities", {
      capabilities: [{ capability: "events", state: true }],
    }, 5000).catch(() => {});
    await started();
    const deadline = Date.now() + MIGRATE_TIMEOUT_MS;
    while (true) {
      if (completed) return;
      let s: MigrateStatus;
      try {
        s = await qmp.execute<MigrateStatus>("query-migrate", undefined, 5000);
      } catch (e) {
        if (e instanceof QmpError && e.cls === "Closed") {
          throw stateError(what, "QEMU exited (is the state from another spec?)");
        }
        throw e;
      }
      if (s.status === "completed") return;
      if (s.status === "failed" || s.status === "cancelled") {
        throw stateError(what, s["error-desc"] ?? s.status);
      }
      if (Date.now() > deadline) {
        await qmp.execute("migrate_cancel", undefined, 5000).catch(() => {});
        throw stateError(what, `not done within ${MIGRATE_TIMEOUT_MS / 1000}s`);
      }
      if (!signalled) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((r) => {
          wake = r;
          timer = setTimeout(r, 100);
        });
        clearTimeout(timer);
        wake = undefined;
      }
      signalled = false;
    }
  } finally {
    off();
  }
}

/** How long QEMU may stay in `finish-migrate` after a save completed. */
const FINISH_MIGRATE_TIMEOUT_MS = 10_000;

/**
 * Waits until QEMU has left the `finish-migrate` run state after a save
 * completed. QEMU reports `completed` (event and query-migrate alike) a
 * moment before its migration thread sets `postmigrate`, and a `cont` in
 * between fails with "Migration is not finalized yet" (seen in
 * bench/snapshot: the save failed and the guest was resumed by its retry).
 */
async function leaveFinishMigrate(qmp: Qmp, what: string): Promise<void> {
  const deadline = Date.now() + FINISH_MIGRATE_TIMEOUT_MS;
  while (true) {
    let s: { status?: string };
    try {
      s = await qmp.execute<{ status?: string }>("query-status", undefined, 5000);
    } catch (e) {
      if (e instanceof QmpError && e.cls === "Closed") throw stateError(what, "QEMU exited");
      throw e;
    }
    if (s.status !== "finish-migrate") return;
    if (Date.now() > deadline) {
      throw stateError(
        what,
        `QEMU stayed in finish-migrate for ${FINISH_MIGRATE_TIMEOUT_MS / 1000}s`,
      );
    }
    await new Promise((r) => setTimeout(r, 1));
  }
}

/**
 * Writes the machine state of a paused VM to `path` and waits until the
 * stream is complete and QEMU has finished the migration. The VM stays
 * paused (QEMU's `postmigrate`), and can be resumed with `cont` at once.
 */
export async function saveStateTo(qmp: Qmp, path: string, version?: QemuVersion): Promise<void> {
  const v = version ?? await qemuVersion(qmp);
  // Private from the start: the shell of `exec:` would create it with the umask's mode.
  // (Callers pass a path that does not exist yet: a staging directory, a removed temporary.)
  const f = await Deno.open(path, { write: true, create: true, truncate: true, mode: 0o600 });
  f.close();
  // No throttle: the guest is paused, so the write should run at disk speed.
  await qmp.execute("migrate-set-parameters", { "max-bandwidth": 2 ** 40 }, 5000).catch(() => {});
  await migrationDone(qmp, "saving the machine state", async () => {
    try {
      await qmp.execute("migrate", { uri: migrationUri(v, path, "out") }, 5000);
    } catch (e) {
      throw stateError("saving the machine state", e instanceof Error ? e.message : String(e));
    }
  });
  await leaveFinishMigrate(qmp, "saving the machine state");
}

/**
 * Loads machine state from `path` into a QEMU started with `-incoming
 * defer` and waits until it is loaded (the VM is then paused, as it was
 * when saved). A QEMU that cannot load it exits.
 */
export async function loadStateFrom(qmp: Qmp, path: string, version?: QemuVersion): Promise<void> {
  const v = version ?? await qemuVersion(qmp);
  await migrationDone(qmp, "loading the machine state", async () => {
    try {
      await qmp.execute("migrate-incoming", { uri: migrationUri(v, path, "in") }, 5000);
    } catch (e) {
      throw stateError("loading the machine state", e instanceof Error ? e.message : String(e));
    }
  });
}
