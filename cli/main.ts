/**
 * The `cove` command-line entry point: builds the command tree, runs the
 * command, and turns any failure into one line on stderr (or, with
 * `--format json`, `{"error": {code, message, hint, exit}}`) and a
 * documented exit code.
 *
 * Each command loads what it needs when it runs: the tree is built without
 * the library (`mod.ts`), so help and completions load no spec, registry or
 * engine code and no native library, and `cove --version` loads not even
 * the argument parser.
 * @module
 */
import { log, reportError, requestedFormat } from "./output.ts";
import { VERSION } from "./version.ts";

/** The exit code of usage errors (ExitCode.Usage), without loading the library. */
const USAGE_EXIT = 2;

/** Runs cove with `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
    Deno.stdout.writeSync(new TextEncoder().encode(`${VERSION}\n`));
    return 0;
  }
  const [{ CommanderError }, { buildProgram }] = await Promise.all([
    import("@commander-js/extra-typings"),
    import("./program.ts"),
  ]);
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
