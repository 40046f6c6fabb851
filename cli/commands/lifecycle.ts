/**
 * Lifecycle commands: run (the supervisor, in the foreground), start (the
 * same, detached), stop, pause, resume and console. Parsing and printing
 * only; the work is in core/supervisor/.
 * @module
 */
import { type Command, Option } from "@commander-js/extra-typings";
import { CoveError, ExitCode } from "../../core/errors.ts";
import { Store } from "../../core/store/store.ts";
import { parseForwardFlag, type PortForwardSpec } from "../../mod.ts";
import { log, out, outJson, parseFormat } from "../output.ts";

const FORWARD_HELP =
  "forward [ADDR:]HOST:GUEST[/udp] for this run only, on top of the spec's (repeatable)";

/** Collects repeated `--forward` values. */
function collectForward(v: string, prev: PortForwardSpec[]): PortForwardSpec[] {
  return [...prev, parseForwardFlag(v)];
}

const FORMAT_HELP = "output format: text or json";

/** The largest timeout setTimeout can wait for (2^31-1 ms), in whole seconds. */
export const MAX_SECONDS = 2147483;

/** Parses a non-negative number of seconds, at most {@link MAX_SECONDS}. */
export function parseSeconds(v: string): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n < 0) {
    throw new CoveError("usage.seconds", `'${v}' is not a number of seconds`, {
      exit: ExitCode.Usage,
    });
  }
  if (n > MAX_SECONDS) {
    throw new CoveError("usage.seconds", `'${v}' seconds is too long (at most ${MAX_SECONDS})`, {
      exit: ExitCode.Usage,
    });
  }
  return n;
}

/** Registers the lifecycle commands. */
export function register(program: Command): void {
  program.command("run")
    .description("run a VM in the foreground (the supervisor); Ctrl-C stops it")
    .argument("<name>", "VM name")
    .option("--console", "attach the serial console to this terminal (Ctrl-] detaches)")
    .option("--ephemeral", "run a copy-on-write clone and delete it on exit")
    .option("--no-graphics", "headless: no window even if the VM has a display")
    .option(
      "--stop-timeout <seconds>",
      "seconds a graceful stop may take on Ctrl-C",
      parseSeconds,
      30,
    )
    .option("--forward <spec>", FORWARD_HELP, collectForward, [])
    .addOption(hiddenDetached())
    .action(async (name, opts) => {
      const { runSupervisor } = await import("../../core/supervisor/supervisor.ts");
      const detached = !!opts.detached;
      let quiet = false; // a detached supervisor writes to stderr only until the VM runs
      const say = (line: string) => {
        if (!quiet && !detached) log(`cove: ${line}`);
      };
      let attached: Promise<void> | undefined; // the `--console` attachment, if any
      const result = await runSupervisor(new Store(), name, {
        ephemeral: opts.ephemeral,
        graphics: opts.graphics,
        stopTimeout: opts.stopTimeout,
        forwards: opts.forward,
        log: (line) => {
          if (/^(stopping|received|the guest did not|graceful stop failed)/.test(line)) say(line);
        },
        onRunning: async (sup) => {
          if (detached) {
            quiet = true;
            return;
          }
          if (!opts.console) {
            say(`${sup.bundle.name} is running; Ctrl-C stops it ('cove console ${name}' attaches)`);
            return;
          }
          const { attachTerminal, ESCAPE_NAME } = await import("../../core/supervisor/terminal.ts");
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
          attached = (async () => {
            const end = await attachTerminal({
              output,
              write: (b) => sup.input(b),
              onAttached: (raw) =>
                raw && say(`console of ${sup.bundle.name}; ${ESCAPE_NAME} detaches`),
            });
            unsubscribe();
            if (end === "detached") {
              log(""); // the guest's prompt has no newline
              say("console detached; the VM keeps running (Ctrl-C stops it)");
            }
          })().catch(() => {});
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
    });

  program.command("start")
    .description("start a VM in the background (a detached supervisor)")
    .argument("<name>", "VM name")
    .option("--no-graphics", "headless: no window even if the VM has a display")
    .option("--timeout <seconds>", "how long to wait for the VM to run", parseSeconds, 120)
    .option("--forward <spec>", FORWARD_HELP, collectForward, [])
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { startDetached } = await import("../../core/supervisor/start.ts");
      const s = await startDetached(new Store(), name, {
        timeoutMs: opts.timeout * 1000,
        graphics: opts.graphics,
        forwards: opts.forward,
      });
      if (opts.format === "json") outJson(s);
      else out(`started ${name}`);
    });

  program.command("stop")
    .description("stop a running VM: ACPI power button, then power off after a timeout")
    .argument("<name>", "VM name")
    .option("--timeout <seconds>", "seconds to wait for the guest to shut down", parseSeconds, 30)
    .option("-f, --force", "power off at once")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { stopVm } = await import("../../core/supervisor/client.ts");
      const b = await new Store().get(name);
      const r = await stopVm(b, { force: opts.force, timeoutSeconds: opts.timeout });
      if (opts.format === "json") outJson(r);
      else out(`stopped ${name}${r.forced ? " (powered off)" : ""}`);
    });

  program.command("pause")
    .description("pause a running VM (its vCPUs stop; memory stays)")
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { pauseVm } = await import("../../core/supervisor/client.ts");
      const r = await pauseVm(await new Store().get(name));
      if (opts.format === "json") outJson(r);
      else out(`paused ${name}`);
    });

  program.command("resume")
    .description("resume a paused VM")
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { resumeVm } = await import("../../core/supervisor/client.ts");
      const r = await resumeVm(await new Store().get(name));
      if (opts.format === "json") outJson(r);
      else out(`resumed ${name}`);
    });

  program.command("suspend")
    .description(
      "save a running VM's state to disk and stop it; the next run resumes it (vz, macOS 14+)",
    )
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { suspendVm } = await import("../../core/supervisor/client.ts");
      const r = await suspendVm(await new Store().get(name));
      if (opts.format === "json") outJson(r);
      else out(`suspended ${name}`);
    });

  program.command("console")
    .description("attach to a running VM's serial console (Ctrl-] detaches)")
    .argument("<name>", "VM name")
    .option("--replay <bytes>", "first show this many bytes of recent output", "4096")
    .action(async (name, opts) => {
      const { attachConsole } = await import("../../core/supervisor/client.ts");
      const { attachTerminal, ESCAPE_NAME } = await import("../../core/supervisor/terminal.ts");
      const replay = Number(opts.replay);
      if (!Number.isInteger(replay) || replay < 0) {
        throw new CoveError("usage.replay", `--replay: '${opts.replay}' is not a byte count`, {
          exit: ExitCode.Usage,
        });
      }
      const c = await attachConsole(await new Store().get(name), { replay });
      const end = await attachTerminal({
        output: c.output,
        write: (b) => c.write(b),
        onAttached: (raw) => raw && log(`cove: console of ${name}; ${ESCAPE_NAME} detaches`),
      });
      c.close();
      if (end === "closed") log(`\ncove: ${name} stopped`);
      else if (end === "detached") log("\ncove: detached");
    });
}

/** `--detached`: set by `cove start` for the supervisor it launches. */
function hiddenDetached() {
  return new Option("--detached", "internal: run as the detached supervisor of 'cove start'")
    .hideHelp();
}
