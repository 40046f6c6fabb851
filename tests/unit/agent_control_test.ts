/**
 * The supervisor's `/agent` endpoints and its stop escalation, with the
 * control API served for real on a unix socket and the agent channel
 * connected to a STAND-IN for qemu-guest-agent (tests/helpers/qga_standin.ts).
 * The VM handle is a test double: only these tests' stop and wait matter.
 */
import { assert, assertEquals } from "../helpers/assert.ts";
import { withTempDir } from "../helpers/cli.ts";
import { httpRequest, serveHttp } from "../../core/supervisor/http.ts";
import { ConsoleHub, controlHandler, Supervisor } from "../../core/supervisor/supervisor.ts";
import { AgentChannel } from "../../core/agent/channel.ts";
import { Bundle } from "../../core/store/bundle.ts";
import type { ExitInfo, RunningVm } from "../../engines/engine.ts";
import { startQgaStandin } from "../helpers/qga_standin.ts";

async function withControl(
  agentOn: boolean,
  fn: (
    socket: string,
    sup: Supervisor,
    standin: ReturnType<typeof startQgaStandin>,
    notes: string[],
  ) => Promise<void>,
): Promise<void> {
  await withTempDir(async (dir) => {
    const standin = startQgaStandin(dir);
    const agent = new AgentChannel("vm", agentOn ? standin.socket : undefined);
    const notes: string[] = [];
    const sup = new Supervisor(new Bundle("vm", dir), "qemu", new ConsoleHub(), (e) => {
      if (e.type === "note") notes.push(e.message);
    }, agent);
    const socket = `${dir}/control.sock`;
    const server = serveHttp(Deno.listen({ transport: "unix", path: socket }), controlHandler(sup));
    try {
      await fn(socket, sup, standin, notes);
    } finally {
      server.close();
      await agent.close();
      await standin.close();
    }
  });
}

/** A VM handle (test double) whose guest ignores the power button; `stop` powers it off. */
function ignoringGuest() {
  const exit = Promise.withResolvers<ExitInfo>();
  let off = false;
  const vm = {
    state: () => "running",
    info: () => ({}),
    requestStop: () => Promise.resolve(),
    stop: () => {
      off = true;
      exit.resolve({ reason: "host" });
      return Promise.resolve();
    },
    wait: () => exit.promise,
  } as unknown as RunningVm;
  return { exit, vm, poweredOff: () => off };
}

Deno.test("GET /agent and POST /agent/command reach the agent through the supervisor", async () => {
  await withControl(true, async (socket) => {
    const st = (await httpRequest(socket, "GET", "/agent")).json<
      { answers: boolean; version: string }
    >();
    assertEquals([st.answers, st.version], [true, "9.9.9-standin"]);
    const r = await httpRequest(socket, "POST", "/agent/command", {
      execute: "guest-network-get-interfaces",
    });
    assertEquals(r.status, 200);
    assertEquals(r.json<{ return: { name: string }[] }>().return.map((i) => i.name), [
      "lo",
      "eth0",
    ]);
    const bad = await httpRequest(socket, "POST", "/agent/command", { execute: "guest-nope" });
    assertEquals(bad.status, 500);
    assertEquals(bad.json<{ error: { code: string } }>().error.code, "agent.error");
  });
});

Deno.test("clients may not send the sync handshake: the supervisor keeps the channel in sync", async () => {
  await withControl(true, async (socket) => {
    const r = await httpRequest(socket, "POST", "/agent/command", {
      execute: "guest-sync-delimited",
      arguments: { id: 1 },
    });
    assertEquals(r.status, 400);
    assertEquals(r.json<{ error: { code: string } }>().error.code, "agent.reserved");
  });
});

Deno.test("with agent: false the endpoints answer at once with exit 5", async () => {
  await withControl(false, async (socket) => {
    const r = await httpRequest(socket, "POST", "/agent/command", { execute: "guest-ping" });
    const e = r.json<{ error: { code: string; exit: number } }>().error;
    assertEquals([e.code, e.exit], ["agent.disabled", 5]);
    const st = (await httpRequest(socket, "GET", "/agent")).json<{ enabled: boolean }>();
    assertEquals(st.enabled, false);
  });
});

