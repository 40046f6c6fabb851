// Automatic forwards (core/net/autoforward.ts): reading /proc/net/tcp*, the rule, and the watcher's
// open/close decisions. The guest side is a function over fixed /proc text here; with the guest
// agent it reads the real files.
import { assertEquals } from "../helpers/assert.ts";
import {
  AutoForwarder,
  guestListeners,
  isLoopback,
  openAtOrAfter,
  parseProcNetTcp,
} from "../../core/net/autoforward.ts";
import { CoveError, ExitCode } from "../../core/errors.ts";

const HEAD =
  "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
const line = (i: number, local: string, st: string) =>
  `   ${i}: ${local} 00000000:0000 ${st} 00000000:00000000 00:00000000 00000000     0        0 ${
    1000 + i
  } 1 0000000000000000 100 0 0 10 0\n`;

// 0.0.0.0:8080 listening, 127.0.0.1:5432 listening (loopback), 10.0.2.15:22 established (01),
// 10.0.2.15:9000 listening.
const TCP = HEAD + line(0, "00000000:1F90", "0A") + line(1, "0100007F:1538", "0A") +
  line(2, "0F02000A:0016", "01") + line(3, "0F02000A:2328", "0A");
const HEAD6 =
  "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
const line6 = (i: number, local: string, st: string) =>
  `   ${i}: ${local} 00000000000000000000000000000000:0000 ${st} 00000000:00000000 00:00000000 00000000     0        0 ${
    2000 + i
  } 1 0000000000000000 100 0 0 10 0\n`;
// [::]:3000 listening, [::1]:6379 listening (loopback), ::ffff:127.0.0.1:7000 listening (loopback).
const TCP6 = HEAD6 + line6(0, "00000000000000000000000000000000:0BB8", "0A") +
  line6(1, "00000000000000000000000001000000:18EB", "0A") +
  line6(2, "0000000000000000FFFF00000100007F:1B58", "0A");

Deno.test("/proc/net/tcp and tcp6 lines give addresses, ports and states", () => {
  assertEquals(parseProcNetTcp(TCP).map((s) => `${s.address}:${s.port}/${s.state}`), [
    "0.0.0.0:8080/10",
    "127.0.0.1:5432/10",
    "10.0.2.15:22/1",
    "10.0.2.15:9000/10",
  ]);
  assertEquals(parseProcNetTcp(TCP6).map((s) => `${s.address}:${s.port}`), [
    ":::3000",
    "::1:6379",
    "::ffff:127.0.0.1:7000",
  ]);
  assertEquals(parseProcNetTcp("header\ngarbage line\n"), []);
  assertEquals([isLoopback("127.0.0.53"), isLoopback("::1"), isLoopback("10.0.0.1")], [
    true,
    true,
    false,
  ]);
});

Deno.test("only listeners on non-loopback addresses are forwarded, minus the ignore list and outside the range", () => {
  assertEquals(guestListeners(TCP, TCP6), [3000, 8080, 9000]);
  assertEquals(guestListeners(TCP, TCP6, { ignore: [9000], range: { from: 1, to: 65535 } }), [
    3000,
    8080,
  ]);
  assertEquals(guestListeners(TCP, TCP6, { ignore: [], range: { from: 4000, to: 8999 } }), [8080]);
});

Deno.test("the watcher opens a forward per new listener, skips served ports, and removes it when the listener goes", async () => {
  let tcp = TCP;
  const opened: number[] = [];
  const closed: number[] = [];
  const w = new AutoForwarder({
    read: (p) => Promise.resolve(p.endsWith("6") ? HEAD6 : tcp),
    open: (g) => (opened.push(g), Promise.resolve(g === 8080 ? 8081 : g)),
    close: (g) => (closed.push(g), Promise.resolve()),
    skip: () => [9000], // a spec forward serves it
  });
  await w.tick();
  assertEquals(opened, [8080]);
  assertEquals([...w.active()], [[8080, 8081]]);
  await w.tick(); // nothing new
  assertEquals(opened, [8080]);
  tcp = HEAD + line(0, "0100007F:1538", "0A"); // 8080 stopped listening
  await w.tick();
  assertEquals(closed, [8080]);
  assertEquals(w.active().size, 0);
  await w.stop();
});

Deno.test("when the guest cannot be read the watcher keeps its forwards", async () => {
  let up = true;
  const closed: number[] = [];
  const w = new AutoForwarder({
    read: () => Promise.resolve(up ? TCP : undefined),
    open: (g) => Promise.resolve(g),
    close: (g) => (closed.push(g), Promise.resolve()),
  });
  await w.tick();
  up = false;
  await w.tick();
  assertEquals(closed, []);
  assertEquals([...w.active().keys()], [8080, 9000]);
  await w.stop();
  assertEquals(closed, [8080, 9000]);
});

