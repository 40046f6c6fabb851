/**
 * Supervisor pieces that need no VM: the control socket's HTTP subset and
 * its console upgrade, short socket paths for long COVE_HOMEs, the console
 * ring buffer, the terminal's detach key, and the last-exit record.
 */
import { join } from "node:path";
import { assert, assertCoveError, assertEquals, assertMatch } from "../helpers/assert.ts";
import { withTempDir } from "../helpers/cli.ts";
import {
  httpRequest,
  httpUpgrade,
  serveHttp,
  writeAll,
  writeUpgrade,
} from "../../core/supervisor/http.ts";
import {
  controlSocketTarget,
  ensurePrivateRoot,
  MAX_SOCKET_PATH,
  runtimeLayout,
} from "../../core/supervisor/paths.ts";
import { ConsoleHub, Supervisor } from "../../core/supervisor/supervisor.ts";
import type { ExitInfo, RunningVm } from "../../engines/engine.ts";
import { attachTerminal, ESCAPE_BYTE } from "../../core/supervisor/terminal.ts";
import {
  cleanConsoleText,
  consoleTailLines,
  lastExitError,
} from "../../core/supervisor/lastexit.ts";
import { Bundle } from "../../core/store/bundle.ts";

Deno.test("the control socket answers JSON requests and upgrades to a raw byte stream", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "c.sock");
    const listener = Deno.listen({ transport: "unix", path });
    const server = serveHttp(listener, async (req, conn, rest) => {
      if (req.path === "/echo") {
        return {
          status: 200,
          body: {
            method: req.method,
            q: req.query.get("x"),
            body: new TextDecoder().decode(req.body),
          },
        };
      }
      if (req.path === "/raw") {
        await writeUpgrade(conn, "test");
        void (async () => {
          if (rest.length) await writeAll(conn, rest);
          const buf = new Uint8Array(100);
          const n = await conn.read(buf);
          if (n) await writeAll(conn, buf.subarray(0, n).map((b) => b + 1));
          conn.close();
        })();
        return "upgraded";
      }
      return { status: 404, body: { error: { code: "x", message: "nope" } } };
    });
    try {
      const r = await httpRequest(path, "POST", "/echo?x=1", { a: 1 });
      assertEquals(r.status, 200);
      assertEquals(r.json(), { method: "POST", q: "1", body: '{"a":1}' });
      assertEquals((await httpRequest(path, "GET", "/missing")).status, 404);
      const { conn, first } = await httpUpgrade(path, "/raw", "test");
      assertEquals(first.length, 0);
      await writeAll(conn, new Uint8Array([1, 2, 3]));
      const buf = new Uint8Array(10);
      const n = await conn.read(buf);
      assertEquals(Array.from(buf.subarray(0, n ?? 0)), [2, 3, 4]);
      conn.close();
    } finally {
      server.close();
      await server.finished;
    }
  });
});

Deno.test("a long COVE_HOME puts sockets in a short directory linked from the bundle", async () => {
  await withTempDir(async (dir) => {
    const short = new Bundle("vm", join(dir, "vms", "vm"));
    const ls = await runtimeLayout(short);
    assertEquals(ls.controlSocket, short.controlSocket);
    assertEquals(ls.controlLinked, false);
    const longDir = join(dir, "x".repeat(120), "vms", "vm");
    const long = new Bundle("vm", longDir);
    const ll = await runtimeLayout(long);
    assert(ll.controlLinked && ll.runtimeLinked);
    assert(new TextEncoder().encode(ll.controlSocket).length <= MAX_SOCKET_PATH);
    assert(new TextEncoder().encode(join(ll.runtimeDir, "console.sock")).length <= MAX_SOCKET_PATH);
    await Deno.mkdir(longDir, { recursive: true });
    await Deno.symlink(ll.controlSocket, long.controlSocket);
    assertEquals(await controlSocketTarget(long), ll.controlSocket);
  });
});

Deno.test("the console hub keeps the last 64 KiB and fans out to subscribers", () => {
  const hub = new ConsoleHub();
  const got: number[] = [];
  const off = hub.subscribe((b) => got.push(b.length));
  hub.push(new TextEncoder().encode("hello "));
  hub.push(new TextEncoder().encode("world"));
  assertEquals(new TextDecoder().decode(hub.tail()), "hello world");
  assertEquals(new TextDecoder().decode(hub.tail(5)), "world");
  off();
  hub.push(new Uint8Array(70_000).fill(65));
  assertEquals(got, [6, 5]);
  assertEquals(hub.tail().length, 64 * 1024);
  hub.push(new TextEncoder().encode("!"));
  assertEquals(new TextDecoder().decode(hub.tail(2)), "A!");
});

Deno.test("Ctrl-] detaches the terminal and the keys before it still reach the guest", async () => {
  const typed = new Uint8Array([104, 105, ESCAPE_BYTE, 120]);
  let fed = false;
  const stdin = {
    read(b: Uint8Array): Promise<number | null> {
      if (fed) return new Promise(() => {});
      fed = true;
      b.set(typed);
      return Promise.resolve(typed.length);
    },
    isTerminal: () => false,
  };
  const sent: number[] = [];
  const shown: number[] = [];
  const output = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new Uint8Array([79, 75]));
    },
  });
  const end = await attachTerminal({
    output,
    write: (b) => {
      sent.push(...b);
      return Promise.resolve();
    },
    stdin,
    stdout: { writeSync: (b) => (shown.push(...b), b.length) },
  });
  assertEquals(end, "detached");
  assertEquals(sent, [104, 105]);
  assertEquals(shown, [79, 75]);
});

