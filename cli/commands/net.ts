/**
 * Networking commands: `cove port NAME` (the active port forwards of a
 * running VM, each with its origin: spec, flag or automatic) and `cove
 * network create|ls|rm` (private networks between VMs). Parsing and
 * printing only; the work is in core/net/ and the supervisor.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { FORMAT_HELP, out, outJson, parseFormat, table } from "../output.ts";

/** Registers the networking commands. */
export function register(program: Command): void {
  registerPort(program);
  registerNetwork(program);
}

/** Registers `cove port`. */
function registerPort(program: Command): void {
  program.command("port")
    .description("list a running VM's port forwards and where each came from (spec, flag, auto)")
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const cove = await import("../../mod.ts");
      const r = await cove.vmForwards(await new cove.Store().get(name));
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
          cove.formatForward(f),
        ]),
      ));
    });
}

/** Registers `cove network create|ls|rm` (and the hidden `switch`, which cove starts itself). */
export function registerNetwork(program: Command): void {
  const net = program.command("network")
    .description("private networks between VMs: create, ls, rm");
  net.command("create")
    .description("create a cove network (QEMU VMs join it through cove's switch)")
    .argument("<name>", "network name")
    .option("--subnet <cidr>", "IPv4 subnet, e.g. 10.250.0.0/24 (default: a free 10.250.N.0/24)")
    .option("--mode <mode>", "host (VMs and host only) or shared (vz: with NAT out)", "host")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const cove = await import("../../mod.ts");
      if (opts.mode !== "host" && opts.mode !== "shared") {
        throw new cove.CoveError("usage.mode", `--mode: '${opts.mode}' is not host or shared`, {
          exit: cove.ExitCode.Usage,
        });
      }
      const info = await new cove.NetworkStore(cove.coveHome()).create(name, {
        subnet: opts.subnet,
        mode: opts.mode,
      });
      if (opts.format === "json") outJson(info);
      else out(`created network ${info.name} (${info.subnet}, ${info.mode})`);
    });
  net.command("ls")
    .description("list cove networks with their subnet, mode and member VMs")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (opts) => {
      const cove = await import("../../mod.ts");
      const home = cove.coveHome();
      const members = await cove.networkMembers(home);
      const rows = (await new cove.NetworkStore(home).list()).map((n) => ({
        ...n,
        members: members.get(n.name) ?? [],
      }));
      if (opts.format === "json") {
        outJson(rows);
        return;
      }
      out(table(
        ["NAME", "SUBNET", "MODE", "MEMBERS"],
        rows.map((n) => [n.name, n.subnet, n.mode, n.members.join(",") || "-"]),
      ));
    });
  net.command("rm")
    .description("remove a cove network that no VM names any more")
    .argument("<name>", "network name")
    .action(async (name) => {
      const cove = await import("../../mod.ts");
      const home = cove.coveHome();
      await new cove.NetworkStore(home).remove(
        name,
        (await cove.networkMembers(home)).get(name) ?? [],
      );
      out(`removed network ${name}`);
    });
  net.command("switch", { hidden: true })
    .description("internal: run the Ethernet switch of a cove network")
    .argument("<name>", "network name")
    .action(async (name) => {
      const cove = await import("../../mod.ts");
      await cove.runSwitch(new cove.NetworkStore(cove.coveHome()), name);
    });
}
