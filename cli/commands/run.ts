/**
 * The action of `cove run NAME`: the supervisor, in the foreground, or
 * (`--detached`, set by `cove start`) as the detached supervisor that
 * `cove start` launched. No argument parser here: the command tree
 * (./lifecycle.ts) calls it with the parsed options, and cli/main.ts calls
 * it directly for the exact command line `cove start` gives its
 * supervisor, so a start loads neither the parser nor the other commands.
 * @module
 */
import type { AttachEnd, SupervisorEvent } from "../../mod.ts";
import { log } from "../output.ts";

/** The default of `cove run --stop-timeout`. */
export const RUN_STOP_TIMEOUT = "30s";

/** The options of `cove run`, as the parser gives them. */
export interface RunCommandOptions {
  console?: boolean;
  ephemeral?: boolean;
  /** False with `--no-graphics`. */
  graphics?: boolean;
  /** `--stop-timeout`, e.g. `30s`. */
  stopTimeout: string;
  /** `--forward` values. */
  forward: string[];
  /** Run as the detached supervisor of `cove start`. */
  detached?: boolean;
}

/**
 * The events `cove run` shows the user (how a stop is going), in the words
 * supervisor.log uses; the rest go to supervisor.log only.
 */
const SHOWN_EVENTS: ReadonlySet<SupervisorEvent["type"]> = new Set([
  "signal",
  "stopping",
  "stop-failed",
  "stop-timeout",
]);

/** Runs `cove run NAME` with parsed options. */
export async function runCommand(name: string, opts: RunCommandOptions): Promise<void> {
  const cove = await import("../../mod.ts");
  const { CoveError, ExitCode } = cove;
  const detached = !!opts.detached;
  let quiet = false; // a detached supervisor writes to stderr only until the VM runs
  const say = (line: string) => {
    if (!quiet && !detached) log(`cove: ${line}`);
  };
  let attached: Promise<void> | undefined; // the `--console` attachment, if any
  const stopTimeout = cove.parseFlag("--stop-timeout", opts.stopTimeout) / 1000;
  const result = await cove.runSupervisor(new cove.Store(), name, {
    ephemeral: opts.ephemeral,
    graphics: opts.graphics,
    stopTimeout,
    forwards: opts.forward.map(cove.parseForwardFlag),
    onEvent: (e) => {
      if (SHOWN_EVENTS.has(e.type)) say(cove.describeEvent(e));
    },
    onRunning: (sup) => {
      if (detached) {
        quiet = true;
        // Tells `cove start`, which reads this stderr until the VM runs, to look now.
        try {
          Deno.stderr.writeSync(new TextEncoder().encode(cove.READY_NUDGE));
        } catch { /* it stopped reading */ }
        return;
      }
      if (!opts.console) {
        say(`${sup.bundle.name} is running; Ctrl-C stops it ('cove console ${name}' attaches)`);
        return;
      }
      const { attachTerminal, ESCAPE_NAME, STOP_KEYS_NAME } = cove;
      let unsubscribe = () => {};
      const output = new ReadableStream<Uint8Array>({
        start(c) {
          const seen = sup.hub.tail();
          if (seen.length) c.enqueue(seen);
          // The hub closes when the VM stopped: end the stream, so attachTerminal returns.
          unsubscribe = sup.hub.subscribe((b) => c.enqueue(b.slice()), () => {
            try {
              c.close();
            } catch { /* already closed or cancelled */ }
          });
        },
        cancel() {
          unsubscribe();
        },
      });
      attached = followConsole({
        attach: () =>
          attachTerminal({
            output,
            write: (b) => sup.input(b),
            onAttached: (raw) =>
              raw &&
              say(
                `console of ${sup.bundle.name}; ${ESCAPE_NAME} detaches, ${STOP_KEYS_NAME} stops the VM`,
              ),
          }),
        say,
        stop: () => sup.stop(false, stopTimeout),
        describe: (e) => cove.toCoveError(e).line(),
        name,
      }).finally(unsubscribe);
    },
  });
  // The hub is closed by now, which ends the attachment and restores the terminal.
  await attached;
  const crashed = result.exit.reason === "crash";
  if (detached) {
    Deno.exit(crashed ? ExitCode.Failure : ExitCode.Ok);
  }
  if (crashed) {
    const tail = result.consoleTail.slice(-3).join(" | ");
    throw new CoveError(
      "vm.crashed",
      `${name} stopped unexpectedly: ${result.exit.message ?? "the engine died"}` +
        (tail ? ` (last console lines: ${tail})` : ""),
      { exit: ExitCode.Failure },
    );
  }
  say(
    `${name} stopped (${
      result.exit.reason === "guest" ? "the guest powered off" : "stopped by cove"
    })`,
  );
}

/** What {@link followConsole} needs. */
export interface FollowConsole {
  /** Attaches the terminal to the console; resolves with why it ended. */
  attach: () => Promise<AttachEnd>;
  /** Tells the user (stderr). */
  say: (line: string) => void;
  /** Stops the VM gracefully (for Ctrl-A x). */
  stop: () => Promise<unknown>;
  /** One line for an error. */
  describe: (e: unknown) => string;
  /** The VM's name, for hints. */
  name: string;
}

/**
 * `cove run --console`: attaches, then acts on how the attachment ended.
 * A failure to attach is told to the user (the VM keeps running and
 * Ctrl-C still stops it); it is never swallowed.
 */
export async function followConsole(f: FollowConsole): Promise<void> {
  let end: AttachEnd;
  try {
    end = await f.attach();
  } catch (e) {
    f.say(`could not attach the console: ${f.describe(e)}`);
    f.say(`the VM keeps running; Ctrl-C stops it ('cove console ${f.name}' attaches)`);
    return;
  }
  if (end === "detached") {
    log(""); // the guest's prompt has no newline
    f.say("console detached; the VM keeps running (Ctrl-C stops it)");
  } else if (end === "stop") {
    log("");
    try {
      await f.stop();
    } catch (e) {
      f.say(`could not stop ${f.name}: ${f.describe(e)} (Ctrl-C stops it)`);
    }
  }
}
