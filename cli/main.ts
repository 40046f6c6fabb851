/**
 * The `cove` command-line entry point: builds the command tree, runs the
 * command, and turns any failure into one line on stderr and a documented
 * exit code. Completions and --help never load a native library: engine
 * modules are imported lazily by the commands that need them.
 * @module
 */
import { CommanderError } from "@commander-js/extra-typings";
import { ExitCode } from "../core/errors.ts";
import { buildProgram } from "./program.ts";
import { reportError } from "./output.ts";

/** Runs cove with `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(args, { from: "user" });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander has already printed its one-line message (or the help).
      return err.exitCode === 0 ? 0 : ExitCode.Usage;
    }
    return reportError(err);
  }
}

if (import.meta.main) {
  const code = await main(Deno.args);
  Deno.exit(code);
}
