/**
 * Store commands: create, list, get, set, edit, clone, rename, delete.
 * Parsing and printing only; the work is in core/vm.ts and core/store.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { stringify } from "yaml";
import { CoveError, ExitCode } from "../../core/errors.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Store, type VmSummary } from "../../core/store/store.ts";
import { createVm, getVm, setVm, showSize } from "../../core/vm.ts";
import { log, out, outJson, parseFormat, table } from "../output.ts";

const FORMAT_HELP = "output format: text or json";

function waitSeconds(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) {
    throw new CoveError("usage.wait", `--wait: '${v}' is not a whole number of seconds`, {
      hint: "give seconds, e.g. --wait 900",
      exit: ExitCode.Usage,
    });
  }
  return n;
}

function summaryRow(s: VmSummary): string[] {
  return [
    s.name,
    s.state,
    s.os ?? "-",
    s.arch ?? "-",
    s.cpus?.toString() ?? "-",
    showSize(s.memory),
    showSize(s.disk),
    s.engine ?? "-",
  ];
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
    .option("--user <name>", "macOS guests: the first account's short name (default admin)")
    .option("--full-name <name>", "macOS guests: the first account's full name")
    .option("--password-file <file>", "macOS guests: the account's password, one line (mode 0600)")
    .option("--password-stdin", "macOS guests: read the account's password from stdin")
    .option(
      "--wait <seconds>",
      "macOS guests: bound on the first boot's wait for ssh (default 600)",
      waitSeconds,
    )
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const store = new Store();
      if (opts.from?.startsWith("oci://")) {
        store.bundle(name); // validates the name first
        const { createFromOci } = await import("../../core/oci/create.ts");
        await createFromOci(store, name, opts.from, { insecure: false, concurrency: 4 });
        if (opts.format === "json") outJson(await getVm(store, name));
        else out(`created ${name}`);
        return;
      }
      const { isIpswSource, assertCanInstallMacOS } = await import("../../core/images/ipsw.ts");
      const ipsw = opts.from !== undefined && isIpswSource(opts.from);
      const asked = opts.passwordFile !== undefined || opts.passwordStdin === true;
      if (asked && !ipsw) {
        throw new CoveError(
          "usage.password",
          "--password-file and --password-stdin set a macOS guest's first account; they need --from ipsw:…",
          { hint: "Linux guests get cove's key through cloud-init", exit: ExitCode.Usage },
        );
      }
      if (ipsw) assertCanInstallMacOS();
      const mac = await import("../../mod.ts");
      const host = mac.detectHost();
      // Before the long install: the password (refused at once when bad), and what the host allows.
      const before = ipsw ? mac.provisioningPlan(host, undefined, asked) : undefined;
      if (before?.notice) log(before.notice);
      const secret = ipsw && before?.unattended
        ? await mac.resolvePassword({
          passwordFile: opts.passwordFile,
          passwordStdin: opts.passwordStdin,
        })
        : undefined;
      const fromSource = opts.from ? await sourceHandler(opts.from, opts.format) : undefined;
      const b = await createVm(store, name, {
        ...opts,
        os: opts.os ?? (ipsw ? "macos" : undefined),
        fromSource,
      });
      if (secret) {
        const plan = await mac.applyMacProvisioning(b, {
          password: secret.password,
          host,
          waitSeconds: opts.wait,
        });
        if (plan.notice) log(plan.notice);
        else {
          const spec = await b.readSpec();
          if (secret.generated) {
            log(
              `password of '${spec.provision.user}' in '${b.name}' (shown once; keep it): ${secret.password}`,
            );
          }
          log(`first boot: creating '${spec.provision.user}' and installing cove's ssh key`);
          await mac.startDetached(store, b.name, { timeoutMs: 120_000 });
          await mac.waitFirstBoot(b, (opts.wait ?? mac.FIRST_BOOT_WAIT_S) + 30);
          log(`ready: 'cove ssh ${b.name}'`);
        }
      }
      if (opts.format === "json") outJson(await getVm(store, b.name));
      else out(`created ${b.name}`);
    });

  program.command("list").alias("ls")
    .description("list VMs and their state")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .option("-q, --quiet", "print names only")
    .action(async (opts) => {
      const store = new Store();
      const { withLive } = await import("../../core/supervisor/live.ts");
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
            vms.map(summaryRow),
          ),
        );
      }
    });

  program.command("get")
    .description("show a VM: state, paths and its full spec")
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const store = new Store();
      const { withLive } = await import("../../core/supervisor/live.ts");
      const d = await withLive(store.bundle(name), await getVm(store, name));
      if (opts.format === "json") return outJson(d);
      out(
        table(["NAME", "STATE", "OS", "ARCH", "CPUS", "MEMORY", "DISK", "ENGINE"], [summaryRow(d)]),
      );
      out(`path: ${d.path}`);
      if (d.error) out(`error: ${d.error}`);
      if (d.macos) {
        out(`icloud: ${d.macos.icloud}`);
        if (d.macos.provision) out(`provision: ${d.macos.provision}`);
        if (d.macos.keyboard) out(`keyboard: ${d.macos.keyboard}`);
      }
      out(stringify({ spec: d.spec }, { lineWidth: 0 }).trimEnd());
    });

  program.command("set")
    .description("change a VM's CPUs, memory, disk size or display")
    .argument("<name>", "VM name")
    .option("--cpus <n>", "virtual CPUs")
    .option("--memory <size>", "memory, e.g. 8GiB")
    .option("--disk-size <size>", "grow the root disk (VM must be stopped)")
    .option("--display <WxH[@PPI]|none>", "display size, e.g. 1920x1080@144, or none")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
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
      const b = await new Store().get(name);
      await editSpec(b.specPath, async (text) => {
        await b.writeSpec(parseSpec(text, "cove.yaml"));
      });
      out(`saved ${name}`);
    });

  program.command("clone")
    .description("clone a VM (copy-on-write disks, new MAC and identity), or pull REF into NEW")
    .argument("<src>", "a VM name, or a registry reference")
    .argument("<new>", "the new VM's name")
    .option("--insecure", "allow plain http to the registry")
    .option("--concurrency <n>", "parallel layer transfers", "4")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (src, dst, opts) => {
      const store = new Store();
      if (looksLikeReference(src)) {
        const { createFromOci } = await import("../../core/oci/create.ts");
        await createFromOci(store, dst, src, {
          insecure: !!opts.insecure,
          concurrency: Number(opts.concurrency),
        });
      } else {
        await store.clone(src, dst);
      }
      if (opts.format === "json") outJson(await getVm(store, dst));
      else out(`cloned ${src} to ${dst}`);
    });

  program.command("rename")
    .description("rename a stopped VM")
    .argument("<old>", "current name")
    .argument("<new>", "new name")
    .action(async (from, to) => {
      await new Store().rename(from, to);
      out(`renamed ${from} to ${to}`);
    });

  program.command("delete").alias("rm")
    .description("delete VMs (stopped, or with --force stop them first)")
    .argument("<names...>", "VM names")
    .option("-f, --force", "stop running VMs first")
    .action(async (names, opts) => {
      const store = new Store();
      for (const name of names) {
        const b = await store.get(name);
        if (opts.force && (await b.isRunning())) {
          const { stopVm } = await import("../../core/supervisor/client.ts");
          await stopVm(b, { force: true, timeoutSeconds: 10 });
        }
        await store.delete(name);
        out(`deleted ${name}`);
      }
    });
}

/** A registry reference (host/repo:tag) rather than a VM name. */
function looksLikeReference(s: string): boolean {
  return s.startsWith("oci://") || (s.includes("/") && !s.startsWith("/") && !s.startsWith("."));
}

/** Resolves `--from` into a populate step for the staging bundle. */
async function sourceHandler(src: string, format: "text" | "json") {
  const { prepareSource } = await import("../../core/images/source.ts");
  const { progressReporter } = await import("../progress.ts");
  return await prepareSource(src, { format, onProgress: progressReporter(format) });
}

/** Opens $EDITOR on a copy; saves only when the result validates. */
async function editSpec(path: string, save: (text: string) => Promise<void>): Promise<void> {
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
