/**
 * `cove snapshot save|ls|restore|rm`: snapshots of a VM's disks and, while
 * it runs, its memory. Parsing and printing only; the work is in
 * core/snapshot/, reached through mod.ts.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { FORMAT_HELP, out, outJson, parseFormat, table } from "../output.ts";

/** Registers the snapshot commands. */
export function register(program: Command): void {
  const snap = program.command("snapshot")
    .description("save, list, restore and remove snapshots of a VM (disks, and memory if running)");

  snap.command("save")
    .description(
      "snapshot a VM: its disks, and its memory if it runs (the guest is only paused); TAG defaults to the time",
    )
    .argument("<name>", "VM name")
    .argument("[tag]", "the snapshot's tag")
    .option("--disk-only", "the disks only, even of a running VM")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, tag, opts) => {
      const { formatSize, saveSnapshot, Store } = await import("../../mod.ts");
      const r = await saveSnapshot(new Store(), name, { tag, diskOnly: opts.diskOnly });
      if (opts.format === "json") outJson(r);
      else {
        out(
          `saved snapshot ${r.tag} of ${name} (${r.memory ? "memory and disks" : "disks"}, ${
            formatSize(r.allocated)
          })` + (r.memory || r.pausedMs > 0 ? `; paused ${Math.round(r.pausedMs)} ms` : "") +
            (r.frozen ? "; file systems frozen for the copy" : ""),
        );
      }
    });

  snap.command("ls")
    .description("list a VM's snapshots")
    .argument("<name>", "VM name")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, opts) => {
      const { formatSize, listVmSnapshots, Store } = await import("../../mod.ts");
      const list = await listVmSnapshots(new Store(), name);
      if (opts.format === "json") {
        outJson(list);
        return;
      }
      out(table(
        ["TAG", "CREATED", "MEMORY", "ALLOCATED"],
        list.map((s) => [s.tag, s.created, s.memory ? "yes" : "no", formatSize(s.allocated)]),
      ));
    });

  snap.command("restore")
    .description(
      "restore a snapshot: the disks, and with memory the VM runs on from where it was saved",
    )
    .argument("<name>", "VM name")
    .argument("<tag>", "the snapshot's tag")
    .option("-f, --force", "power the VM off first if it runs")
    .option("--disk-only", "restore the disks only (the VM stays stopped)")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, tag, opts) => {
      const { restoreSnapshot, Store } = await import("../../mod.ts");
      const r = await restoreSnapshot(new Store(), name, tag, {
        force: opts.force,
        diskOnly: opts.diskOnly,
      });
      if (opts.format === "json") outJson(r);
      else {
        out(
          `restored snapshot ${tag} of ${name}` +
            (r.started ? "; it runs from where it was saved" : " (disks; the VM is stopped)"),
        );
      }
    });

  snap.command("rm")
    .description("remove snapshots of a VM")
    .argument("<name>", "VM name")
    .argument("<tags...>", "the snapshots' tags")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, tags, opts) => {
      const { removeVmSnapshots, Store } = await import("../../mod.ts");
      const removed = await removeVmSnapshots(new Store(), name, tags);
      if (opts.format === "json") outJson({ name, removed });
      else out(`removed ${removed.map((t) => `snapshot ${t}`).join(", ")} of ${name}`);
    });
}
