/**
 * Guest agent commands: `cove agent NAME` (does it answer, its version and
 * commands; `--thaw` after a failed freeze) and `cove cp SRC DST` (files and,
 * with -r, directories, with NAME:PATH on either side). Parsing and
 * printing only; the work is in core/agent, reached through mod.ts, and
 * every command goes through the VM's supervisor.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { FORMAT_HELP, out, outJson, parseFormat } from "../output.ts";

async function readStdin(limit: number): Promise<Uint8Array | undefined> {
  if (Deno.stdin.isTerminal()) return undefined;
  const parts: Uint8Array[] = [];
  let n = 0;
  const buf = new Uint8Array(65536);
  while (n <= limit) {
    const k = await Deno.stdin.read(buf);
    if (k === null) break;
    parts.push(buf.slice(0, k));
    n += k;
  }
  const { concatBytes } = await import("../../mod.ts");
  return concatBytes(parts);
}

async function writeAllTo(w: { write(b: Uint8Array): Promise<number> }, b: Uint8Array) {
  let off = 0;
  while (off < b.length) off += await w.write(b.subarray(off));
}

/**
 * `cove exec --via agent`: runs the command through the guest agent and
 * exits with its code. Used by the exec command in access.ts.
 */
export async function execViaAgent(
  name: string,
  command: string[],
  opts: { timeout?: number; stdinLimit: number },
): Promise<number> {
  const cove = await import("../../mod.ts");
  const b = await new cove.Store().get(name);
  const spec = await b.readSpec();
  if (!spec.agent) {
    throw new cove.CoveError(
      "agent.disabled",
      `the guest agent of '${name}' is turned off (agent: false in its spec)`,
      {
        hint:
          `set 'agent: true' in its cove.yaml, restart it, and install qemu-guest-agent in the guest`,
        exit: cove.ExitCode.Host,
      },
    );
  }
  const agent = await cove.agentOf(b);
  const stdin = await readStdin(opts.stdinLimit);
  const r = await cove.agentExec(agent, command, { stdin, timeoutSeconds: opts.timeout });
  await writeAllTo(Deno.stdout, r.stdout);
  await writeAllTo(Deno.stderr, r.stderr);
  if (r.truncated) throw cove.truncatedError(command);
  return r.code;
}

/** Registers agent and cp. */
export function register(program: Command): void {
  program.command("agent")
    .description("show whether a running VM's guest agent answers, its version and commands")
    .argument("<name>", "VM name")
    .option("--thaw", "thaw the guest's filesystems (after a failed freeze)")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const cove = await import("../../mod.ts");
      const b = await new cove.Store().get(name);
      if (opts.thaw) {
        const agent = await cove.agentOf(b);
        const n = await agent.command<number>("guest-fsfreeze-thaw", undefined, {
          timeoutMs: 60_000,
        });
        if (opts.format === "json") outJson({ name, thawed: n });
        else out(`thawed ${n} filesystem${n === 1 ? "" : "s"} in ${name}`);
        return;
      }
      const st = await cove.agentStatus(b);
      if (opts.format === "json") outJson({ name, ...st });
      else if (st.answers) {
        out(`${name}: the guest agent answers (qemu-guest-agent ${st.version})`);
        out(`commands: ${(st.commands ?? []).join(" ")}`);
      }
      if (!st.answers) {
        throw new cove.CoveError(
          st.enabled ? "agent.unavailable" : "agent.disabled",
          st.enabled
            ? `the guest agent of '${name}' does not answer: ${st.reason}`
            : `the guest agent of '${name}' is turned off (agent: false in its spec)`,
          {
            hint: "install and enable qemu-guest-agent in the guest, and keep 'agent: true'",
            exit: cove.ExitCode.Host,
          },
        );
      }
    });

  program.command("cp")
    .description("copy files between the host and a VM through its guest agent (NAME:PATH)")
    .argument("<src>", "source: a host path or NAME:PATH")
    .argument("<dst>", "destination: a host path or NAME:PATH")
    .option("-r, --recursive", "copy directories")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (srcArg, dstArg, opts) => {
      const cove = await import("../../mod.ts");
      const src = cove.parseCpEndpoint(srcArg);
      const dst = cove.parseCpEndpoint(dstArg);
      if ((src.vm === undefined) === (dst.vm === undefined)) {
        throw new cove.CoveError(
          "cp.usage",
          src.vm
            ? "cove cp copies between the host and one VM, not between VMs"
            : "neither side names a VM",
          {
            hint: "write the guest side as NAME:PATH, e.g. cove cp dev:/etc/hosts ./hosts",
            exit: cove.ExitCode.Usage,
          },
        );
      }
      const vm = (src.vm ?? dst.vm)!;
      const b = await new cove.Store().get(vm);
      const spec = await b.readSpec();
      if (!spec.agent) {
        throw new cove.CoveError(
          "agent.disabled",
          `the guest agent of '${vm}' is turned off (agent: false in its spec)`,
          {
            hint: "set 'agent: true' in its cove.yaml, restart it, and install qemu-guest-agent",
            exit: cove.ExitCode.Host,
          },
        );
      }
      const agent = await cove.agentOf(b);
      const r = src.vm
        ? await cove.copyFromGuest(agent, vm, src.path, dst.path, { recursive: opts.recursive })
        : await cove.copyToGuest(agent, vm, src.path, dst.path, { recursive: opts.recursive });
      if (opts.format === "json") outJson(r);
    });
}
