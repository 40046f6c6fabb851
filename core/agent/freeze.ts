/**
 * Consistent disks: freeze the guest's filesystems (guest-fsfreeze-freeze)
 * around a copy of its disks, and always thaw them afterwards, whether the
 * copy worked or not. The supervisor's disk copies (disk-only snapshots, and
 * the copies that clone and push take of a running VM) use
 * {@link agentSnapshotHooks}; {@link withFrozenGuest} is the same for a caller
 * that holds an agent itself.
 * @module
 */
import { CoveError, ExitCode } from "../errors.ts";
import { type GuestHooks, NOT_FROZEN } from "../snapshot/guest.ts";
import type { AgentTransport } from "./transport.ts";

/** How long a freeze may take (it flushes every filesystem first). */
export const FREEZE_TIMEOUT_MS = 60_000;

/** What the freeze did, for logs. */
export interface FreezeReport {
  /** Filesystems frozen. */
  frozen: number;
  /** Filesystems thawed afterwards. */
  thawed: number;
}

/**
 * Runs `fn` while the guest's filesystems are frozen; thaws them in every
 * case (a failed thaw is retried once, then reported after `fn`'s own error).
 */
export async function withFrozenGuest<T>(
  agent: AgentTransport,
  fn: () => Promise<T>,
  onReport?: (r: FreezeReport) => void,
): Promise<T> {
  let frozen: number;
  try {
    frozen = await agent.command<number>("guest-fsfreeze-freeze", undefined, {
      timeoutMs: FREEZE_TIMEOUT_MS,
    });
  } catch (e) {
    // A freeze that timed out may have frozen some filesystems: thaw whatever is frozen.
    await agent.command("guest-fsfreeze-thaw", undefined, { timeoutMs: FREEZE_TIMEOUT_MS })
      .catch(() => {});
    throw e;
  }
  let result: T;
  try {
    result = await fn();
  } finally {
    const thawed = await thaw(agent);
    onReport?.({ frozen, thawed });
  }
  return result;
}

async function thaw(agent: AgentTransport): Promise<number> {
  let last: unknown;
  for (let i = 0; i < 2; i++) {
    try {
      return await agent.command<number>("guest-fsfreeze-thaw", undefined, {
        timeoutMs: FREEZE_TIMEOUT_MS,
      });
    } catch (e) {
      last = e;
    }
  }
  throw new CoveError(
    "agent.thaw_failed",
    `the guest's filesystems may still be frozen: ${last instanceof Error ? last.message : last}`,
    { hint: "run 'cove agent NAME --thaw' or reboot the guest", exit: ExitCode.Failure },
  );
}

/**
 * The snapshot steps of a VM whose supervisor owns an agent channel: freeze
 * (when the agent answers a ping) returning a thaw that always thaws, and
 * the clock set after a memory restore. Neither throws; `note` hears what
 * could not be done.
 */
export function agentSnapshotHooks(
  agent: AgentTransport,
  setClock: () => Promise<unknown>,
  note: (line: string) => void,
): GuestHooks {
  const thaw = () =>
    agent.command("guest-fsfreeze-thaw", undefined, { timeoutMs: FREEZE_TIMEOUT_MS });
  return {
    present: true,
    async freeze() {
      try {
        await agent.command("guest-ping", undefined, { timeoutMs: 3_000 });
      } catch {
        note("the guest agent does not answer: the disks are copied without freezing");
        return NOT_FROZEN;
      }
      try {
        await agent.command("guest-fsfreeze-freeze", undefined, { timeoutMs: FREEZE_TIMEOUT_MS });
      } catch (e) {
        await thaw().catch(() => {}); // a freeze that failed half way may have frozen some
        note(`the guest's filesystems could not be frozen: ${e instanceof Error ? e.message : e}`);
        return NOT_FROZEN;
      }
      return {
        frozen: true,
        async thaw() {
          for (let i = 0; i < 2; i++) {
            try {
              await thaw();
              return;
            } catch { /* retried once */ }
          }
          note("the guest's filesystems could not be thawed: run 'cove agent NAME --thaw'");
        },
      };
    },
    async setClock() {
      await setClock().catch(() => {});
    },
  };
}
