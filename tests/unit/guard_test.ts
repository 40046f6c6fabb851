/**
 * The Linux-only guard (tests/helpers/guard.ts): skipped with the reason
 * elsewhere, and never skipped on Linux CI, where a skip fails the run.
 * Each case runs `deno test` on a small fixture in a child process.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { ROOT, withTempDir } from "../helpers/cli.ts";

const FIXTURE = join(ROOT, "tests", "unit", "fixtures", "guarded_fixture.ts");

async function denoTest(env: Record<string, string>) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", FIXTURE],
    env: { NO_COLOR: "1", ...env },
    clearEnv: false,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, text: d.decode(out.stdout) + d.decode(out.stderr) };
}

Deno.test("guard: on a Mac a Linux-only test is ignored with a line saying what it needs, and logged", () =>
  withTempDir(async (dir) => {
    const log = join(dir, "skips.jsonl");
    const r = await denoTest({ COVE_TEST_HOST_OS: "darwin", CI: "", COVE_TEST_SKIP_LOG: log });
    assertEquals(r.code, 0, r.text);
    assertMatch(
      r.text,
      /cove tests: skipping 'guarded: reads \/proc': it needs Linux: reads \/proc\/self\/stat/,
    );
    assertMatch(r.text, /guarded: reads \/proc \.\.\. ignored/);
    assertMatch(r.text, /guarded: a definition and fn \.\.\. ignored/);
    const lines = (await Deno.readTextFile(log)).trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(lines.map((l) => l.need), ["Linux", "Linux", "Linux"]);
  }));

Deno.test("guard: as a non-root user on Linux a root-only test is skipped, saying it needs root", async () => {
  const r = await denoTest({ COVE_TEST_HOST_UID: "1000", CI: "" });
  assertEquals(r.code, 0, r.text);
  assertMatch(r.text, /skipping 'guarded: needs root': it needs root: mounts a tmpfs/);
  assertMatch(r.text, /guarded: reads \/proc \.\.\. ok/);
  assertMatch(r.text, /guarded: a definition and fn \.\.\. ok/);
});

Deno.test({
  name: "guard: on Linux CI a Linux-only test that would be skipped fails the run instead",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const r = await denoTest({ COVE_TEST_HOST_UID: "1000", CI: "true" });
    assert(r.code !== 0, r.text);
    assertMatch(
      r.text,
      /a Linux-only test may not be skipped on Linux CI, and this one needs root: mounts a tmpfs/,
    );
  },
});
