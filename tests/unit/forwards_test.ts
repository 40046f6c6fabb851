// Forwards of a run (core/net/forwards.ts): the --forward syntax, merging, conflicts, who serves them.
import { assertEquals, assertMatch, assertThrows } from "../helpers/assert.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { type SpecInput, SpecSchema } from "../../core/spec/schema.ts";
import {
  engineActive,
  formatForward,
  ForwardSet,
  parseForwardFlag,
  planForwards,
} from "../../core/net/forwards.ts";
import { CoveError } from "../../core/errors.ts";
import type { HostInfo } from "../../engines/engine.ts";

const HOST: HostInfo = { os: "linux", arch: "x86_64", cpus: 4, memory: 8 * 2 ** 30 };
const spec = (s: SpecInput) => applyDefaults(SpecSchema.parse(s), HOST, "t");
const userOnly = (n: { mode: string }) => n.mode === "user" || n.mode === "nat";

Deno.test("--forward reads [ADDR:]HOST:GUEST[/udp], IPv6 in brackets, and prints back the same", () => {
  assertEquals(parseForwardFlag("8080:80"), {
    protocol: "tcp",
    address: "127.0.0.1",
    host: 8080,
    guest: 80,
  });
  assertEquals(parseForwardFlag("0.0.0.0:5353:53/udp"), {
    protocol: "udp",
    address: "0.0.0.0",
    host: 5353,
    guest: 53,
  });
  assertEquals(parseForwardFlag("[::1]:0:22/tcp"), {
    protocol: "tcp",
    address: "::1",
    host: 0,
    guest: 22,
  });
  for (const v of ["8080:80", "0.0.0.0:5353:53/udp", "[::1]:0:22"]) {
    const f = parseForwardFlag(v);
    assertEquals(parseForwardFlag(formatForward(f)), f);
  }
});

Deno.test("a bad --forward is one usage line saying what is wrong", () => {
  for (
    const [v, why] of [
      ["80", /expected HOST:GUEST/],
      ["8080:0", /'0' is not a port/],
      ["70000:80", /'70000' is not a port/],
      ["8080:80/sctp", /'sctp' is not tcp or udp/],
      ["a:b:c:d", /expected HOST:GUEST/],
    ] as const
  ) {
    const e = assertThrows(() => parseForwardFlag(v), CoveError);
    assertEquals(e.code, "usage.forward");
    assertEquals(e.exit, 2);
    assertMatch(e.message, why);
  }
});

Deno.test("flag forwards join the first NIC; user networking keeps them in the engine's spec, other modes go to the proxy", () => {
  const s = spec({
    os: "linux",
    networks: [{ mode: "none" }, { mode: "user", forwards: [{ host: 2222, guest: 22 }] }],
  });
  const p = planForwards(s, [parseForwardFlag("8080:80")], userOnly);
  assertEquals(p.proxied, []);
  assertEquals(p.engineSpec.networks[1].forwards.map((f) => f.host), [2222, 8080]);
  assertEquals(p.all.map((f) => [f.origin, f.where]), [
    ["spec", "networks[1].forwards[0]"],
    ["flag", "--forward 127.0.0.1:8080:80"],
  ]);

  const b = spec({
    os: "linux",
    networks: [{ mode: "bridged", interface: "tap0", forwards: [{ host: 2222, guest: 22 }] }],
  });
  const q = planForwards(b, [parseForwardFlag("5353:53/udp")], userOnly);
  assertEquals(q.engineSpec.networks[0].forwards, []);
  assertEquals(q.proxied.map((f) => `${f.host}/${f.protocol}`), ["2222/tcp", "5353/udp"]);
});

Deno.test("two forwards on one host port are refused, naming both", () => {
  const s = spec({
    os: "linux",
    networks: [{ mode: "nat", forwards: [{ host: 8080, guest: 80 }] }],
  });
  const e = assertThrows(
    () => planForwards(s, [parseForwardFlag("0.0.0.0:8080:81")], userOnly),
    CoveError,
  );
  assertEquals(e.code, "net.forward_conflict");
  assertMatch(e.message, /networks\[0\]\.forwards\[0\] and --forward 0\.0\.0\.0:8080:81/);
  // Another protocol, or another specific address, is not a conflict.
  planForwards(
    s,
    [parseForwardFlag("8080:80/udp"), parseForwardFlag("127.0.0.2:8080:80")],
    userOnly,
  );
});

Deno.test("--forward on a VM without a network is one line", () => {
  const s = spec({ os: "linux", networks: [{ mode: "none" }] });
  const e = assertThrows(() => planForwards(s, [parseForwardFlag("8080:80")], userOnly), CoveError);
  assertEquals(e.code, "net.no_network");
});

Deno.test("engine forwards show the host port the engine bound, in the engine's order", () => {
  const s = spec({
    os: "linux",
    networks: [
      { mode: "user", forwards: [{ host: 0, guest: 22 }] },
      { mode: "user", forwards: [{ host: 0, guest: 80 }] },
    ],
  });
  const p = planForwards(s, [parseForwardFlag("0:443")], userOnly);
  const act = engineActive(p, [
    { host: 40001, guest: 22 },
    { host: 40002, guest: 443 },
    { host: 40003, guest: 80 },
  ]);
  assertEquals(act.map((f) => [f.guest, f.host, f.origin, f.via]), [
    [22, 40001, "spec", "engine"],
    [443, 40002, "flag", "engine"],
    [80, 40003, "spec", "engine"],
  ]);
});

Deno.test("a refused forward closes the ones already opened: nothing is half-started", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const s = spec({
    os: "linux",
    networks: [{
      mode: "bridged",
      interface: "tap0",
      forwards: [{ host: 0, guest: 22 }, { host: taken.addr.port, guest: 80 }],
    }],
  });
  const p = planForwards(s, [], userOnly);
  const set = new ForwardSet(() => () => Promise.resolve("127.0.0.1"));
  try {
    const e = await (set.openAll(p.proxied, () => Promise.resolve("VM 'other' (--forward x)"))
      .then(() => undefined, (e) => e as CoveError));
    assertEquals(e?.code, "net.forward_conflict");
    assertMatch(e?.message ?? "", /already forwarded by VM 'other'/);
    assertEquals(set.list(), []);
  } finally {
    taken.close();
    await set.closeAll();
  }
});
