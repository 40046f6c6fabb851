/**
 * The `cove` command-line entry point: builds the command tree, runs the
 * command, and turns any failure into one line on stderr (or, with
 * `--format json`, `{"error": {code, message, hint, exit}}`) and a
 * documented exit code. The tree is built without loading the library:
 * each command imports `mod.ts` when it runs, so `--version`, help and
 * completions load no spec, registry or engine code and no native library.
 * @module
 */
import { CommanderError } from "@commander-js/extra-typings";
import { buildProgram } from "./program.ts";
import { log, reportError, requestedFormat } from "./output.ts";

/** The exit code of usage errors (ExitCode.Usage), without loading the library. */
const USAGE_EXIT = 2;

/** Runs cove with `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const format = requestedFormat(args);
  let usage = "";
  const program = buildProgram({
    // Under --format json, commander's own error line becomes the JSON error.
    onUsageError: format === "json" ? (message) => (usage = message) : undefined,
  });
  try {
    await program.parseAsync(args, { from: "user" });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander has already printed its one-line message (or the help).
      if (err.exitCode === 0) return 0;
      if (format === "json") {
        const message = usage || err.message.replace(/^error: /, "");
        log(
          JSON.stringify({
            error: { code: "usage", message, hint: "see 'cove --help'", exit: USAGE_EXIT },
          }),
        );
      }
      return USAGE_EXIT;
    }
    return await reportError(err, format);
  }
}

if (import.meta.main) {
  const code = await main(Deno.args);
  Deno.exit(code);
}
