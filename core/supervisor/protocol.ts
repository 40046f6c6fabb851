/**
 * The shared vocabulary of the control socket (docs/control-api.md): the
 * console stream's protocol name, the default stop timeout, and the status
 * shape. Kept apart so that clients load nothing of the supervisor.
 * @module
 */
import type { VmState } from "../../engines/engine.ts";
import type { ActiveForward } from "../net/forwards.ts";

/** The protocol name of the console byte stream (`Upgrade: cove-console`). */
export const CONSOLE_PROTOCOL = "cove-console";
/** Default seconds a graceful stop may take before the VM is powered off. */
export const DEFAULT_STOP_TIMEOUT = 30;
/**
 * What the detached supervisor of `cove start` writes on its stderr once
 * the VM runs: an empty line, which wakes `startDetached` to ask for the
 * status at once rather than at its next poll, and which the reading of a
 * failure skips (it reads non-empty lines only).
 */
export const READY_NUDGE = "\n";

/** What `GET /status` returns. */
export interface SupervisorStatus {
  name: string;
  state: VmState;
  engine: string;
  /** The supervisor's process id. */
  pid: number;
  startedAt: string;
  consoleLog: string;
  /** Engine facts: QEMU pid, accelerator, forwarded ports, ... */
  info: Record<string, unknown>;
  /** Every active port forward, with its origin (also `GET /forwards`). */
  forwards?: ActiveForward[];
  /** The cove networks the VM joined, with its address on each (ADDR/PREFIX). */
  networks?: { nic: number; network: string; address: string }[];
}
