/**
 * Host and tooling commands: schema, doctor, completions, version, and the
 * hidden `complete` callback used by the completion scripts. None of these
 * loads a native library except `doctor` and `version`, which ask the
 * engines (lazily) what this host can do.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import type { Shell } from "../completions.ts";
import { FlagError, FORMAT_HELP, out, outJson, parseFormat } from "../output.ts";
import { VERSION } from "../version.ts";

/** Registers the host and tooling commands. */
export function register(program: Command): void {
  program.command("schema")
    .description("print the JSON Schema of cove.yaml (for editors)")
    .action(async () => outJson(await (await import("../../mod.ts")).jsonSchema()));

  program.command("doctor")
    .description("check this host: OS, engines, QEMU and accelerator, the VZ library")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (opts) => {
      const { doctor, doctorText } = await import("../../mod.ts");
      const report = await doctor();
      if (opts.format === "json") outJson(report);
      else out(doctorText(report));
    });

  program.command("completions")
    .description("print shell completions: bash, zsh or fish")
    .argument("<shell>", "bash, zsh or fish")
    .action(async (shell) => {
      const { printScript, SHELLS } = await import("../completions.ts");
      if (!(SHELLS as readonly string[]).includes(shell)) {
        throw new FlagError(
          "usage.shell",
          `'${shell}' is not a supported shell`,
          "use bash, zsh or fish",
        );
      }
      printScript(shell as Shell);
    });

  program.command("complete", { hidden: true })
    .description("completion callback for the shell scripts")
    .argument("[words...]")
    .allowUnknownOption(true)
    .helpOption(false)
    .action(async (words) => {
      const [{ Store }, { completionData, completionTree }] = await Promise.all([
        import("../../mod.ts"),
        import("../completions.ts"),
      ]);
      // Names only: no spec is read and nothing is probed or changed on a TAB press.
      const names = await new Store().names().catch(() => []);
      // deno-lint-ignore no-explicit-any
      completionTree(completionData(program as any), () => names).parse(words ?? []);
    });

  program.command("version")
    .description("print the versions of cove, Deno, the VZ library and the engines")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (opts) => {
      const { versionInfo } = await import("../../mod.ts");
      const v = await versionInfo();
      if (opts.format === "json") return outJson(v);
      out(`cove ${VERSION}`);
      out(`deno ${v.deno}`);
      out(`vz library ABI ${v.vzAbi ?? "not loaded"}${v.vzAbiNote ? ` (${v.vzAbiNote})` : ""}`);
      out(
        `engines: ${
          v.engines.map((e) => `${e.id}${e.available ? "" : " (unavailable)"}`).join(", ")
        }`,
      );
    });
}
