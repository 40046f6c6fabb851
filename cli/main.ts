/**
 * The `cove` command-line entry point: builds the command tree, runs the
 * command, and turns any failure into one line on stderr (or, with
 * `--format json`, `{"error": {code, message, hint, exit}}`) and a
 * documented exit code.
 *
 * Each command loads what it needs when it runs: the tree is built without
 * the library (`mod.ts`), so help and completions load no spec, registry or
 * engine code and no native library, and `cove --version` and the main help
 * (`cove help`, `--help`, `-h`, printed from its copy, cli/help_data.json)
 * load not even the argument parser. Nor do the commands scripts run in loops, in their
 * plain forms (`cove list [--format F] [-q]`, `cove get NAME [--format F]`),
 * nor a TAB press (`cove complete -- WORDS`, answered from a copy of the
 * tree, cli/completion_data.json), nor the detached supervisor that
 * `cove start` launches (`cove run NAME --detached ...`, on the path of
 * every start and memory restore): {@link fastPath} runs the very action
 * the command tree would, and any
 * other form (a help flag, a bad value, an extra word) goes to the parser,
 * which says what is wrong as it always has.
 * @module
 */
import { type Format, log, reportError, requestedFormat } from "./output.ts";
import { VERSION } from "./version.ts";

/** The exit code of usage errors (ExitCode.Usage), without loading the library. */
const USAGE_EXIT = 2;

/** Runs cove with `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
    Deno.stdout.writeSync(new TextEncoder().encode(`${VERSION}\n`));
    return 0;
  }
  if (args.length === 1 && (args[0] === "help" || args[0] === "--help" || args[0] === "-h")) {
    // The main help, from its copy (scripts/gen-completion-data.ts): no argument parser to load.
    const { default: help } = await import("./help_data.json", { with: { type: "json" } });
    Deno.stdout.writeSync(new TextEncoder().encode(help.main));
    return 0;
  }
  const fast = fastPath(args);
  if (fast) {
    try {
      await fast();
      return 0;
    } catch (err) {
      return await reportError(err, requestedFormat(args));
    }
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

/**
 * The action of `cove complete -- WORDS`, of `cove run NAME --detached`
 * in the form `cove start` gives it ({@link detachedRun}), or of `cove list`
 * or `cove get NAME` when `args` is one of their
 * plain forms, exactly as the parser would read it (options after the
 * command, `--format text|json` or `--format=...` given any number of
 * times, the last one winning); otherwise undefined.
 */
export function fastPath(args: string[]): (() => Promise<void>) | undefined {
  const [cmd, ...rest] = args;
  if (cmd === "complete" && rest[0] === "--") {
    const words = rest.slice(1);
    return async () => (await import("./completions.ts")).completeWords(words);
  }
  if (cmd === "run") return detachedRun(rest);
  const isList = cmd === "list" || cmd === "ls";
  if (!isList && cmd !== "get") return undefined;
  let format: Format = "text";
  let quiet = false;
  const words: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    let value: string | undefined;
    if (a === "--format") value = rest[++i];
    else if (a.startsWith("--format=")) value = a.slice("--format=".length);
    else if (isList && (a === "-q" || a === "--quiet")) {
      quiet = true;
      continue;
    } else if (!a.startsWith("-")) {
      words.push(a);
      continue;
    } else return undefined;
    if (value !== "text" && value !== "json") return undefined;
    format = value;
  }
  if (isList) {
    if (words.length > 0) return undefined;
    return async () => (await import("./commands/vm.ts")).listCommand({ format, quiet });
  }
  if (words.length !== 1) return undefined;
  const name = words[0];
  return async () => (await import("./commands/vm.ts")).getCommand(name, { format });
}

/**
 * The supervisor that `cove start` launches: `run NAME --detached`, then
 * `--no-graphics` and `--forward SPEC` as `coveCommand` in
 * core/supervisor/start.ts writes them, and nothing else (any other form of
 * `cove run` goes to the parser). Its start is on the path of every
 * `cove start` and memory restore, so it loads no argument parser.
 */
function detachedRun(rest: string[]): (() => Promise<void>) | undefined {
  const [name, detached, ...flags] = rest;
  if (!name || name.startsWith("-") || detached !== "--detached") return undefined;
  let graphics = true;
  const forward: string[] = [];
  for (let i = 0; i < flags.length; i++) {
    const a = flags[i];
    if (a === "--no-graphics" && graphics && forward.length === 0) graphics = false;
    else if (a === "--forward" && i + 1 < flags.length && !flags[i + 1].startsWith("-")) {
      forward.push(flags[++i]);
    } else return undefined;
  }
  return async () => {
    const run = await import("./commands/run.ts");
    await run.runCommand(name, {
      detached: true,
      graphics,
      forward,
      stopTimeout: run.RUN_STOP_TIMEOUT,
    });
  };
}

if (import.meta.main) {
  const code = await main(Deno.args);
  Deno.exit(code);
}
