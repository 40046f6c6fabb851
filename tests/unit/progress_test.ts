/**
 * The one progress renderer (cli/progress.ts): on a terminal a single line
 * drawn over itself and cleared at the end, log lines above it; off a
 * terminal nothing but results and log lines.
 */
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, cove, ROOT, withTempDir } from "../helpers/cli.ts";
import { linuxTest } from "../helpers/guard.ts";
import { startLoopbackServer } from "../helpers/loopback_http.ts";
import { pct } from "../../cli/progress.ts";

const MiB = 2 ** 20;

function image(): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(4 * MiB);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

Deno.test("progress: percentages are floored, and a zero total is done", () => {
  assertEquals([pct(0, 10), pct(999, 1000), pct(5, 0)], ["0%", "99%", "100%"]);
});

Deno.test("progress: off a terminal a download draws no progress line", () =>
  withTempDir(async (home) => {
    const srv = startLoopbackServer();
    try {
      srv.files.set("/d.img", { body: image() });
      const r = await cove(home, ["create", "a", "--from", `${srv.base}/d.img`]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout, "created a\n");
      assert(!r.stderr.includes("\r"), JSON.stringify(r.stderr));
    } finally {
      await srv.close();
    }
  }));

linuxTest(
  "runs the CLI on a pseudo-terminal with util-linux's script(1)",
  "progress: on a terminal a download draws one line over itself and clears it at the end",
  () =>
    withTempDir(async (home) => {
      const srv = startLoopbackServer();
      try {
        srv.files.set("/d.img", { body: image() });
        const cmd = [
          Deno.execPath(),
          "run",
          "-A",
          "--quiet",
          CLI,
          "create",
          "a",
          "--from",
          `${srv.base}/d.img`,
        ]
          .map((a) => `'${a}'`).join(" ");
        const out = await new Deno.Command("script", {
          args: ["-qefc", cmd, "/dev/null"],
          env: { COVE_HOME: home, NO_COLOR: "1", COLUMNS: "100" },
          cwd: ROOT,
          stdout: "piped",
          stderr: "piped",
        }).output();
        const text = new TextDecoder().decode(out.stdout);
        assertEquals(out.code, 0, text);
        // deno-lint-ignore no-control-regex
        assertMatch(text, /\r\x1b\[2Kdownloading d\.img/);
        // The line is cleared before the result is printed.
        // deno-lint-ignore no-control-regex
        assertMatch(text, /\r\x1b\[2K(\r\n)?created a\r\n$/);
      } finally {
        await srv.close();
      }
    }),
);
