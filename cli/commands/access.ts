/**
 * Guest access: `cove ip`, `cove ssh`, `cove exec`. Parsing and printing
 * only; the work is in core/access. `ssh` and `exec` exit with the guest
 * command's status.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { guestAddress } from "../../core/access/address.ts";
import { readLiveStatus } from "../../core/access/status.ts";
import { runSsh } from "../../core/access/ssh.ts";
import { parseFlag } from "../../core/flags.ts";
import { Store } from "../../core/store/store.ts";
import { out, outJson, parseFormat } from "../output.ts";

/** `--wait DURATION` in seconds (the unit is required: 90s, 3m). */
const seconds = (v: string): number => parseFlag("--wait", v) / 1000;

/** Registers ip, ssh and exec. */
export function register(program: Command): void {
  program.command("ip")
    .description("print where a running VM answers: its IP, or 127.0.0.1:PORT for user networking")
    .argument("<name>", "VM name")
    .option("--wait <duration>", "wait this long for an address, e.g. 30s", seconds, 0)
    .option("--format <format>", "output format: text or json", parseFormat, "text" as const)
    .action(async (name, opts) => {
      const b = await new Store().get(name);
      const addr = await guestAddress(b, await b.readSpec(), {
        waitSeconds: opts.wait,
        status: readLiveStatus,
      });
      if (opts.format === "json") outJson({ name, ...addr });
      else out(addr.via === "port-forward" ? `${addr.host}:${addr.port}` : addr.host);
    });

  const waitOption = [
    "--wait <duration>",
    "wait this long for the guest's SSH server (and cloud-init), e.g. 3m",
  ] as const;
  const runIn =
    (tty: "auto" | "never") => async (name: string, command: string[], opts: { wait: number }) => {
      const b = await new Store().get(name);
      const code = await runSsh(b, await b.readSpec(), {
        command,
        tty,
        waitSeconds: opts.wait,
        status: readLiveStatus,
      });
      Deno.exit(code);
    };

  program.command("ssh")
    .description("open a shell in a running VM, or run a command (cove ssh NAME -- CMD...)")
    .argument("<name>", "VM name")
    .argument("[command...]", "command to run in the guest (after --)")
    .option(...waitOption, seconds, 0)
    .action(runIn("auto"));

  program.command("exec")
    .description(
      "run a command in a running VM without a TTY, for scripts (cove exec NAME -- CMD...)",
    )
    .argument("<name>", "VM name")
    .argument("<command...>", "command to run in the guest (after --)")
    .option(...waitOption, seconds, 0)
    .action(runIn("never"));
}
