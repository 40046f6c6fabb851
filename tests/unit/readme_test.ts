/** README.md stays true: the generated config reference is current and every command is documented. */
import { assert, assertEquals } from "../helpers/assert.ts";
import { render } from "../../scripts/gen-readme.ts";
import { buildProgram } from "../../cli/program.ts";

const readme = await Deno.readTextFile(new URL("../../README.md", import.meta.url));

Deno.test("readme: the config reference matches the schema (deno run -A scripts/gen-readme.ts updates it)", () => {
  assertEquals(readme, render(readme));
});

Deno.test("readme: every cove command is in the command reference", () => {
  for (const cmd of buildProgram().commands) {
    if (cmd.name() === "complete" || cmd.name() === "help") continue;
    const parent = cmd.commands.length
      ? cmd.commands.map((c) => `cove ${cmd.name()} ${c.name()}`)
      : [`cove ${cmd.name()}`];
    for (const usage of parent) assert(readme.includes("`" + usage), `README documents '${usage}'`);
  }
});

Deno.test("readme: names the two make commands and the exact test command CI runs", async () => {
  assert(readme.includes("`make demo`") && readme.includes("`make test`"));
  const ci = await Deno.readTextFile(new URL("../../.ci/run", import.meta.url));
  assert(/\nmake setup\nmake test\n/.test(ci), ".ci/run runs make setup then make test");
});
