/**
 * The events of a supervised run ({@link SupervisorEvent}) and the one line
 * each is told in: `supervisor.log` writes every event so, and `cove run`
 * shows the ones about a stop. Light on purpose: mod.ts exports it.
 * @module
 */
import type { VmState } from "../../engines/engine.ts";

/**
 * What happens in a supervised run, typed, so that a client (the CLI) can
 * choose what to show without reading log text. Each is also written to
 * `supervisor.log` as the line {@link describeEvent} gives.
 */
export type SupervisorEvent =
  | { type: "starting"; pid: number; name: string }
  | { type: "signal"; signal: string }
  | { type: "stopping"; force: boolean; timeoutSeconds?: number }
  | { type: "stop-failed"; message: string }
  | { type: "stop-timeout"; timeoutSeconds: number }
  | { type: "running"; info: Record<string, unknown> }
  | { type: "state"; state: VmState }
  | { type: "engine-log"; level: string; message: string }
  | { type: "stopped"; reason: string; message?: string }
  | { type: "failed"; message: string; code: string }
  | { type: "note"; message: string };

/** The supervisor.log line of an event. */
export function describeEvent(e: SupervisorEvent): string {
  switch (e.type) {
    case "starting":
      return `supervisor ${e.pid} starting ${e.name}`;
    case "signal":
      return `received ${e.signal}`;
    case "stopping":
      return e.force
        ? "stopping (power off)"
        : `stopping (ACPI power button; power off after ${e.timeoutSeconds}s)`;
    case "stop-failed":
      return `graceful stop failed (${e.message}); powering off`;
    case "stop-timeout":
      return `the guest did not power off within ${e.timeoutSeconds}s; powering off`;
    case "running":
      return `running (${JSON.stringify(e.info, (k, v) => (k === "argv" ? undefined : v))})`;
    case "state":
      return `state ${e.state}`;
    case "engine-log":
      return `${e.level}: ${e.message}`;
    case "stopped":
      return `stopped (${e.reason}${e.message ? `: ${e.message}` : ""})`;
    case "failed":
      return `failed: ${e.message}`;
    case "note":
      return e.message;
  }
}
