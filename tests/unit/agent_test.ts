/**
 * The guest agent protocol client, exec, cp and freeze, against a STAND-IN
 * for qemu-guest-agent (tests/helpers/qga_standin.ts) that speaks the
 * documented QGA wire format on a unix socket and whose "guest" is this
 * host. Real guests: tests/e2e/agent_test.ts.
 */
import { join } from "node:path";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../helpers/assert.ts";
import { AgentChannel } from "../../core/agent/channel.ts";
import { copyFromGuest, copyToGuest, parseCpEndpoint } from "../../core/agent/cp.ts";
import { agentExec, truncatedError } from "../../core/agent/exec.ts";
import { withFrozenGuest } from "../../core/agent/freeze.ts";
import { encodeCommand, QgaClient, QgaError } from "../../core/agent/qga.ts";
import { CoveError } from "../../core/errors.ts";
import { type StandinFaults, startQgaStandin } from "../helpers/qga_standin.ts";
import { linuxTest } from "../helpers/guard.ts";

/** Why the stand-in's exec and cp tests are Linux's. */
const STANDIN_EXEC =
  "runs guest commands on this host through the stand-in agent, which reports them as a Linux guest would (Linux signal numbers)";

async function withStandin(
  faults: StandinFaults,
  fn: (s: ReturnType<typeof startQgaStandin>, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cove-qga-" });
  const s = startQgaStandin(dir, faults);
  try {
    await fn(s, dir);
  } finally {
    await s.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

async function client(socket: string): Promise<QgaClient> {
  return await QgaClient.connect(socket);
}

Deno.test("a command is framed as one JSON object and big integers stay integers", () => {
  assertEquals(
    encodeCommand("guest-set-time", { time: 1700000000123456789n }),
    '{"execute":"guest-set-time","arguments":{"time":1700000000123456789}}',
  );
  assertEquals(encodeCommand("guest-ping"), '{"execute":"guest-ping"}');
});

Deno.test("sync drops junk and stale answers before the delimiter, then commands answer in order", async () => {
  await withStandin({ noise: true }, async (s) => {
    const c = await client(s.socket);
    try {
      assert(await c.sync());
      assertEquals(await c.command("guest-ping"), {});
      const info = await c.command<{ version: string }>("guest-info");
      assertEquals(info.version, "9.9.9-standin");
      assertEquals(s.log.commands.slice(0, 3), [
        "guest-sync-delimited",
        "guest-ping",
        "guest-info",
      ]);
    } finally {
      await c.close();
    }
  });
});

Deno.test("answers split into single bytes are reassembled", async () => {
  await withStandin({ dribble: true }, async (s) => {
    const c = await client(s.socket);
    try {
      const ifs = await c.command<{ name: string }[]>("guest-network-get-interfaces");
      assertEquals(ifs.map((i) => i.name), ["lo", "eth0"]);
    } finally {
      await c.close();
    }
  });
});

Deno.test("an agent error answer becomes a QgaError naming the command and the agent's text", async () => {
  await withStandin({}, async (s) => {
    const c = await client(s.socket);
    try {
      const e = await assertRejects(() => c.command("guest-no-such-thing"), QgaError);
      assertEquals(e.errorClass, "CommandNotFound");
      assertMatch(e.message, /guest-no-such-thing.*has not been found/);
      // The conversation goes on after an error.
      assertEquals(await c.command("guest-ping"), {});
    } finally {
      await c.close();
    }
  });
});

Deno.test("a silent agent fails the sync within the bound, as 'not answering' with exit 5", async () => {
  await withStandin({ silent: true }, async (s) => {
    const ch = new AgentChannel("vm1", s.socket);
    try {
      const e = await assertRejects(() => ch.command("guest-ping"), CoveError);
      assertEquals(e.code, "agent.unavailable");
      assertEquals(e.exit, 5);
      assertMatch(e.line(), /qemu-guest-agent/);
      assertEquals((await ch.status()).answers, false);
    } finally {
      await ch.close();
    }
  });
});

Deno.test("an agent that stops answering mid-command times out, and the next command resyncs", async () => {
  await withStandin({ stallAfter: 2 }, async (s) => {
    const c = await client(s.socket);
    try {
      assertEquals(await c.command("guest-ping"), {}); // sync + ping: two answers
      const e = await assertRejects(
        () => c.command("guest-ping", undefined, { timeoutMs: 300 }),
        CoveError,
      );
      assertEquals(e.code, "agent.timeout");
      assertEquals(c.inSync, false);
      s.faults.stallAfter = undefined; // the agent comes back
      assertEquals(await c.command("guest-get-time").then((t) => typeof t), "number");
      assertEquals(s.log.commands.filter((n) => n === "guest-sync-delimited").length, 2);
    } finally {
      await c.close();
    }
  });
});

Deno.test("guest-shutdown is written without waiting for an answer", async () => {
  await withStandin({}, async (s) => {
    const c = await client(s.socket);
    try {
      await c.command("guest-shutdown", { mode: "powerdown" }, { noReply: true });
      assertEquals(await c.command("guest-ping"), {});
      assertEquals(s.log.shutdowns, ["powerdown"]);
    } finally {
      await c.close();
    }
  });
});

Deno.test("a channel with agent: false refuses at once with exit 5", async () => {
  const ch = new AgentChannel("vm1", undefined);
  const e = await assertRejects(() => ch.command("guest-ping"), CoveError);
  assertEquals(e.code, "agent.disabled");
  assertEquals(e.exit, 5);
  assertEquals((await ch.status()).enabled, false);
});

Deno.test("a channel to a socket nobody serves says the agent is not connected", async () => {
  const ch = new AgentChannel("vm1", "/nonexistent/agent.sock");
  const e = await assertRejects(() => ch.command("guest-ping"), CoveError);
  assertEquals(e.code, "agent.unavailable");
  assertEquals(e.exit, 5);
});

Deno.test("the channel serialises concurrent commands on one connection", async () => {
  await withStandin({ dribble: true }, async (s) => {
    const ch = new AgentChannel("vm1", s.socket);
    try {
      const got = await Promise.all(
        Array.from(
          { length: 8 },
          (_, i) =>
            ch.command<{ name: string }[]>("guest-network-get-interfaces").then((
              r,
            ) => [i, r.length]),
        ),
      );
      assertEquals(got, Array.from({ length: 8 }, (_, i) => [i, 2]));
      assertEquals(s.log.connections, 1);
      const st = await ch.status();
      assertEquals(st.version, "9.9.9-standin");
      assert(st.commands?.includes("guest-exec"));
    } finally {
      await ch.close();
    }
  });
});

linuxTest({
  needs: STANDIN_EXEC,
  name: "exec keeps stdout and stderr apart, passes stdin, and returns the exit code",
  async fn() {
    await withStandin({}, async (s) => {
      const ch = new AgentChannel("vm1", s.socket);
      try {
        const r = await agentExec(ch, ["sh", "-c", "cat; echo err >&2; exit 3"], {
          stdin: new TextEncoder().encode("from stdin\n"),
        });
        assertEquals(r.code, 3);
        assertEquals(new TextDecoder().decode(r.stdout), "from stdin\n");
        assertEquals(new TextDecoder().decode(r.stderr), "err\n");
      } finally {
        await ch.close();
      }
    });
  },
});

linuxTest({
  needs: STANDIN_EXEC,
  name: "a guest command killed by a signal exits 128+N",
  async fn() {
    await withStandin({}, async (s) => {
      const ch = new AgentChannel("vm1", s.socket);
      try {
        const r = await agentExec(ch, ["sh", "-c", "kill -TERM $$"]);
        assertEquals(r.signal, 15);
        assertEquals(r.code, 143);
      } finally {
        await ch.close();
      }
    });
  },
});

linuxTest({
  needs: STANDIN_EXEC,
  name: "exec with a timeout kills the command and says so in one line",
  async fn() {
    await withStandin({}, async (s) => {
      const ch = new AgentChannel("vm1", s.socket);
      try {
        const e = await assertRejects(
          () => agentExec(ch, ["sleep", "30"], { timeoutSeconds: 0.3 }),
          CoveError,
        );
        assertEquals(e.code, "agent.exec_timeout");
      } finally {
        await ch.close();
      }
    });
  },
});

Deno.test("cp endpoints: NAME:PATH is a guest path, ./a:b and /a:b are host paths", () => {
  assertEquals(parseCpEndpoint("vm1:/etc/hostname"), { vm: "vm1", path: "/etc/hostname" });
  assertEquals(parseCpEndpoint("./a:b"), { path: "./a:b" });
  assertEquals(parseCpEndpoint("/x/a:b"), { path: "/x/a:b" });
  assertEquals(parseCpEndpoint("notes.txt"), { path: "notes.txt" });
  assertThrows(() => parseCpEndpoint("vm1:"), CoveError);
});

linuxTest({
  needs: STANDIN_EXEC,
  name: "cp moves a file both ways byte for byte, keeps its mode, and leaves no temporary file",
  async fn() {
    await withStandin({}, async (s, dir) => {
      const ch = new AgentChannel("vm1", s.socket);
      try {
        const data = new Uint8Array(3 * 2 ** 20 + 123);
        for (let o = 0; o < data.length; o += 65536) {
          crypto.getRandomValues(data.subarray(o, Math.min(o + 65536, data.length)));
        }
        const src = join(dir, "src.bin");
        await Deno.writeFile(src, data, { mode: 0o640 });
        await Deno.chmod(src, 0o640);
        await Deno.mkdir(join(dir, "guest"));
        const up = await copyToGuest(ch, "vm1", src, join(dir, "guest"));
        assertEquals(up.destination, join(dir, "guest", "src.bin"));
        assertEquals(await Deno.readFile(join(dir, "guest", "src.bin")), data);
        assertEquals((await Deno.stat(join(dir, "guest", "src.bin"))).mode! & 0o777, 0o640);
        const down = await copyFromGuest(
          ch,
          "vm1",
          join(dir, "guest", "src.bin"),
          join(dir, "back.bin"),
        );
        assertEquals(down.bytes, data.length);
        assertEquals(await Deno.readFile(join(dir, "back.bin")), data);
        assertEquals((await Deno.stat(join(dir, "back.bin"))).mode! & 0o777, 0o640);
        const names = await Array.fromAsync(Deno.readDir(dir), (e) => e.name);
        assertEquals(names.filter((n) => n.includes(".cove-")), []);
      } finally {
        await ch.close();
      }
    });
  },
});

linuxTest({
  needs: STANDIN_EXEC,
  name: "cp -r copies a directory tree both ways; without -r a directory is one clear line",
  async fn() {
    await withStandin({}, async (s, dir) => {
      const ch = new AgentChannel("vm1", s.socket);
      try {
        const tree = join(dir, "tree");
        await Deno.mkdir(join(tree, "a", "b"), { recursive: true });
        await Deno.writeTextFile(join(tree, "top.txt"), "top\n");
        await Deno.writeTextFile(join(tree, "a", "b", "deep.txt"), "deep\n");
        await Deno.mkdir(join(dir, "g"));
        const e = await assertRejects(
          () => copyToGuest(ch, "vm1", tree, join(dir, "g")),
          CoveError,
        );
        assertEquals(e.code, "cp.is_directory");
        assertMatch(e.line(), /-r/);
        await copyToGuest(ch, "vm1", tree, join(dir, "g"), { recursive: true });
        assertEquals(
          await Deno.readTextFile(join(dir, "g", "tree", "a", "b", "deep.txt")),
          "deep\n",
        );
        const e2 = await assertRejects(
          () => copyFromGuest(ch, "vm1", join(dir, "g", "tree"), join(dir, "out")),
          CoveError,
        );
        assertEquals(e2.code, "cp.is_directory");
        await copyFromGuest(ch, "vm1", join(dir, "g", "tree"), join(dir, "out"), {
          recursive: true,
        });
        assertEquals(await Deno.readTextFile(join(dir, "out", "top.txt")), "top\n");
        assertEquals(await Deno.readTextFile(join(dir, "out", "a", "b", "deep.txt")), "deep\n");
      } finally {
        await ch.close();
      }
    });
  },
});

linuxTest({
  needs: STANDIN_EXEC,
  name: "cp of a missing guest path is one line, and an unwritable host directory leaves no file",
  async fn() {
    await withStandin({}, async (s, dir) => {
      const ch = new AgentChannel("vm1", s.socket);
      try {
        const e = await assertRejects(
          () => copyFromGuest(ch, "vm1", join(dir, "nope"), join(dir, "x")),
          CoveError,
        );
        assertEquals(e.code, "cp.not_found");
        assertEquals(e.exit, 3);
        assertEquals(e.message, `vm1:${join(dir, "nope")} does not exist in the guest`);
        await Deno.writeTextFile(join(dir, "f.txt"), "x\n");
        // A destination whose parent is a file: cannot be written.
        const e2 = await assertRejects(
          () => copyFromGuest(ch, "vm1", join(dir, "f.txt"), join(dir, "f.txt", "y")),
          CoveError,
        );
        assertEquals(e2.code, "cp.no_parent");
        // A read-only destination directory (root ignores modes, so use a read-only bind: /proc).
        const e3 = await assertRejects(
          () => copyFromGuest(ch, "vm1", join(dir, "f.txt"), "/proc/cove-test-file"),
          CoveError,
        );
        assert(!e3.message.includes("\n"));
        assertEquals(await Deno.stat("/proc/cove-test-file").then(() => true, () => false), false);
      } finally {
        await ch.close();
      }
    });
  },
});

Deno.test("freeze runs the copy between freeze and thaw, and thaws when the copy fails", async () => {
  await withStandin({ thawFailures: 1 }, async (s) => {
    const ch = new AgentChannel("vm1", s.socket);
    try {
      let sawFrozen = false;
      await assertRejects(
        () =>
          withFrozenGuest(ch, () => {
            sawFrozen = s.log.frozen;
            return Promise.reject(new Error("copy failed"));
          }),
        Error,
        "copy failed",
      );
      assert(sawFrozen);
      assertEquals(s.log.frozen, false); // thawed, on the second try
      const report: { frozen: number; thawed: number }[] = [];
      assertEquals(await withFrozenGuest(ch, () => Promise.resolve(42), (r) => report.push(r)), 42);
      assertEquals(report, [{ frozen: 2, thawed: 2 }]);
      assertEquals(s.log.freezes, 2);
    } finally {
      await ch.close();
    }
  });
});

Deno.test("the channel is the supervisor's alone: a second client that opens it is refused", async () => {
  await withStandin({}, async (s) => {
    const ch = new AgentChannel("vm1", s.socket);
    try {
      assertEquals(await ch.command("guest-ping"), {});
      const e = await Deno.connect({ transport: "unix", path: s.socket }).then(
        (c) => (c.close(), undefined),
        (err) => err,
      );
      assert(e instanceof Deno.errors.NotFound, `a second client got ${e}`);
      assertEquals(await ch.command("guest-ping"), {}); // the owner goes on
      assertEquals(s.log.connections, 1);
    } finally {
      await ch.close();
    }
  });
});

linuxTest({
  needs: "mounts a 1 MiB tmpfs (mount -t tmpfs, as root)",
  root: true,
  name: "cp to a full host disk is one line and leaves no partial file",
  async fn() {
    await withStandin({}, async (s, dir) => {
      const small = join(dir, "small");
      await Deno.mkdir(small);
      const m = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=1m", "cove-test", small],
        stderr: "piped",
      }).output();
      if (!m.success) {
        // The guard has made sure this is root on Linux: a mount that fails is a failure.
        throw new Error(
          `this test cannot mount a 1 MiB tmpfs: ${new TextDecoder().decode(m.stderr).trim()}`,
        );
      }
      const ch = new AgentChannel("vm1", s.socket);
      try {
        const big = join(dir, "big.bin");
        await Deno.writeFile(big, new Uint8Array(3 * 2 ** 20).fill(7));
        const e = await assertRejects(
          () => copyFromGuest(ch, "vm1", big, join(small, "big.bin")),
          CoveError,
        );
        assertEquals(e.code, "io.no_space");
        assert(!e.line().includes("\n"));
        assertEquals(await Array.fromAsync(Deno.readDir(small)), []);
      } finally {
        await ch.close();
        await new Deno.Command("umount", { args: [small] }).output();
      }
    });
  },
});

linuxTest({
  needs: STANDIN_EXEC,
  name: "exec output beyond the agent's capture limit is reported as cut, with a one-line error",
  async fn() {
    await withStandin({ outputLimit: 1000 }, async (s) => {
      const ch = new AgentChannel("vm1", s.socket);
      try {
        const r = await agentExec(ch, ["head", "-c", "5000", "/dev/zero"]);
        assertEquals(r.truncated, true);
        assertEquals(r.stdout.length, 1000);
        const e = truncatedError(["head", "-c", "5000", "/dev/zero"]);
        assertMatch(e.line(), /exceeded 16 MiB, the guest agent's limit, and was cut/);
        assert(!e.line().includes("\n"));
      } finally {
        await ch.close();
      }
    });
  },
});
