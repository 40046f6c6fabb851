/**
 * The client side of the supervisor's `/agent` endpoints: an
 * {@link AgentTransport} over a running VM's control socket, and the agent
 * status. Every command reaches the agent through the supervisor, which
 * owns the channel and serialises commands.
 * @module
 */
import { control, notRunning } from "../supervisor/client.ts";
import type { Bundle } from "../store/bundle.ts";
import type { AgentStatus } from "./channel.ts";
import { QGA_COMMAND_TIMEOUT_MS, type QgaCommandOptions } from "./qga.ts";
import type { AgentTransport } from "./transport.ts";

export type { AgentStatus };

/** The body of `POST /agent/command`. */
export interface AgentCommandRequest {
  execute: string;
  arguments?: Record<string, unknown>;
  /** Milliseconds the supervisor waits for the agent's answer. */
  timeoutMs?: number;
  /** The command does not answer on success (guest-shutdown). */
  noReply?: boolean;
}

/** A transport through the supervisor of a running VM. */
export async function agentOf(bundle: Bundle): Promise<AgentTransport> {
  if (!(await bundle.isRunning())) throw notRunning(bundle, "reach the guest agent of");
  return {
    async command<T>(
      execute: string,
      args?: Record<string, unknown>,
      opts: QgaCommandOptions = {},
    ): Promise<T> {
      const timeoutMs = opts.timeoutMs ?? QGA_COMMAND_TIMEOUT_MS;
      const body: AgentCommandRequest = { execute, arguments: args, timeoutMs };
      if (opts.noReply) body.noReply = true;
      // The supervisor bounds the agent's answer; this bounds the supervisor (queueing included).
      const r = await control<{ return: T }>(bundle, "POST", "/agent/command", body, {
        timeoutMs: timeoutMs + 60_000,
      });
      return r.return;
    },
  };
}

/** Whether the agent of a running VM answers, its version and commands. */
export async function agentStatus(bundle: Bundle): Promise<AgentStatus> {
  if (!(await bundle.isRunning())) throw notRunning(bundle, "query the guest agent of");
  return await control<AgentStatus>(bundle, "GET", "/agent", undefined, { timeoutMs: 60_000 });
}
