/**
 * Store commands: create, list, get, set, edit, clone, rename, delete.
 * Parsing and printing only; the work is in the library (mod.ts), which
 * each command loads when it runs.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { basename } from "node:path";
import type { VmSummary } from "../../mod.ts";
import { type Format, FORMAT_HELP, log, out, outJson, parseFormat, table } from "../output.ts";

function summaryRow(s: VmSummary, showSize: (n: number | undefined) => string): string[] {
  return [
    s.name,
    s.busy ? `${s.state} (${s.busy})` : s.state,
    s.os ?? "-",
    s.arch ?? "-",
    s.cpus?.toString() ?? "-",
    showSize(s.memory),
    showSize(s.disk),
    s.engine ?? "-",
  ];
}

/** `cove list` (also run by cli/main.ts's fast path, without the parser). */
export async function listCommand(opts: { format: Format; quiet?: boolean }): Promise<void> {
  const { Store, withLive, showSize } = await import("../../mod.ts");
  const store = new Store();
  const vms = await Promise.all(
    (await store.list()).map((v) => withLive(store.bundle(v.name), v, { details: false })),
  );
  if (opts.quiet) {
    for (const v of vms) out(v.name);
  } else if (opts.format === "json") {
    outJson(vms);
  } else if (vms.length === 0) {
    log("no VMs yet: create one with 'cove create NAME'");
  } else {
    out(
      table(
        ["NAME", "STATE", "OS", "ARCH", "CPUS", "MEMORY", "DISK", "ENGINE"],
        vms.map((v) => summaryRow(v, showSize)),
      ),
    );
  }
}

/** `cove get NAME` (also run by cli/main.ts's fast path, without the parser). */
export async function getCommand(name: string, opts: { format: Format }): Promise<void> {
  const { Store, getVm, runsAsYou, showSize } = await import("../../mod.ts");
  const d = await getVm(new Store(), name, { live: true });
  const agent = d.agent!;
  if (opts.format === "json") return outJson(d);
  out(
    table(["NAME", "STATE", "OS", "ARCH", "CPUS", "MEMORY", "DISK", "ENGINE"], [
      summaryRow(d, showSize),
    ]),
  );
  out(`path: ${d.path}`);
  if (d.error) out(`error: ${d.error}`);
  out(
    `agent: ${
      agent.answers
        ? `answers (qemu-guest-agent ${agent.version ?? "?"})`
        : `${agent.enabled ? "on" : "off"}, not answering (${agent.reason})`
    }`,
  );
  if (d.macos) {
    out(`icloud: ${d.macos.icloud}`);
    if (d.macos.provision) out(`provision: ${d.macos.provision}`);
    if (d.macos.keyboard) out(`keyboard: ${d.macos.keyboard}`);
  }
  for (const line of runsAsYou(d.spec)) out(`note: ${line}`);
  // The yaml package costs as much as the rest of the command; most specs print without it.
  const { plainYaml } = await import("../plain_yaml.ts");
  const text = plainYaml({ spec: d.spec }) ??
    (await import("yaml")).stringify({ spec: d.spec }, { lineWidth: 0 });
  out(text.trimEnd());
}

