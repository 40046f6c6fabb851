/**
 * The guest agent channel as the supervisor owns it: one connection to the
 * engine's agent socket (QEMU's virtio-serial chardev, VZ's console port),
 * opened on first use and kept; every command goes through one queue, so
 * commands from concurrent `cove` invocations never interleave on the wire,
 * and each conversation starts in sync (guest-sync-delimited).
 *
 * The channel is cove's alone: once connected, the supervisor removes the
 * socket's name, so a second client that tries to open the channel is
 * refused (ENOENT) instead of queueing behind QEMU's single connection;
 * other programs reach the agent only through the control API
 * (docs/control-api.md, `/agent/...`). If that one connection is ever lost,
 * the agent stays unreachable until the VM restarts (one clear line).
 * @module
 */
import { CoveError, ExitCode } from "../errors.ts";
import { agentUnavailable, QGA_SYNC_TIMEOUT_MS, QgaClient, type QgaCommandOptions } from "./qga.ts";

/** What `GET /agent` reports. */
export interface AgentStatus {
  /** The spec's `agent`. */
  enabled: boolean;
  /** True when the agent answered the sync handshake just now. */
  answers: boolean;
  /** qemu-guest-agent's version (guest-info). */
  version?: string;
  /** The commands the agent has enabled. */
  commands?: string[];
  /** Why it does not answer. */
  reason?: string;
}

/** The supervisor's channel to one VM's guest agent. */
export class AgentChannel {
  #client: QgaClient | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;
  #connectedOnce = false;

  /**
   * @param vmName the VM, for messages
   * @param socket the agent socket; undefined when the spec turns the agent off
   */
  constructor(readonly vmName: string, readonly socket: string | undefined) {}

  /** True unless the spec says `agent: false`. */
  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** Runs `fn` with exclusive use of an in-sync client. */
  run<T>(fn: (c: QgaClient) => Promise<T>, syncTimeoutMs = QGA_SYNC_TIMEOUT_MS): Promise<T> {
    const next = this.#queue.then(async () => {
      const c = await this.#ready(syncTimeoutMs);
      return await fn(c);
    });
    this.#queue = next.catch(() => {});
    return next;
  }

  /** One command, serialised with every other. */
  command<T = unknown>(
    execute: string,
    args?: Record<string, unknown>,
    opts: QgaCommandOptions = {},
  ): Promise<T> {
    return this.run((c) => c.command<T>(execute, args, opts));
  }

  async #ready(syncTimeoutMs: number): Promise<QgaClient> {
    if (this.#closed) {
      throw new CoveError("agent.closed", `the VM '${this.vmName}' is stopping`, {
        exit: ExitCode.State,
      });
    }
    if (this.socket === undefined) {
      throw new CoveError(
        "agent.disabled",
        `the guest agent of '${this.vmName}' is turned off (agent: false in its spec)`,
        {
          hint:
            `set 'agent: true' with 'cove set ${this.vmName}' or edit cove.yaml, restart the VM, and install qemu-guest-agent in the guest`,
          exit: ExitCode.Host,
        },
      );
    }
    if (!this.#client?.open) {
      await this.#client?.close();
      this.#client = undefined;
      try {
        if (this.#connectedOnce) {
          throw new Error("the connection was lost; restart the VM to reopen it");
        }
        this.#client = await QgaClient.connect(this.socket);
        this.#connectedOnce = true;
        // Nobody else opens the channel: take its name away.
        await Deno.remove(this.socket).catch(() => {});
      } catch (e) {
        throw agentUnavailable(
          this.vmName,
          `its channel is not connected (${e instanceof Error ? e.message : e})`,
        );
      }
    }
    if (!this.#client.inSync && !(await this.#client.sync(syncTimeoutMs))) {
      throw agentUnavailable(
        this.vmName,
        `no answer within ${Math.round(syncTimeoutMs / 1000)}s`,
      );
    }
    return this.#client;
  }

  /** Whether the agent answers, its version and commands. */
  async status(): Promise<AgentStatus> {
    if (!this.enabled) return { enabled: false, answers: false, reason: "agent: false" };
    try {
      const info = await this.command<
        { version: string; supported_commands: { name: string; enabled: boolean }[] }
      >("guest-info", undefined, { timeoutMs: 10_000 });
      return {
        enabled: true,
        answers: true,
        version: info.version,
        commands: info.supported_commands.filter((c) => c.enabled).map((c) => c.name).sort(),
      };
    } catch (e) {
      return {
        enabled: true,
        answers: false,
        reason: e instanceof CoveError ? e.message : String(e),
      };
    }
  }

  /** Closes the connection; later commands fail at once. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#client?.close();
    this.#client = undefined;
  }
}