Deno.test("an automatic forward takes the same host port, or the next free one, or any when privileged", async () => {
  const inUse = new Set([8080, 8081]);
  const tryOpen = (h: number) => {
    if (inUse.has(h)) {
      return Promise.reject(new CoveError("net.port_in_use", "x", { exit: ExitCode.Host }));
    }
    if (h > 0 && h < 1024) {
      return Promise.reject(new CoveError("net.port_denied", "x", { exit: ExitCode.Host }));
    }
    return Promise.resolve(h === 0 ? 45678 : h);
  };
  assertEquals(await openAtOrAfter(9000, tryOpen), 9000);
  assertEquals(await openAtOrAfter(8080, tryOpen), 8082);
  assertEquals(await openAtOrAfter(80, tryOpen), 45678);
});

Deno.test("automatic forwards go into the run's forward set as origin auto and answer on 127.0.0.1", async () => {
  const { ForwardSet } = await import("../../core/net/forwards.ts");
  const { startAutoForward } = await import("../../core/net/autoforward.ts");
  // The "guest": a real listener on loopback; its /proc line says it listens on 0.0.0.0.
  const guest = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = guest.addr.port;
  const serving = (async () => {
    for await (const c of guest) {
      await c.write(new TextEncoder().encode("auto!"));
      c.close();
    }
  })().catch(() => {});
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  let tcp = HEAD + line(0, `00000000:${hex}`, "0A");
  const set = new ForwardSet(() => () => Promise.resolve("127.0.0.1"));
  // The guest port is taken on the host (by the "guest" itself): the forward takes the next one.
  const w = startAutoForward(
    set,
    0,
    { ignore: [], range: { from: 1, to: 65535 } },
    (p) => Promise.resolve(p.endsWith("6") ? "" : tcp),
    { intervalMs: 50 },
  );
  try {
    const deadline = Date.now() + 5000;
    while (set.list().length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const [f] = set.list();
    assertEquals([f.origin, f.guest, f.address], ["auto", port, "127.0.0.1"]);
    assertEquals(f.host > port, true);
    const c = await Deno.connect({ hostname: "127.0.0.1", port: f.host });
    const buf = new Uint8Array(16);
    const n = await c.read(buf);
    c.close();
    assertEquals(new TextDecoder().decode(buf.subarray(0, n ?? 0)), "auto!");
    tcp = HEAD; // stopped listening
    const until = Date.now() + 5000;
    while (set.list().length > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    assertEquals(set.list(), []);
  } finally {
    await w.stop();
    await set.closeAll();
    guest.close();
    await serving;
  }
});

Deno.test("on a NIC the engine forwards itself (QEMU user networking), automatic forwards are the engine's: added and removed live, via engine", async () => {
  const { ForwardSet } = await import("../../core/net/forwards.ts");
  const { startAutoForward } = await import("../../core/net/autoforward.ts");
  // A proxy could not reach such a guest: the resolver says so if it is ever asked.
  const set = new ForwardSet(() => () => Promise.reject(new Error("no guest address")));
  const added: string[] = [];
  const removed: string[] = [];
  const taken = new Set([8080]);
  set.setLiveEngine({
    serves: (nic) => nic === 0,
    add: (f) => {
      if (taken.has(f.host)) {
        return Promise.reject(new CoveError("net.port_in_use", "x", { exit: ExitCode.Host }));
      }
      added.push(`${f.address}:${f.host}-:${f.guest}`);
      return Promise.resolve(f.host);
    },
    remove: (f) => (removed.push(`${f.address}:${f.host}`), Promise.resolve()),
  });
  let tcp = HEAD + line(0, "00000000:1F90", "0A"); // 0.0.0.0:8080
  const w = startAutoForward(
    set,
    0,
    { ignore: [], range: { from: 1, to: 65535 } },
    (p) => Promise.resolve(p.endsWith("6") ? "" : tcp),
    { intervalMs: 20 },
  );
  try {
    const deadline = Date.now() + 5000;
    while (set.list().length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assertEquals(added, ["127.0.0.1:8081-:8080"]);
    assertEquals(
      set.list().map((f) => [f.origin, f.host, f.guest, f.via]),
      [["auto", 8081, 8080, "engine"]],
    );
    tcp = HEAD;
    const until = Date.now() + 5000;
    while (set.list().length > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    assertEquals(set.list(), []);
    assertEquals(removed, ["127.0.0.1:8081"]);
  } finally {
    await w.stop();
    await set.closeAll();
  }
});
