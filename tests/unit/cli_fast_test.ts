/**
 * The CLI's fast path (cli/main.ts `fastPath`) runs `cove list` and `cove
 * get NAME` (and the detached supervisor of `cove start`) without building
 * the command tree: it takes exactly their plain forms, leaves every other
 * form to the parser, and prints what the parser's run prints. (`--debug` is not a form the fast path takes, so a
 * run with it goes through the parser: that is the comparison.)
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { fastPath } from "../../cli/main.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Store } from "../../core/store/store.ts";

Deno.test("cli fast path: takes the plain forms of list and get, and nothing else", () => {
  for (
    const args of [
      ["list"],
      ["ls"],
      ["list", "--format", "json"],
      ["list", "--format=json", "-q"],
      ["list", "--quiet", "--format", "text", "--format", "json"],
      ["get", "dev"],
      ["get", "dev", "--format", "json"],
      ["get", "--format=text", "dev"],
      // What startDetached (core/supervisor/start.ts) gives the supervisor it launches.
      ["run", "dev", "--detached"],
      ["run", "dev", "--detached", "--no-graphics"],
      ["run", "dev", "--detached", "--forward", "8080:80", "--forward", "127.0.0.1:2222:22/udp"],
      ["run", "dev", "--detached", "--no-graphics", "--forward", "8080:80"],
    ]
  ) assert(fastPath(args), args.join(" "));
  for (
    const args of [
      [],
      ["list", "--help"],
      ["list", "-h"],
      ["list", "extra"],
      ["list", "--format"],
      ["list", "--format", "yaml"],
      ["list", "--debug"],
      ["list", "-qq"],
      ["get"],
      ["get", "a", "b"],
      ["get", "dev", "-q"],
      ["get", "--", "dev"],
      ["get", "dev", "--help"],
      ["--debug", "list"],
      ["set", "dev"],
      ["help", "list"],
      ["run", "dev"],
      ["run", "dev", "--console"],
      ["run", "--detached", "dev"],
      ["run", "dev", "--detached", "--debug"],
      ["run", "dev", "--detached", "--help"],
      ["run", "dev", "--detached", "--ephemeral"],
      ["run", "dev", "--detached", "--forward"],
      ["run", "dev", "--detached", "--forward", "--no-graphics"],
      ["run", "dev", "--detached", "--forward", "8080:80", "--no-graphics"],
      ["run", "dev", "--detached", "--no-graphics", "--no-graphics"],
      ["run", "dev", "--detached", "--stop-timeout", "5s"],
      ["run", "dev", "--detached", "extra"],
    ]
  ) assertEquals(fastPath(args), undefined, args.join(" "));
});

Deno.test("cli fast path: list and get print what the parser's run prints, errors included", () =>
  withTempDir(async (home) => {
    const store = new Store(home);
    await store.create("dev", {
      spec: parseSpec("cpus: 1\ndisks: [{ path: disk.img, size: 1MiB }]\n"),
    });
    await store.create("ops", { spec: parseSpec("disks: [{ path: disk.img, size: 1MiB }]\n") });
    for (
      const args of [
        ["list"],
        ["ls", "--format", "json"],
        ["list", "-q"],
        ["get", "dev"],
        ["get", "ops", "--format=json"],
        ["get", "nope"],
        ["get", "nope", "--format", "json"],
        ["get", "bad/name"],
      ]
    ) {
      const fast = await cove(home, args);
      const parsed = await cove(home, [...args, "--debug"]);
      assertEquals(
        [fast.code, fast.stdout, fast.stderr.split("\n")[0]],
        [parsed.code, parsed.stdout, parsed.stderr.split("\n")[0]],
        args.join(" "),
      );
    }
  }));
