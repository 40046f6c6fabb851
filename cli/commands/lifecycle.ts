/**
 * Lifecycle commands: run (the supervisor, in the foreground), start (the
 * same, detached), stop, pause, resume and console. Parsing and printing
 * only; the work is in the library (mod.ts), loaded when a command runs.
 *
 * On an attached console (`cove run --console`, `cove console`) the
 * terminal is raw, so Ctrl-C goes to the guest. Ctrl-] detaches; Ctrl-A x
 * detaches and stops the VM.
 * @module
 */
import { type Command, Option } from "@commander-js/extra-typings";
import { FORMAT_HELP, log, out, outJson, parseFormat } from "../output.ts";
import { RUN_STOP_TIMEOUT, runCommand } from "./run.ts";

export { type FollowConsole, followConsole } from "./run.ts";

const FORWARD_HELP =
  "forward [ADDR:]HOST:GUEST[/udp] for this run only, on top of the spec's (repeatable)";

/** Collects repeated `--forward` values (read by the library when the command runs). */
function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/** Registers the lifecycle commands. */
export function register(program: Command): void {
  program.command("run")
    .description("run a VM in the foreground (the supervisor); Ctrl-C stops it")
    .argument("<name>", "VM name")
    .option(
      "--console",
      "attach the serial console (Ctrl-C goes to the guest; Ctrl-] detaches, Ctrl-A x stops)",
    )
    .option("--ephemeral", "run a copy-on-write clone and delete it on exit")
    .option("--no-graphics", "headless: no window even if the VM has a display")
    .option(
      "--stop-timeout <duration>",
      "how long a graceful stop may take on Ctrl-C, e.g. 30s",
      RUN_STOP_TIMEOUT,
    )
    .option("--forward <spec>", FORWARD_HELP, collect, [] as string[])
    .addOption(hiddenDetached())
    .action((name, opts) => runCommand(name, opts));

  program.command("start")
    .description("start a VM in the background (a detached supervisor)")
    .argument("<name>", "VM name")
    .option("--no-graphics", "headless: no window even if the VM has a display")
    .option("--timeout <duration>", "how long to wait for the VM to run, e.g. 2m", "2m")
    .option("--forward <spec>", FORWARD_HELP, collect, [] as string[])
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { Store, parseFlag, parseForwardFlag, runsAsYou, startDetached } = await import(
        "../../mod.ts"
      );
      const timeoutMs = parseFlag("--timeout", opts.timeout);
      const store = new Store();
      const spec = await (await store.get(name)).readSpec().catch(() => undefined);
      for (const line of spec ? runsAsYou(spec) : []) log(`note: ${line}`);
      const s = await startDetached(store, name, {
        timeoutMs,
        forwards: opts.forward.map(parseForwardFlag),
        graphics: opts.graphics,
      });
      if (opts.format === "json") outJson(s);
      else out(`started ${name}`);
    });

  program.command("stop")
    .description(
      "stop a running VM: ACPI power button; after a timeout the guest agent's shutdown, then power off",
    )
    .argument("<name>", "VM name")
    .option("--timeout <duration>", "how long to wait for the guest to shut down, e.g. 30s", "30s")
    .option("-f, --force", "power off at once")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { Store, parseFlag, stopVm } = await import("../../mod.ts");
      const timeoutSeconds = parseFlag("--timeout", opts.timeout) / 1000;
      const b = await new Store().get(name);
      const r = await stopVm(b, { force: opts.force, timeoutSeconds });
      if (r.unresponsive) log(`warning: ${r.unresponsive}`);
      if (opts.format === "json") outJson(r);
      else {
        out(
          `stopped ${name}${
            r.forced ? " (powered off)" : r.via === "agent" ? " (through the guest agent)" : ""
          }`,
        );
      }
    });

  program.command("pause")
    .description("pause a running VM (its vCPUs stop; memory stays)")
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { Store, pauseVm } = await import("../../mod.ts");
      const r = await pauseVm(await new Store().get(name));
      if (opts.format === "json") outJson(r);
      else out(`paused ${name}`);
    });

  program.command("resume")
    .description("resume a paused VM")
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { Store, resumeVm } = await import("../../mod.ts");
      const r = await resumeVm(await new Store().get(name));
      if (opts.format === "json") outJson(r);
      else out(`resumed ${name}`);
    });

  program.command("suspend")
    .description(
      "save a running VM's state to disk and stop it; the next run or start resumes it",
    )
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { Store, suspendVm } = await import("../../mod.ts");
      const r = await suspendVm(await new Store().get(name));
      if (opts.format === "json") outJson(r);
      else out(`suspended ${name}`);
    });

  program.command("console")
    .description("attach to a running VM's serial console (Ctrl-] detaches, Ctrl-A x stops)")
    .argument("<name>", "VM name")
    .option("--replay <bytes>", "first show this many bytes of recent output", "4096")
    .action(async (name, opts) => {
      const {
        parseFlag,
        Store,
        attachConsole,
        attachTerminal,
        ESCAPE_NAME,
        STOP_KEYS_NAME,
        stopVm,
      } = await import("../../mod.ts");
      const replay = parseFlag("--replay", opts.replay);
      const b = await new Store().get(name);
      const c = await attachConsole(b, { replay });
      const end = await attachTerminal({
        output: c.output,
        write: (b) => c.write(b),
        onAttached: (raw) =>
          raw &&
          log(`cove: console of ${name}; ${ESCAPE_NAME} detaches, ${STOP_KEYS_NAME} stops the VM`),
      });
      c.close();
      if (end === "closed") log(`\ncove: ${name} stopped`);
      else if (end === "detached") log("\ncove: detached");
      else if (end === "stop") {
        log(`\ncove: stopping ${name}`);
        const r = await stopVm(b, {});
        log(`cove: stopped ${name}${r.forced ? " (powered off)" : ""}`);
      }
    });
}

/** `--detached`: set by `cove start` for the supervisor it launches. */
function hiddenDetached() {
  return new Option("--detached", "internal: run as the detached supervisor of 'cove start'")
    .hideHelp();
}
