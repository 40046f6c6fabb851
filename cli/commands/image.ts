/**
 * Image cache commands: `cove image ls` (downloads and pulled OCI images,
 * most recently used first), `cove image prune` (by age and/or a size
 * budget), and `cove image catalog` (the known aliases).
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { FORMAT_HELP, log, out, outJson, parseFormat, table } from "../output.ts";

function ago(ms: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return `${s}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  if (s < 129600) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function shortId(id: string): string {
  return id.startsWith("sha256:") ? id.slice(0, 19) : id;
}

/** Registers `cove image`. */
export function register(program: Command): void {
  const image = program.command("image").description("manage cached images: ls, prune, catalog");

  image.command("ls").alias("list")
    .description("list cached images (downloads and pulled OCI images)")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (opts) => {
      const { listImageCache, formatSize } = await import("../../mod.ts");
      const entries = await listImageCache();
      if (opts.format === "json") {
        outJson(entries.map((e) => ({ ...e, lastUsed: new Date(e.lastUsed).toISOString() })));
        return;
      }
      if (!entries.length) {
        log("the image cache is empty");
        return;
      }
      out(table(
        ["KIND", "ID", "SIZE", "USED", "SOURCE"],
        entries.map((e) => [
          e.partial ? `${e.kind} (partial)` : e.kind,
          shortId(e.id),
          formatSize(e.size),
          ago(e.lastUsed),
          e.source,
        ]),
      ));
      const total = entries.reduce((s, e) => s + e.size, 0);
      log(`${entries.length} entr${entries.length === 1 ? "y" : "ies"}, ${formatSize(total)}`);
    });

  image.command("prune")
    .description(
      "remove cached images: all, or those unused for a while, or the least recently used over a budget",
    )
    .option("--older-than <duration>", "remove entries unused for longer than this (e.g. 30d, 12h)")
    .option(
      "--budget <size>",
      "then keep at most this much, removing least recently used first (e.g. 20GiB)",
    )
    .option("--dry-run", "only show what would be removed")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (opts) => {
      const { pruneImageCache, parseFlag, formatSize } = await import("../../mod.ts");
      const r = await pruneImageCache({
        olderThanMs: opts.olderThan !== undefined
          ? parseFlag("--older-than", opts.olderThan)
          : undefined,
        budget: opts.budget !== undefined ? parseFlag("--budget", opts.budget) : undefined,
        dryRun: !!opts.dryRun,
      });
      if (opts.format === "json") {
        outJson({ ...r, dryRun: !!opts.dryRun });
        return;
      }
      for (const e of r.removed) {
        out(
          `${opts.dryRun ? "would remove" : "removed"} ${e.kind} ${shortId(e.id)} ${
            formatSize(e.size)
          } ${e.source}`,
        );
      }
      log(
        `${opts.dryRun ? "would free" : "freed"} ${formatSize(r.freed)}; kept ${r.kept} (${
          formatSize(r.keptSize)
        })`,
      );
    });

  image.command("catalog")
    .description("list the image aliases 'cove create --from' knows")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (opts) => {
      const rows = await (await import("../../mod.ts")).imageCatalog();
      if (opts.format === "json") outJson(rows);
      else {out(
          table(
            ["NAME", "ARCH", "ALSO", "DESCRIPTION"],
            rows.map((r) => [r.name, r.arch.join(","), r.aliases.join(",") || "-", r.description]),
          ),
        );}
    });
}
