/**
 * Networking commands: `cove port NAME` (the active port forwards of a
 * running VM, each with its origin: spec, flag or automatic). Parsing and
 * printing only; the work is in core/net/ and the supervisor.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { formatForward, Store, vmForwards } from "../../mod.ts";
import { out, outJson, parseFormat, table } from "../output.ts";

/** Registers the networking commands. */
export function register(program: Command): void {
  program.command("port")
    .description("list a running VM's port forwards and where each came from (spec, flag, auto)")
    .argument("<name>", "VM name")
    .option("--format <format>", "output format: text or json", parseFormat, "text" as const)
    .action(async (name, opts) => {
      const r = await vmForwards(await new Store().get(name));
      if (opts.format === "json") {
        outJson(r.forwards);
        return;
      }
      if (r.forwards.length === 0) {
        out(`${name} has no port forwards`);
        return;
      }
      out(table(
        ["HOST", "GUEST", "PROTO", "ORIGIN", "VIA", "FORWARD"],
        r.forwards.map((f) => [
          `${f.address.includes(":") ? `[${f.address}]` : f.address}:${f.host}`,
          String(f.guest),
          f.protocol,
          f.origin,
          f.via,
          formatForward(f),
        ]),
      ));
    });
}
