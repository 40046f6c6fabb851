/**
 * Host slots for `cove job run`: a host-wide limit on how many job VMs run
 * at once, kept in a lock directory (`$COVE_HOME/job-slots/KIND/`). A job
 * holds a slot by holding the record lock of one `slot-N` file (OFD locks
 * on Linux, lockf on macOS, see ffi/libc.ts), so a killed job frees its
 * slot with its death. Jobs beyond the limit queue: each holds the lock of
 * a ticket file in `queue/`, named so tickets sort by arrival; its place is
 * the number of live tickets before it, and it takes a slot only when as
 * many slots are free as its place (first come, first served). Tickets
 * nobody holds (a killed waiter's) are removed by whoever sees them.
 *
 * The limit is `COVE_JOB_SLOTS`, else the host's CPU count for Linux
 * guests and 2 for macOS guests (Apple's limit of two macOS VMs per host).
 * @module
 */
import { join } from "node:path";
import { lockClose, lockHeld, lockOpen, lockTry, lockWrite } from "../../ffi/libc.ts";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import { parseFlag } from "../flags.ts";
import { formatDuration } from "../units.ts";

/** Which pool a guest uses: macOS guests have Apple's limit. */
export type SlotKind = "linux" | "macos";

/** The slot kinds, in the order `cove job slots` shows them. */
export const SLOT_KINDS: readonly SlotKind[] = ["linux", "macos"];

/** The pool's size: `COVE_JOB_SLOTS`, else the CPU count (Linux guests) or 2 (macOS guests). */
export function slotCount(
  kind: SlotKind,
  env: string | undefined = Deno.env.get("COVE_JOB_SLOTS"),
): number {
  if (env !== undefined && env !== "") {
    try {
      return parseFlag("COVE_JOB_SLOTS", env.trim());
    } catch {
      throw new CoveError(
        "job.slots",
        `COVE_JOB_SLOTS: '${env}' is not a whole number from 1 to 1024`,
        {
          hint: "set it to how many job VMs this host runs at once, or unset it for the default",
          exit: ExitCode.JobSystem,
        },
      );
    }
  }
  return kind === "macos" ? 2 : Math.max(1, navigator.hardwareConcurrency || 1);
}

/** The lock directory of a pool. */
export function slotDir(home: string, kind: SlotKind): string {
  return join(home, "job-slots", kind);
}

/** Who holds a slot (what its holder wrote into the slot file). */
export interface SlotHolder {
  slot: number;
  pid?: number;
  vm?: string;
  since?: string;
}

/** What `cove job slots` reports for one pool. */
export interface SlotReport {
  kind: SlotKind;
  total: number;
  used: number;
  free: number;
  /** Jobs waiting for a slot. */
  waiting: number;
  holders: SlotHolder[];
}

/** A held slot; release it when the job's VM is gone (a dead process releases it too). */
export interface SlotLease {
  kind: SlotKind;
  slot: number;
  /** How long the job waited in the queue (ms). */
  waitedMs: number;
  release(): void;
}

function isHeld(path: string): boolean {
  let fd: number;
  try {
    fd = lockOpen(path, false);
  } catch {
    return false; // no such file: nobody holds it
  }
  try {
    return lockHeld(fd);
  } finally {
    lockClose(fd);
  }
}

async function ensureDirs(dir: string): Promise<void> {
  await Deno.mkdir(join(dir, "queue"), { recursive: true, mode: 0o700 });
}

/** The live tickets of the queue, oldest first; removes the dead ones. */
async function liveTickets(dir: string, mine?: string): Promise<string[]> {
  const qdir = join(dir, "queue");
  let names: string[];
  try {
    names = (await Array.fromAsync(Deno.readDir(qdir))).filter((e) => e.isFile).map((e) => e.name);
  } catch {
    return [];
  }
  names.sort();
  const live: string[] = [];
  for (const n of names) {
    if (n === mine || isHeld(join(qdir, n))) live.push(n);
    else await Deno.remove(join(qdir, n)).catch(() => {});
  }
  return live;
}

