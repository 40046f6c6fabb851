/**
 * How agent operations (exec, cp, freeze) reach a guest agent: anything
 * that runs one QGA command and returns its `return` value. In cove that is
 * the supervisor's control socket ({@link ./remote.ts}); tests also pass a
 * {@link ./qga.ts} client directly.
 * @module
 */
import type { QgaCommandOptions } from "./qga.ts";

/** Runs one guest agent command. */
export interface AgentTransport {
  command<T = unknown>(
    execute: string,
    args?: Record<string, unknown>,
    opts?: QgaCommandOptions,
  ): Promise<T>;
}