Deno.test("a stop the guest's ACPI handler ignores goes through guest-shutdown before any power-off", async () => {
  await withControl(true, async (socket, sup, standin) => {
    const { exit, vm, poweredOff } = ignoringGuest();
    sup.attach(vm);
    // The "guest" powers off when its agent is told to.
    const watcher = setInterval(() => {
      if (standin.log.shutdowns.length) exit.resolve({ reason: "guest" });
    }, 10);
    try {
      const r = await httpRequest(socket, "POST", "/stop", { timeout: 0.1 });
      const body = r.json<{ via: string; forced: boolean; exit: ExitInfo }>();
      assertEquals([body.via, body.forced, body.exit.reason], ["agent", false, "guest"]);
      assert(!poweredOff());
      assertEquals(standin.log.shutdowns, ["powerdown"]);
    } finally {
      clearInterval(watcher);
    }
  });
});

Deno.test("a guest that powers off at guest-shutdown, closing the channel at once, is stopped through the agent (not powered off)", async () => {
  await withControl(true, async (socket, sup, standin) => {
    standin.faults.closeOnShutdown = true;
    const { exit, vm, poweredOff } = ignoringGuest();
    sup.attach(vm);
    const watcher = setInterval(() => {
      // QEMU exits a moment after the channel closed.
      if (standin.log.shutdowns.length) setTimeout(() => exit.resolve({ reason: "host" }), 200);
    }, 10);
    try {
      const r = await httpRequest(socket, "POST", "/stop", { timeout: 0.1 });
      const body = r.json<{ via: string; forced: boolean }>();
      assertEquals([body.via, body.forced], ["agent", false]);
      assert(!poweredOff(), "the guest went down by itself");
    } finally {
      clearInterval(watcher);
    }
  });
});

Deno.test("resume sets the guest clock through the agent", async () => {
  await withControl(true, async (socket, sup, standin) => {
    const vm = {
      state: () => "running",
      info: () => ({}),
      resume: () => Promise.resolve(),
      wait: () => new Promise(() => {}),
    } as unknown as RunningVm;
    sup.attach(vm);
    const before = Date.now() * 1e6;
    const r = await httpRequest(socket, "POST", "/resume");
    assertEquals(r.json<{ clock: string }>().clock, "set");
    assertEquals(standin.log.setTime.length, 1);
    assert(standin.log.setTime[0]! >= before);
  });
});

Deno.test("when the agent refuses guest-shutdown, the stop powers off after the timeout", async () => {
  await withControl(true, async (socket, sup, standin) => {
    standin.faults.disabled = ["guest-shutdown"];
    const exit = Promise.withResolvers<ExitInfo>();
    const vm = {
      state: () => "running",
      info: () => ({}),
      requestStop: () => Promise.resolve(),
      stop: () => {
        exit.resolve({ reason: "host" });
        return Promise.resolve();
      },
      wait: () => exit.promise,
    } as unknown as RunningVm;
    sup.attach(vm);
    const r = await httpRequest(socket, "POST", "/stop", { timeout: 0.1 });
    const body = r.json<{ via: string; forced: boolean }>();
    assertEquals([body.via, body.forced], ["power-off", true]);
  });
});

Deno.test("when the agent channel is already closed, the stop powers off after the timeout without waiting for a guest-shutdown it never sent", async () => {
  await withControl(true, async (socket, sup, standin, notes) => {
    const { vm, poweredOff } = ignoringGuest();
    sup.attach(vm);
    await sup.agent.close();
    const r = await httpRequest(socket, "POST", "/stop", { timeout: 0.1 });
    const body = r.json<{ via: string; forced: boolean }>();
    assertEquals([body.via, body.forced], ["power-off", true]);
    assert(poweredOff());
    assertEquals(standin.log.shutdowns, []);
    assert(!notes.some((n) => n.includes("guest-shutdown sent")), notes.join("\n"));
    assert(
      notes.some((n) => n.includes("the agent could not shut the guest down")),
      notes.join("\n"),
    );
  });
});
