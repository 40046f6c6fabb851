/**
 * Guest access: `cove ip`, `cove ssh`, `cove exec`. Parsing and printing
 * only; the work is in the library (mod.ts), loaded when a command runs.
 * `ssh` and `exec` exit with the guest command's status.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { out, outJson, parseFormat } from "../output.ts";

/** Registers ip, ssh and exec. */
export function register(program: Command): void {
  program.command("ip")
    .description("print where a running VM answers: its IP, or 127.0.0.1:PORT for user networking")
    .argument("<name>", "VM name")
    .option("--wait <duration>", "wait this long for an address, e.g. 30s", "0s")
    .option("--format <format>", "output format: text or json", parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { Store, guestAddress, parseFlag, readLiveStatus } = await import("../../mod.ts");
      const waitSeconds = parseFlag("--wait", opts.wait) / 1000;
      const b = await new Store().get(name);
      const addr = await guestAddress(b, await b.readSpec(), {
        waitSeconds,
        status: readLiveStatus,
      });
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
      "run a command in a running VM without a TTY, for scripts (cove exec NAME -- CMD...)",
    )
    .argument("<name>", "VM name")
    .argument("<command...>", "command to run in the guest (after --)")
    .option(...waitOption, "0s")
    .action(runIn("never"));
}
