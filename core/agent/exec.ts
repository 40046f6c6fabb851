/**
 * Running a command in the guest through the agent: guest-exec with
 * captured output and stdin as `input-data`, then guest-exec-status until
 * the process ends. The exit code is the guest command's; a command killed
 * by signal N gives 128+N, as shells do.
 *
 * Bounds (documented in the README): stdin up to {@link MAX_AGENT_STDIN};
 * stdout and stderr each up to {@link MAX_AGENT_OUTPUT}, the agent's own
 * capture limit; beyond it the output is cut and cove says so in one line.
 * @module
 */
import { Buffer } from "node:buffer";
import { CoveError, ExitCode } from "../errors.ts";
import type { AgentTransport } from "./transport.ts";

/** qemu-guest-agent keeps at most 16 MiB of each output stream. */
export const MAX_AGENT_OUTPUT = 16 * 2 ** 20;
/** The largest stdin cove passes to a guest command (it travels in one control request). */
export const MAX_AGENT_STDIN = 512 * 1024;

/** Options of {@link agentExec}. */
export interface AgentExecOptions {
  /** Bytes for the command's stdin. */
  stdin?: Uint8Array;
  /** `NAME=VALUE` entries for the environment. */
  env?: string[];
  /** Seconds the command may run; then it is killed and cove says so. */
  timeoutSeconds?: number;
}

/** How a guest command ended. */
export interface AgentExecResult {
  /** The exit code cove exits with: the command's, or 128+N for signal N. */
  code: number;
  /** Set when a signal ended the command. */
  signal?: number;
  stdout: Uint8Array;
  stderr: Uint8Array;
  /** True when a stream exceeded {@link MAX_AGENT_OUTPUT} and was cut. */
  truncated: boolean;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  "out-data"?: string;
  "err-data"?: string;
  "out-truncated"?: boolean;
  "err-truncated"?: boolean;
}

/** Decodes base64 text to bytes. */
export function fromBase64(s: string | undefined): Uint8Array {
  return s ? new Uint8Array(Buffer.from(s, "base64")) : new Uint8Array(0);
}

/** Encodes bytes as base64 text. */
export function toBase64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");
}

/** Starts a guest process; returns its pid. */
export async function agentSpawn(
  agent: AgentTransport,
  argv: string[],
  opts: { stdin?: Uint8Array; env?: string[]; capture?: boolean } = {},
): Promise<number> {
  if (argv.length === 0) {
    throw new CoveError("agent.exec_usage", "no command to run in the guest", {
      hint: "give it after --, e.g. cove exec NAME -- uname -a",
      exit: ExitCode.Usage,
    });
  }
  const args: Record<string, unknown> = {
    path: argv[0],
    arg: argv.slice(1),
    "capture-output": opts.capture ?? true,
  };
  if (opts.env?.length) args.env = opts.env;
  if (opts.stdin?.length) args["input-data"] = toBase64(opts.stdin);
  const r = await agent.command<{ pid: number }>("guest-exec", args);
  return r.pid;
}

/**
 * Runs `argv` in the guest and waits for it.
 * @returns its exit code (128+N for signal N) and its output
 * @throws CoveError when the agent fails, or the timeout passes (the guest
 *   process is then killed)
 */
export async function agentExec(
  agent: AgentTransport,
  argv: string[],
  opts: AgentExecOptions = {},
): Promise<AgentExecResult> {
  if (opts.stdin && opts.stdin.length > MAX_AGENT_STDIN) {
    throw new CoveError(
      "agent.stdin_too_large",
      `stdin for a command over the guest agent is limited to ${
        MAX_AGENT_STDIN / 1024
      } KiB (got ${opts.stdin.length} bytes)`,
      { hint: "copy the data in with 'cove cp' and redirect from the file", exit: ExitCode.Usage },
    );
  }
  const pid = await agentSpawn(agent, argv, { stdin: opts.stdin, env: opts.env });
  const deadline = opts.timeoutSeconds ? Date.now() + opts.timeoutSeconds * 1000 : Infinity;
  let wait = 10;
  while (true) {
    const st = await agent.command<ExecStatus>("guest-exec-status", { pid });
    if (st.exited) {
      const signal = st.signal;
      return {
        code: signal !== undefined && signal > 0 ? 128 + signal : st.exitcode ?? 0,
        signal: signal !== undefined && signal > 0 ? signal : undefined,
        stdout: fromBase64(st["out-data"]),
        stderr: fromBase64(st["err-data"]),
        truncated: !!(st["out-truncated"] || st["err-truncated"]),
      };
    }
    if (Date.now() >= deadline) {
      await agent.command("guest-exec", { path: "kill", arg: ["-KILL", String(pid)] })
        .catch(() => {});
      throw new CoveError(
        "agent.exec_timeout",
        `'${argv.join(" ")}' did not finish within ${opts.timeoutSeconds}s; it was killed`,
        { hint: "raise --timeout", exit: ExitCode.Failure },
      );
    }
    await new Promise((r) => setTimeout(r, Math.min(wait, Math.max(0, deadline - Date.now()))));
    wait = Math.min(250, wait * 2);
  }
}

/** The one line for output beyond the bound. */
export function truncatedError(argv: string[]): CoveError {
  return new CoveError(
    "agent.output_truncated",
    `the output of '${argv.join(" ")}' exceeded ${
      MAX_AGENT_OUTPUT / 2 ** 20
    } MiB, the guest agent's limit, and was cut`,
    { hint: "redirect it to a file in the guest and copy that with 'cove cp'" },
  );
}

/**
 * Runs a helper command in the guest and returns its stdout as text; a
 * non-zero exit becomes a CoveError with the command's stderr.
 */
export async function agentRun(
  agent: AgentTransport,
  argv: string[],
  what: string,
  opts: AgentExecOptions = {},
): Promise<string> {
  const r = await agentExec(agent, argv, opts);
  if (r.code !== 0) {
    const err = new TextDecoder().decode(r.stderr).trim().split("\n").pop() ?? "";
    throw new CoveError(
      "agent.guest_failed",
      `${what} failed in the guest: ${err || `exit ${r.code}`}`,
    );
  }
  return new TextDecoder().decode(r.stdout);
}
