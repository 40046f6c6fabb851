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
import { CoveError, ExitCode } from "../../core/errors.ts";
import { Store } from "../../core/store/store.ts";
import { agentAddresses, agentOf, chooseExecVia, MAX_AGENT_STDIN } from "../../mod.ts";
import { out, outJson, parseFormat } from "../output.ts";
import { execViaAgent } from "./agent.ts";

function via(v: string): "auto" | "agent" | "ssh" {
  if (v === "auto" || v === "agent" || v === "ssh") return v;
  throw new CoveError("usage.via", `--via: '${v}' is not one of auto, agent, ssh`, {
    exit: ExitCode.Usage,
  });
}

function timeoutSeconds(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) {
    throw new CoveError("usage.timeout", `--timeout: '${v}' is not a positive number of seconds`, {
      exit: ExitCode.Usage,
    });
  }
  return n;
}

function seconds(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) {
    throw new CoveError("usage.wait", `--wait: '${v}' is not a number of seconds`, {
      exit: ExitCode.Usage,
    });
  }
  return n;
}

/** Registers ip, ssh and exec. */
export function register(program: Command): void {
  program.command("ip")
    .description("print where a running VM answers: its IP, or 127.0.0.1:PORT for user networking")
    .argument("<name>", "VM name")
    .option("--wait <seconds>", "wait this long for an address", seconds, 0)
    .option("--format <format>", "output format: text or json", parseFormat, "text" as const)
    .action(async (name, opts) => {
      const b = await new Store().get(name);
      const spec = await b.readSpec();
      // The guest agent first: it knows the guest's addresses without leases or ARP.
      const userNet = spec.networks.find((n) => n.mode !== "none")?.mode === "user";
      if (spec.agent && !userNet && (await b.isRunning())) {
        const found = await agentOf(b).then((a) => agentAddresses(a, { timeoutMs: 5_000 }))
          .catch(() => []);
        if (found.length) {
          if (opts.format === "json") {
            return outJson({ name, host: found[0].address, via: "agent", addresses: found });
          }
          return out(found[0].address);
        }
        if (!spec.networks.some((n) => n.mode !== "none")) {
          throw new CoveError(
            "vm.no_address",
            `VM '${name}' has no network, and its guest agent reports no address but loopback`,
            {
              hint: `add one under networks: in its cove.yaml, e.g. { mode: nat }`,
              exit: ExitCode.State,
            },
          );
        }
      }
      const addr = await guestAddress(b, spec, {
        waitSeconds: opts.wait,
        status: readLiveStatus,
      });
      if (opts.format === "json") outJson({ name, ...addr });
      else out(addr.via === "port-forward" ? `${addr.host}:${addr.port}` : addr.host);
    });

  const waitOption = [
    "--wait <seconds>",
    "wait this long for the guest's SSH server (and cloud-init)",
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
      "run a command in a running VM without a TTY, for scripts (cove exec NAME -- CMD...); over ssh when it answers, else the guest agent",
    )
    .argument("<name>", "VM name")
    .argument("<command...>", "command to run in the guest (after --)")
    .option(...waitOption, seconds, 0)
    .option(
      "--via <way>",
      "auto (ssh when it answers, else the agent), agent or ssh",
      via,
      "auto" as const,
    )
    .option(
      "--timeout <seconds>",
      "over the agent: kill the command after this long",
      timeoutSeconds,
    )
    .action(async (name, command, opts) => {
      let way = opts.via;
      if (way === "auto") {
        const b = await new Store().get(name);
        way = opts.wait > 0 ? "ssh" : await chooseExecVia(b, await b.readSpec(), readLiveStatus);
      }
      if (way === "ssh") return await runIn("never")(name, command, opts);
      Deno.exit(
        await execViaAgent(name, command, { timeout: opts.timeout, stdinLimit: MAX_AGENT_STDIN }),
      );
    });
}
