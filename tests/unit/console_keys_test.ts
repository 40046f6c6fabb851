/**
 * The keys of an attached console: Ctrl-] detaches, Ctrl-A x detaches and
 * stops the VM, Ctrl-A Ctrl-A sends one Ctrl-A; and `cove run --console`
 * tells the user when the console cannot be attached.
 */
import { followConsole } from "../../cli/commands/lifecycle.ts";
import { ESCAPE_BYTE, PREFIX_BYTE, scanKeys, STOP_KEY } from "../../core/supervisor/terminal.ts";
import { assert, assertEquals } from "../helpers/assert.ts";

Deno.test("console keys: Ctrl-A x ends with stop and the keys before it reach the guest", () => {
  const r = scanKeys(new Uint8Array([104, 105, PREFIX_BYTE, STOP_KEY, 120]), { pending: false });
  assertEquals(r.end, "stop");
  assertEquals([...r.send], [104, 105]);
});

Deno.test("console keys: Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A and another key sends both", () => {
  const state = { pending: false };
  assertEquals([...scanKeys(new Uint8Array([PREFIX_BYTE, PREFIX_BYTE, 97]), state).send], [
    PREFIX_BYTE,
    97,
  ]);
  const both = scanKeys(new Uint8Array([PREFIX_BYTE, 98]), state);
  assertEquals([...both.send], [PREFIX_BYTE, 98]);
  assertEquals(both.end, undefined);
});

Deno.test("console keys: a Ctrl-A at the end of one read and x at the start of the next still stop", () => {
  const state = { pending: false };
  const first = scanKeys(new Uint8Array([99, PREFIX_BYTE]), state);
  assertEquals([...first.send], [99]);
  assertEquals(first.end, undefined);
  assert(state.pending);
  const second = scanKeys(new Uint8Array([STOP_KEY]), state);
  assertEquals(second.end, "stop");
  assertEquals([...second.send], []);
});

Deno.test("console keys: Ctrl-] detaches, and Ctrl-C is an ordinary key for the guest", () => {
  const r = scanKeys(new Uint8Array([3, ESCAPE_BYTE, 3]), { pending: false });
  assertEquals(r.end, "detached");
  assertEquals([...r.send], [3]);
});

Deno.test("cove run --console: a console that cannot be attached is told to the user, not swallowed", async () => {
  const said: string[] = [];
  await followConsole({
    attach: () => Promise.reject(new Error("setRaw: Inappropriate ioctl for device")),
    say: (l) => said.push(l),
    stop: () => Promise.reject(new Error("must not stop")),
    describe: (e) => (e as Error).message,
    name: "dev",
  });
  assertEquals(said, [
    "could not attach the console: setRaw: Inappropriate ioctl for device",
    "the VM keeps running; Ctrl-C stops it ('cove console dev' attaches)",
  ]);
});

Deno.test("cove run --console: Ctrl-A x stops the VM; a failed stop is told too", async () => {
  let stops = 0;
  const said: string[] = [];
  await followConsole({
    attach: () => Promise.resolve("stop"),
    say: (l) => said.push(l),
    stop: () => (stops++, Promise.reject(new Error("the engine did not answer"))),
    describe: (e) => (e as Error).message,
    name: "dev",
  });
  assertEquals(stops, 1);
  assertEquals(said, ["could not stop dev: the engine did not answer (Ctrl-C stops it)"]);
});
