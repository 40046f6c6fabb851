/**
 * The command tree. Each group of commands lives in `commands/<group>.ts`
 * and registers itself here; this file only sets what every command shares.
 * @module
 */
import { Command } from "@commander-js/extra-typings";
import { VERSION } from "../core/version.ts";
import { log } from "./output.ts";
import { commandModules } from "./commands/index.ts";

/** Builds the full `cove` command tree (no side effects, no native code). */
export function buildProgram(): Command {
  const program = new Command("cove")
    .description("Create, run, share and script macOS and Linux virtual machines.")
    .version(VERSION, "-V, --version", "print the cove version")
    .option("--debug", "show stack traces and engine logs")
    .showSuggestionAfterError(true)
    .configureHelp({ sortSubcommands: false, showGlobalOptions: true })
    .exitOverride()
    .configureOutput({
      writeErr: (s) => log(s.replace(/\n$/, "")),
      outputError: (s, write) =>
        write(`cove: ${s.replace(/^error: /, "").trim()} (see 'cove --help')`),
    });
  for (const m of commandModules) m.register(program);
  return program;
}