Deno.test("console text for error lines has escapes and control characters removed", () => {
  assertEquals(cleanConsoleText("/ # \x1b[6nCOVE\r\n\x07ok"), "/ # COVE\nok");
  const lines = consoleTailLines(new TextEncoder().encode("a\r\n\r\nb\n\x1b[0mc\n"), 2);
  assertEquals(lines, ["b", "c"]);
  const err = lastExitError({
    time: "t",
    reason: "crash",
    message: "qemu was killed by SIGKILL",
    consoleTail: ["x", "y", "z", "w"],
  });
  assertMatch(err!, /^crashed: qemu was killed by SIGKILL \(last console lines: y \| z \| w\)$/);
  assertEquals(lastExitError({ time: "t", reason: "guest", consoleTail: [] }), undefined);
});

Deno.test("closing the console hub tells subscribers, so attached consoles end", async () => {
  const hub = new ConsoleHub();
  let ended = 0;
  hub.subscribe(() => {}, () => ended++);
  const output = new ReadableStream<Uint8Array>({
    start(c) {
      hub.subscribe((b) => c.enqueue(b.slice()), () => c.close());
    },
  });
  const stdin = {
    read: (): Promise<number | null> => new Promise(() => {}),
    isTerminal: () => false,
  };
  const shown: number[] = [];
  const attached = attachTerminal({
    output,
    write: () => Promise.resolve(),
    stdin,
    stdout: { writeSync: (b) => (shown.push(...b), b.length) },
  });
  hub.push(new Uint8Array([79, 75]));
  hub.close();
  assertEquals(await attached, "closed");
  assertEquals(shown, [79, 75]);
  assertEquals(ended, 1);
  let late = 0;
  hub.subscribe(() => {}, () => late++);
  assertEquals(late, 1, "subscribing to a closed hub ends at once");
});

Deno.test("a graceful stop whose request never answers powers off after the timeout", async () => {
  let stopped = false;
  const exit = Promise.withResolvers<ExitInfo>();
  const vm = {
    requestStop: () => new Promise<void>(() => {}), // a stuck engine
    stop: () => {
      stopped = true;
      exit.resolve({ reason: "host" });
      return Promise.resolve();
    },
    wait: () => exit.promise,
  } as unknown as RunningVm;
  const sup = new Supervisor(new Bundle("vm", "/nonexistent"), "qemu", new ConsoleHub(), () => {});
  sup.attach(vm);
  const r = await sup.stop(false, 0.05);
  assert(stopped);
  assertEquals(r.forced, true);
});

Deno.test("a short runtime directory that is a symlink or open to others is refused", async () => {
  await withTempDir(async (dir) => {
    const open = join(dir, "open");
    await Deno.mkdir(open);
    await Deno.chmod(open, 0o755);
    await assertCoveError(() => ensurePrivateRoot(open), { code: "runtime.unsafe_dir" });
    const link = join(dir, "link");
    const mine = join(dir, "mine");
    await ensurePrivateRoot(mine);
    assertEquals((await Deno.stat(mine)).mode! & 0o777, 0o700);
    await Deno.symlink(mine, link);
    await assertCoveError(() => ensurePrivateRoot(link), { code: "runtime.unsafe_dir" });
  });
});

Deno.test("a guest that a failed snapshot left paused is resumed by the next control request", async () => {
  await withTempDir(async (dir) => {
    // A MOCK engine handle (no VM can be made to fail its resume on demand): the first resume fails.
    let state: "running" | "paused" = "running";
    let resumes = 0;
    const vm = {
      state: () => state,
      pause: () => {
        state = "paused";
        return Promise.resolve();
      },
      resume: () => {
        resumes++;
        if (resumes === 1) return Promise.reject(new Error("resume failed"));
        state = "running";
        return Promise.resolve();
      },
      saveState: () => Promise.reject(new Error("disk full")),
      saveStateSupport: () => ({ available: true }),
      info: () => ({}),
    } as unknown as RunningVm;
    const b = new Bundle("vm", dir);
    await Deno.writeFile(join(dir, "disk.img"), new Uint8Array(4096));
    const { applyDefaults } = await import("../../core/spec/defaults.ts");
    const { parseSpec } = await import("../../core/spec/load.ts");
    const { detectHost } = await import("../../core/host.ts");
    const sup = new Supervisor(b, "qemu", new ConsoleHub(), () => {});
    sup.spec = applyDefaults(
      parseSpec("memory: 1MiB\ndisks: [{ path: disk.img }]\n"),
      detectHost(),
      "vm",
    );
    sup.attach(vm);
    let failed = false;
    await sup.snapshot({ tag: "t" }).catch(() => (failed = true));
    assert(failed, "the save failed");
    assertEquals(state, "paused", "its resume failed too");
    const { controlHandler } = await import("../../core/supervisor/supervisor.ts");
    const res = await controlHandler(sup)(
      {
        method: "GET",
        path: "/status",
        query: new URLSearchParams(),
        headers: new Map(),
        body: new Uint8Array(),
      },
      undefined as unknown as Deno.UnixConn,
      new Uint8Array(),
    );
    assert(res !== "upgraded" && res.status === 200);
    assertEquals(state, "running", "the next request resumed it");
    assertEquals(await Array.fromAsync(Deno.readDir(join(dir, "snapshots"))), [], "nothing listed");
  });
});
