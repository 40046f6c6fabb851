/**
 * Shell completions for bash, zsh and fish, generated from the command tree
 * with @bomb.sh/tab. The scripts call back `cove complete -- WORDS...` at
 * TAB time, so VM names complete live. Nothing here loads a native library.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { RootCommand, script } from "@bomb.sh/tab";
import type { Command as TabCommand } from "@bomb.sh/tab";

/** Shells cove writes completions for. */
export const SHELLS = ["bash", "zsh", "fish"] as const;
export type Shell = (typeof SHELLS)[number];

/** Arguments whose values are VM names. */
const VM_ARGS = new Set(["name", "names", "old", "src"]);

type AnyCommand = Command<unknown[], Record<string, unknown>, Record<string, unknown>>;

/** An option, as completion sees it. */
export interface CompletionOption {
  long: string;
  short?: string;
  description: string;
  /** The values it completes, when it takes one (undefined: a flag). */
  values?: string[];
}

/** A command (`image pull` is one path), as completion sees it. */
export interface CompletionCommand {
  path: string;
  description: string;
  options: CompletionOption[];
  /** Arguments; `vm` ones complete VM names, `shell` ones the shells. */
  args: { name: string; kind: "vm" | "shell" | "other"; variadic: boolean }[];
}

/**
 * What completion needs of the command tree, as plain data: the program's
 * options, then every command but `complete`, depth first. `cove complete`
 * reads a copy of it (completion_data.json) instead of building the tree;
 * tests/unit/completions_test.ts keeps that copy current.
 */
export interface CompletionData {
  options: CompletionOption[];
  commands: CompletionCommand[];
}

/** The completion data of a commander tree. */
export function completionData(program: AnyCommand): CompletionData {
  const options = (cmd: AnyCommand): CompletionOption[] => {
    const out: CompletionOption[] = [];
    for (const o of cmd.options) {
      const long = o.long?.replace(/^--/, "");
      if (!long) continue;
      const short = o.short?.replace(/^-/, "");
      const opt: CompletionOption = { long, description: o.description };
      if (short) opt.short = short;
      if (o.required || o.optional) {
        opt.values = [...(o.argChoices ?? (long === "format" ? ["text", "json"] : []))];
      }
      out.push(opt);
    }
    return out;
  };
  const commands: CompletionCommand[] = [];
  const walk = (cmd: AnyCommand, prefix: string) => {
    for (const sub of cmd.commands as AnyCommand[]) {
      if (sub.name() === "complete") continue;
      const path = prefix ? `${prefix} ${sub.name()}` : sub.name();
      commands.push({
        path,
        description: sub.description(),
        options: options(sub),
        args: sub.registeredArguments.map((a) => ({
          name: a.name(),
          kind: VM_ARGS.has(a.name()) ? "vm" : a.name() === "shell" ? "shell" : "other",
          variadic: a.variadic,
        })),
      });
      walk(sub, path);
    }
  };
  walk(program, "");
  return { options: options(program), commands };
}

/** Builds the tab completion tree of {@link CompletionData}. */
export function completionTree(data: CompletionData, vmNames: () => string[]): RootCommand {
  const root = new RootCommand();
  const addOptions = (tab: TabCommand, options: CompletionOption[]) => {
    for (const o of options) {
      if (o.values) {
        // A handler marks the option as taking a value.
        const values = o.values;
        tab.option(o.long, o.description, (complete) => {
          for (const c of values) complete(c, "");
        }, o.short);
      } else if (o.short) tab.option(o.long, o.description, o.short);
      else tab.option(o.long, o.description);
    }
  };
  addOptions(root, data.options);
  for (const c of data.commands) {
    const tab = root.command(c.path, c.description);
    addOptions(tab, c.options);
    for (const a of c.args) {
      if (a.kind === "vm") {
        tab.argument(a.name, (complete) => {
          for (const n of vmNames()) complete(n, "VM");
        }, a.variadic);
      } else if (a.kind === "shell") {
        tab.argument(a.name, (complete) => {
          for (const s of SHELLS) complete(s, "shell");
        });
      } else tab.argument(a.name, undefined, a.variadic);
    }
  }
  return root;
}

/**
 * Answers `cove complete -- WORDS...` (what the scripts run on TAB) from
 * completion_data.json, without building the command tree: the same tree,
 * so the same answers.
 */
export async function completeWords(words: string[]): Promise<void> {
  const [{ Store }, { default: data }] = await Promise.all([
    import("../mod.ts"),
    import("./completion_data.json", { with: { type: "json" } }),
  ]);
  // Names only: no spec is read and nothing is probed or changed on a TAB press.
  const names = await new Store().names().catch(() => []);
  completionTree(data as CompletionData, () => names).parse(words);
}

/** Prints the completion script for `shell` to stdout. */
export function printScript(shell: Shell, executable = "cove"): void {
  script(shell, "cove", executable);
}
