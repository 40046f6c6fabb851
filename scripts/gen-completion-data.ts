/**
 * Writes cli/completion_data.json: what `cove complete` needs of the
 * command tree (cli/completions.ts `completionData`), so a TAB press need
 * not build the tree; and cli/help_data.json, the main help text, so
 * `cove help` need not either. Run it after changing commands, options or their
 * descriptions; tests/unit/completions_test.ts fails until you do.
 *
 * Usage: `deno run -A scripts/gen-completion-data.ts`
 * @module
 */
import { buildProgram, mainHelp } from "../cli/program.ts";
import { completionData } from "../cli/completions.ts";

const path = new URL("../cli/completion_data.json", import.meta.url);
// deno-lint-ignore no-explicit-any
const data = completionData(buildProgram() as any);
await Deno.writeTextFile(path, JSON.stringify(data, null, 2) + "\n");
console.log(`wrote ${path.pathname}`);
const helpPath = new URL("../cli/help_data.json", import.meta.url);
await Deno.writeTextFile(helpPath, JSON.stringify(mainHelp(), null, 2) + "\n");
console.log(`wrote ${helpPath.pathname}`);
