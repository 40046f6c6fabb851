/**
 * The command tree. Each group of commands lives in `commands/<group>.ts`
 * and registers itself here; this file only sets what every command shares.
 * Registering loads no library code: the commands import `mod.ts` when
 * they run.
 * @module
 */
import { Command } from "@commander-js/extra-typings";
import { log } from "./output.ts";
import { commandModules } from "./commands/index.ts";
import { VERSION } from "./version.ts";

/** Options of {@link buildProgram}. */
export interface ProgramOptions {
  /** Takes commander's usage error message instead of printing it (for JSON errors). */
  onUsageError?: (message: string) => void;
}

/** The width help is wrapped to: commander's own default when output is not a terminal. */
export const HELP_WIDTH = 80;

/** Builds the full `cove` command tree (no side effects, no native code). */
export function buildProgram(opts: ProgramOptions = {}): Command {
  const program = new Command("cove")
    .description("Create, run, share and script macOS and Linux virtual machines.")
    .version(VERSION, "-V, --version", "print the cove version")
    .option("--debug", "show stack traces and engine logs")
    .showSuggestionAfterError(true)
    .configureHelp({
      sortSubcommands: false,
      showGlobalOptions: true,
      // One width on every terminal, so the copy of the main help (cli/help_data.json) is exact.
      helpWidth: HELP_WIDTH,
    })
    .exitOverride()
    .configureOutput({
      writeErr: (s) => log(s.replace(/\n$/, "")),
      outputError: (s, write) => {
        const message = s.replace(/^error: /, "").trim();
        if (opts.onUsageError) opts.onUsageError(message);
        else write(`cove: ${message} (see 'cove --help')`);
      },
    });
  for (const m of commandModules) m.register(program);
  return program;
}

/** The main help as `cove --help` prints it: what cli/help_data.json holds. */
export function mainHelp(): { main: string } {
  return { main: buildProgram().helpInformation() };
}
