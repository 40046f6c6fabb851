/**
 * Concurrent `create` of one name from separate processes: exactly one
 * wins; every loser gets `vm.exists` (never an internal error from the
 * losing rename), and no staging directory is left behind.
 */
import { join } from "node:path";
import { assertEquals } from "../helpers/assert.ts";
import { withTempDir } from "../helpers/cli.ts";

const FIXTURE = new URL("../unit/fixtures/create_race.ts", import.meta.url).pathname;

Deno.test("eight processes creating one name at once, six times: one wins each time, the others get vm.exists, no staging is left", () =>
  withTempDir(async (home) => {
    for (let round = 0; round < 6; round++) {
      const go = join(home, `go-${round}`);
      const kids = Array.from({ length: 8 }, () =>
        new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", "--quiet", FIXTURE, go, `vm${round}`],
          env: { COVE_HOME: home },
          stdout: "piped",
        }).spawn());
      // Let every process load, then release them together.
      await new Promise((r) => setTimeout(r, 2500));
      await Deno.writeTextFile(go, "");
      const outcomes = await Promise.all(
        kids.map(async (k) => new TextDecoder().decode((await k.output()).stdout).trim()),
      );
      assertEquals(outcomes.filter((o) => o === "ok").length, 1, `round ${round}: ${outcomes}`);
      assertEquals(outcomes.filter((o) => o !== "ok" && o !== "vm.exists"), [], `round ${round}`);
    }
    assertEquals([...Deno.readDirSync(join(home, "tmp"))].map((e) => e.name), []);
  }));
