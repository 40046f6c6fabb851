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

/** Mirrors the commander tree into a tab completion tree. */
export function completionTree(program: AnyCommand, vmNames: () => string[]): RootCommand {
  const root = new RootCommand();
  const addOptions = (tab: TabCommand, cmd: AnyCommand) => {
    for (const o of cmd.options) {
      const long = o.long?.replace(/^--/, "");
      if (!long) continue;
      const short = o.short?.replace(/^-/, "");
      if (o.required || o.optional) {
        // A handler marks the option as taking a value.
        const choices = o.argChoices ?? (long === "format" ? ["text", "json"] : []);
        tab.option(long, o.description, (complete) => {
          for (const c of choices) complete(c, "");
        }, short);
      } else if (short) tab.option(long, o.description, short);
      else tab.option(long, o.description);
    }
  };
  addOptions(root, program);
  const walk = (cmd: AnyCommand, prefix: string) => {
    for (const sub of cmd.commands as AnyCommand[]) {
      if (sub.name() === "complete") continue;
      const path = prefix ? `${prefix} ${sub.name()}` : sub.name();
      const tab = root.command(path, sub.description());
      addOptions(tab, sub);
      for (const a of sub.registeredArguments) {
        const name = a.name();
        if (VM_ARGS.has(name)) {
          tab.argument(name, (complete) => {
            for (const n of vmNames()) complete(n, "VM");
          }, a.variadic);
        } else if (name === "shell") {
          tab.argument(name, (complete) => {
            for (const s of SHELLS) complete(s, "shell");
          });
        } else tab.argument(name, undefined, a.variadic);
      }
      walk(sub, path);
    }
  };
  walk(program, "");
  return root;
}

/** Prints the completion script for `shell` to stdout. */
export function printScript(shell: Shell, executable = "cove"): void {
  script(shell, "cove", executable);
}
