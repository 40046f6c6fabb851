/**
 * `cove complete -- WORDS` answers from cli/completion_data.json, a copy of
 * what completion needs of the command tree: the copy must be current, and
 * the answers must be those of the tree itself.
 */
import { assertEquals } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { buildProgram, mainHelp } from "../../cli/program.ts";
import { completionData } from "../../cli/completions.ts";
import data from "../../cli/completion_data.json" with { type: "json" };
import help from "../../cli/help_data.json" with { type: "json" };
import { parseSpec } from "../../core/spec/load.ts";
import { Store } from "../../core/store/store.ts";

Deno.test("completions: completion_data.json is the command tree's (else run scripts/gen-completion-data.ts)", () => {
  // deno-lint-ignore no-explicit-any
  assertEquals(data, JSON.parse(JSON.stringify(completionData(buildProgram() as any))));
});

Deno.test("help: help_data.json is the tree's main help (else run scripts/gen-completion-data.ts), and 'cove help', '--help' and '-h' print it", async () => {
  assertEquals(help, mainHelp());
  for (const args of [["help"], ["--help"], ["-h"]]) {
    const r = await cove(Deno.cwd(), args);
    assertEquals([r.code, r.stdout], [0, help.main], args.join(" "));
  }
});

Deno.test("completions: TAB answers from the copy are the command tree's answers", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    for (const n of ["alpha", "Beta", "alpha-2"]) await store.create(n, { spec: parseSpec("") });
    for (
      const words of [
        [""],
        ["cr"],
        ["get", ""],
        ["get", "al"],
        ["delete", "alpha", ""],
        ["image", ""],
        ["completions", ""],
        ["list", "--format", ""],
        ["start", "--"],
        ["nosuch", ""],
      ]
    ) {
      // `complete -- WORDS` takes the fast path; without `--` the parser runs the command.
      const fast = await cove(home, ["complete", "--", ...words]);
      const tree = words.some((w) => w.startsWith("-"))
        ? undefined
        : await cove(home, ["complete", ...words]);
      assertEquals(fast.code, 0, fast.stderr);
      if (tree) assertEquals(fast.stdout, tree.stdout, words.join(" "));
    }
    const names = await cove(home, ["complete", "--", "get", ""]);
    assertEquals(names.stdout, "alpha\tVM\nalpha-2\tVM\nBeta\tVM\n:4\n");
  }));
