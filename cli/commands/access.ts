/**
 * Guest access: `cove ip`, `cove ssh`, `cove exec`. Parsing and printing
 * only; the work is in the library (mod.ts), loaded when a command runs.
 * `ssh` and `exec` exit with the guest command's status; `exec` goes over
 * ssh when the guest's sshd answers, else through the guest agent.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { FlagError, FORMAT_HELP, out, outJson, parseFormat } from "../output.ts";
import { execViaAgent } from "./agent.ts";

function via(v: string): "auto" | "agent" | "ssh" {
  if (v === "auto" || v === "agent" || v === "ssh") return v;
  throw new FlagError("usage.via", `--via: '${v}' is not one of auto, agent, ssh`);
}

/** Registers ip, ssh and exec. */
export function register(program: Command): void {
  program.command("ip")
    .description("print where a running VM answers: its IP, or 127.0.0.1:PORT for user networking")
    .argument("<name>", "VM name")
    .option("--wait <duration>", "wait this long for an address, e.g. 30s", "0s")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { Store, vmAddress, parseFlag, readLiveStatus } = await import("../../mod.ts");
      const waitSeconds = parseFlag("--wait", opts.wait) / 1000;
      const b = await new Store().get(name);
      const addr = await vmAddress(b, await b.readSpec(), { waitSeconds, status: readLiveStatus });
      if (opts.format === "json") outJson({ name, ...addr });
      else out(addr.via === "port-forward" ? `${addr.host}:${addr.port}` : addr.host);
    });

  const waitOption = [
    "--wait <duration>",
    "wait this long for the guest's SSH server (and cloud-init), e.g. 2m",
  ] as const;
  const runIn =
    (tty: "auto" | "never") => async (name: string, command: string[], opts: { wait: string }) => {
      const { Store, parseFlag, runSsh, readLiveStatus } = await import("../../mod.ts");
      const waitSeconds = parseFlag("--wait", opts.wait) / 1000;
      const b = await new Store().get(name);
      const code = await runSsh(b, await b.readSpec(), {
        command,
        tty,
        waitSeconds,
        status: readLiveStatus,
      });
      Deno.exit(code);
    };

  program.command("ssh")
    .description("open a shell in a running VM, or run a command (cove ssh NAME -- CMD...)")
    .argument("<name>", "VM name")
    .argument("[command...]", "command to run in the guest (after --)")
    .option(...waitOption, "0s")
    .action(runIn("auto"));

  program.command("exec")
    .description(
      "run a command in a running VM without a TTY, for scripts (cove exec NAME -- CMD...); over ssh when it answers, else the guest agent",
    )
    .argument("<name>", "VM name")
    .argument("<command...>", "command to run in the guest (after --)")
    .option(...waitOption, "0s")
    .option(
      "--via <way>",
      "auto (ssh when it answers, else the agent), agent or ssh",
      via,
      "auto" as const,
    )
    .option("--timeout <duration>", "over the agent: kill the command after this long, e.g. 5m")
    .action(async (name, command, opts) => {
      const { Store, chooseExecVia, parseFlag, readLiveStatus, MAX_AGENT_STDIN } = await import(
        "../../mod.ts"
      );
      const waitMs = parseFlag("--wait", opts.wait);
      const timeout = opts.timeout !== undefined
        ? parseFlag("--timeout", opts.timeout) / 1000
        : undefined;
      let way = opts.via;
      if (way === "auto") {
        const b = await new Store().get(name);
        way = waitMs > 0 ? "ssh" : await chooseExecVia(b, await b.readSpec(), readLiveStatus);
      }
      if (way === "ssh") return await runIn("never")(name, command, opts);
      Deno.exit(await execViaAgent(name, command, { timeout, stdinLimit: MAX_AGENT_STDIN }));
    });
}