/** Free and used slots of a pool, read without taking anything. */
export async function slotReport(home: string, kind: SlotKind): Promise<SlotReport> {
  const total = slotCount(kind);
  const dir = slotDir(home, kind);
  const holders: SlotHolder[] = [];
  for (let i = 0; i < total; i++) {
    const p = join(dir, `slot-${i}`);
    if (!isHeld(p)) continue;
    let h: SlotHolder = { slot: i };
    try {
      const v = JSON.parse(await Deno.readTextFile(p)) as Omit<SlotHolder, "slot">;
      h = { slot: i, pid: v.pid, vm: v.vm, since: v.since };
    } catch { /* locked an instant ago */ }
    holders.push(h);
  }
  const waiting = (await liveTickets(dir)).length;
  return { kind, total, used: holders.length, free: total - holders.length, waiting, holders };
}

/** Options of {@link acquireSlot}. */
export interface AcquireOptions {
  /** The job's VM name, written into the slot file. */
  vm: string;
  /** Give up after this long (ms); default: wait as long as it takes. */
  queueTimeoutMs?: number;
  /** Called when the job's place in the queue changes (1 = next). */
  onQueue?: (position: number, total: number) => void;
  /** Stops waiting (a signal). */
  signal?: AbortSignal;
  /** How often to look again (ms). */
  pollMs?: number;
}

/**
 * Takes a slot of the pool, waiting in the queue while none is free.
 *
 * @throws CoveError `job.queue_timeout` (exit 205) after `queueTimeoutMs`.
 */
export async function acquireSlot(
  home: string,
  kind: SlotKind,
  opts: AcquireOptions,
): Promise<SlotLease> {
  const total = slotCount(kind);
  const dir = slotDir(home, kind);
  const started = Date.now();
  try {
    await ensureDirs(dir);
  } catch (e) {
    throw toCoveError(e, `the job slot directory ${dir}`);
  }
  const take = (): SlotLease | null => {
    for (let i = 0; i < total; i++) {
      const p = join(dir, `slot-${i}`);
      const fd = lockOpen(p);
      if (!lockTry(fd)) {
        lockClose(fd);
        continue;
      }
      lockWrite(
        fd,
        JSON.stringify({ pid: Deno.pid, vm: opts.vm, since: new Date().toISOString() }) + "\n",
      );
      let held = true;
      return {
        kind,
        slot: i,
        waitedMs: Date.now() - started,
        release() {
          if (!held) return;
          held = false;
          try {
            lockWrite(fd, "");
          } catch { /* best effort */ }
          lockClose(fd);
        },
      };
    }
    return null;
  };
  // Nobody waiting: take a free slot at once.
  if ((await liveTickets(dir)).length === 0) {
    const lease = take();
    if (lease) return lease;
  }
  // Queue: a ticket that sorts by arrival, locked while we wait.
  const ticket = `${String(Date.now()).padStart(15, "0")}-${String(Deno.pid).padStart(8, "0")}-${
    crypto.randomUUID().slice(0, 8)
  }`;
  const tpath = join(dir, "queue", ticket);
  const tfd = lockOpen(tpath);
  lockTry(tfd);
  let lastPos = -1;
  try {
    while (true) {
      if (opts.signal?.aborted) {
        throw new CoveError(
          "job.interrupted",
          "the job was interrupted while it waited for a slot",
          {
            exit: ExitCode.JobInterrupted,
          },
        );
      }
      const live = await liveTickets(dir, ticket);
      const pos = live.indexOf(ticket) + 1;
      let free = 0;
      for (let i = 0; i < total; i++) if (!isHeld(join(dir, `slot-${i}`))) free++;
      if (pos <= free) {
        const lease = take();
        if (lease) return lease;
      }
      if (pos !== lastPos) {
        lastPos = pos;
        opts.onQueue?.(pos, total);
      }
      if (opts.queueTimeoutMs !== undefined && Date.now() - started >= opts.queueTimeoutMs) {
        throw new CoveError(
          "job.queue_timeout",
          `no job slot freed within ${
            formatDuration(opts.queueTimeoutMs)
          } (all ${total} ${kind} slots are in use)`,
          {
            hint:
              "wait longer with --queue-timeout, or raise COVE_JOB_SLOTS if the host can take more",
            exit: ExitCode.JobQueueTimeout,
          },
        );
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, opts.pollMs ?? 250);
        opts.signal?.addEventListener("abort", () => {
          clearTimeout(t);
          r();
        }, { once: true });
      });
    }
  } finally {
    lockClose(tfd);
    await Deno.remove(tpath).catch(() => {});
  }
}