/** Registers the store commands. */
export function register(program: Command): void {
  program.command("create")
    .description("create a VM (from a source, a cove.yaml, or flags)")
    .argument("<name>", "the new VM's name")
    .option("--from <src>", "source: disk image, ISO, URL, alias (debian:12), ipsw:, oci://")
    .option("--config <file>", "a cove.yaml to start from")
    .option("--os <os>", "guest OS: macos or linux")
    .option("--arch <arch>", "guest architecture: arm64 or x86_64")
    .option("--cpus <n>", "virtual CPUs")
    .option("--memory <size>", "memory, e.g. 4GiB")
    .option("--disk-size <size>", "root disk size, e.g. 64GiB (disks only grow)")
    .option("--engine <engine>", "auto, vz or qemu")
    .option("--kernel <file>", "boot this Linux kernel directly")
    .option("--initrd <file>", "initial ramdisk for --kernel")
    .option("--cmdline <args>", "kernel command line for --kernel")
    .option("--insecure", "oci:// sources: allow plain http to the registry")
    .option("--concurrency <n>", "oci:// sources: parallel layer transfers (1 to 64)", "4")
    .option("--user <name>", "macOS guests: the first account's short name (default admin)")
    .option("--full-name <name>", "macOS guests: the first account's full name")
    .option("--password-file <file>", "macOS guests: the account's password, one line (mode 0600)")
    .option("--password-stdin", "macOS guests: read the account's password from stdin")
    .option(
      "--wait <duration>",
      "macOS guests: bound on the first boot's wait for ssh, e.g. 15m (default 10m)",
    )
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const cove = await import("../../mod.ts");
      const { progressReporter } = await import("../progress.ts");
      const store = new cove.Store();
      const { format, wait, ...flags } = opts;
      const waitSeconds = wait !== undefined ? cove.parseFlag("--wait", wait) / 1000 : undefined;
      const b = await cove.createVm(store, name, {
        ...flags,
        concurrency: cove.parseFlag("--concurrency", flags.concurrency),
        onProgress: opts.from ? progressReporter(format) : undefined,
        firstBoot: true,
        waitSeconds,
        onFirstBoot: (e) => {
          switch (e.type) {
            case "notice":
              return log(e.message);
            case "password":
              return log(
                `password of '${e.user}' in '${name}' (shown once; keep it): ${e.password}`,
              );
            case "first-boot":
              return log(`first boot: creating '${e.user}' and installing cove's ssh key`);
            case "ready":
              return log(`ready: 'cove ssh ${name}'`);
          }
        },
      });
      if (format === "json") outJson(await cove.getVm(store, b.name));
      else out(`created ${b.name}`);
    });

  program.command("list").alias("ls")
    .description("list VMs and their state")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .option("-q, --quiet", "print names only")
    .action((opts) => listCommand(opts));

  program.command("get")
    .description("show a VM: state, paths and its full spec")
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action((name, opts) => getCommand(name, opts));

  program.command("set")
    .description("change a VM's CPUs, memory, disk size or display")
    .argument("<name>", "VM name")
    .option("--cpus <n>", "virtual CPUs")
    .option("--memory <size>", "memory, e.g. 8GiB")
    .option("--disk-size <size>", "grow the root disk (VM must be stopped)")
    .option("--display <WxH[@PPI]|none>", "display size, e.g. 1920x1080@144, or none")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { Store, setVm } = await import("../../mod.ts");
      const store = new Store();
      const running = await (await store.get(name)).isRunning();
      const d = await setVm(store, name, opts);
      if (opts.format === "json") return outJson(d);
      out(`updated ${name}` + (running ? " (takes effect at the next start)" : ""));
    });

  program.command("edit")
    .description("edit a VM's cove.yaml in $EDITOR; it is validated before saving")
    .argument("<name>", "VM name")
    .action(async (name) => {
      const { Store, parseSpec } = await import("../../mod.ts");
      const b = await new Store().get(name);
      await editSpec(b.specPath, async (text) => {
        const spec = await parseSpec(text, basename(b.specPath));
        await b.withSpecLock(() => b.writeSpec(spec));
      });
      out(`saved ${name}`);
    });

  program.command("clone")
    .description(
      "clone a VM, running or not (copy-on-write disks, new MAC and identity), or pull REF into NEW",
    )
    .argument("<src>", "a VM name, or a registry reference")
    .argument("<new>", "the new VM's name")
    .option("--insecure", "allow plain http to the registry")
    .option("--concurrency <n>", "parallel layer transfers (1 to 64)", "4")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (src, dst, opts) => {
      const { Store, cloneVm, copyNote, getVm, parseFlag } = await import("../../mod.ts");
      const store = new Store();
      const concurrency = parseFlag("--concurrency", opts.concurrency);
      await cloneVm(store, src, dst, {
        insecure: !!opts.insecure,
        concurrency,
        onRunningCopy: (frozen) => log(copyNote(src, frozen)),
      });
      if (opts.format === "json") outJson(await getVm(store, dst));
      else out(`cloned ${src} to ${dst}`);
    });

  program.command("rename")
    .description("rename a stopped VM")
    .argument("<old>", "current name")
    .argument("<new>", "new name")
    .action(async (from, to) => {
      const { Store } = await import("../../mod.ts");
      await new Store().rename(from, to);
      out(`renamed ${from} to ${to}`);
    });

  program.command("delete").alias("rm")
    .description("delete VMs (stopped, or with --force stop them first)")
    .argument("<names...>", "VM names")
    .option("-f, --force", "stop running VMs first")
    .option(
      "--timeout <duration>",
      "with --force: how long a VM's supervisor may take to answer before cove kills the VM",
      "10s",
    )
    .action(async (names, opts) => {
      const { Store, deleteVm, parseFlag } = await import("../../mod.ts");
      const timeoutSeconds = parseFlag("--timeout", opts.timeout) / 1000;
      const store = new Store();
      for (const name of names) {
        const r = await deleteVm(store, name, { force: opts.force, timeoutSeconds });
        if (r.unresponsive) log(`warning: ${r.unresponsive}`);
        out(`deleted ${name}`);
      }
    });
}

/** Opens $EDITOR on a copy; saves only when the result validates. */
async function editSpec(path: string, save: (text: string) => Promise<void>): Promise<void> {
  const { CoveError, ExitCode } = await import("../../mod.ts");
  const editor = Deno.env.get("VISUAL") || Deno.env.get("EDITOR") || "vi";
  const tmp = await Deno.makeTempFile({ prefix: "cove-edit-", suffix: ".yaml" });
  try {
    await Deno.writeTextFile(tmp, await Deno.readTextFile(path));
    while (true) {
      const [bin, ...args] = editor.split(/\s+/);
      const st = await new Deno.Command(bin, {
        args: [...args, tmp],
        stdin: "inherit",
        stdout: "inherit",
        stderr: "inherit",
      })
        .spawn().status.catch((e) => {
          throw new CoveError("edit.editor", `could not run editor '${editor}': ${e.message}`, {
            hint: "set EDITOR to an installed editor",
          });
        });
      if (!st.success) {
        throw new CoveError("edit.aborted", `editor exited with ${st.code}; nothing saved`);
      }
      const text = await Deno.readTextFile(tmp);
      try {
        await save(text);
        return;
      } catch (e) {
        if (!(e instanceof CoveError) || !Deno.stdin.isTerminal()) throw e;
        log(`cove: ${e.line()}`);
        log("press Enter to edit again, or Ctrl-C to discard your changes");
        const buf = new Uint8Array(16);
        if ((await Deno.stdin.read(buf)) === null) {
          throw new CoveError("edit.aborted", "nothing saved", { exit: ExitCode.Usage });
        }
      }
    }
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}
