// cove networks (core/net/networks.ts) and their Ethernet switch (core/net/switch.ts).
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { type Cidr, NetworkStore, overlaps, parseCidr } from "../../core/net/networks.ts";
import { EthernetSwitch } from "../../core/net/switch.ts";
import { CoveError } from "../../core/errors.ts";
import { withTempDir } from "../helpers/cli.ts";

const noRoutes = () => Promise.resolve([] as Cidr[]);

Deno.test("subnets parse to their network address and overlap when they share an address", () => {
  assertEquals(parseCidr("10.250.3.7/24"), parseCidr("10.250.3.0/24"));
  assert(overlaps(parseCidr("10.0.0.0/8"), parseCidr("10.250.0.0/24")));
  assert(!overlaps(parseCidr("10.250.0.0/24"), parseCidr("10.250.1.0/24")));
  for (const bad of ["10.0.0.0", "10.0.0.0/31", "300.1.1.1/24", "ten/8"]) {
    try {
      parseCidr(bad);
      throw new Error(`'${bad}' was accepted`);
    } catch (e) {
      assertEquals((e as CoveError).code, "net.bad_subnet");
    }
  }
});

Deno.test("networks get a free default subnet, refuse overlaps with each other and with host routes, and list", () =>
  withTempDir(async (home) => {
    const host = [parseCidr("10.250.0.0/24")]; // the host already routes the first default
    const s = new NetworkStore(home, () => Promise.resolve(host));
    const a = await s.create("lab");
    assertEquals(a.subnet, "10.250.1.0/24");
    assertEquals(a.mode, "host");
    const b = await s.create("other", { subnet: "192.168.77.0/24", mode: "shared" });
    assertEquals(b.mode, "shared");
    const clash = await assertRejects(
      () => s.create("third", { subnet: "10.250.1.128/25" }),
      CoveError,
    );
    assertEquals(clash.code, "net.subnet_overlap");
    assertMatch(clash.message, /overlaps cove network 'lab' \(10\.250\.1\.0\/24\)/);
    const route = await assertRejects(
      () => s.create("fourth", { subnet: "10.250.0.0/16" }),
      CoveError,
    );
    assertMatch(route.message, /overlaps/);
    assertEquals((await s.list()).map((n) => n.name), ["lab", "other"]);
    const dup = await assertRejects(() => s.create("lab"), CoveError);
    assertEquals(dup.code, "net.exists");
  }));

Deno.test("a missing network is one line; rm refuses a network with members and removes one without", () =>
  withTempDir(async (home) => {
    const s = new NetworkStore(home, noRoutes);
    const missing = await assertRejects(() => s.get("nope"), CoveError);
    assertEquals([missing.code, missing.exit], ["net.not_found", 3]);
    await s.create("lab");
    const busy = await assertRejects(() => s.remove("lab", ["a", "b"]), CoveError);
    assertEquals([busy.code, busy.exit], ["net.in_use", 4]);
    assertMatch(busy.message, /still has members: a, b/);
    await s.remove("lab", []);
    assertEquals(await s.list(), []);
    const bad = await assertRejects(() => s.create("../x"), CoveError);
    assertEquals(bad.code, "net.bad_name");
  }));

Deno.test("each VM keeps its address on a network; addresses come from the subnet, the first reserved", () =>
  withTempDir(async (home) => {
    const s = new NetworkStore(home, noRoutes);
    await s.create("lab", { subnet: "10.251.0.0/29" });
    assertEquals(await s.address("lab", "a"), "10.251.0.2/29");
    assertEquals(await s.address("lab", "b"), "10.251.0.3/29");
    assertEquals(await s.address("lab", "a"), "10.251.0.2/29");
    for (const vm of ["c", "d", "e"]) await s.address("lab", vm);
    const full = await assertRejects(() => s.address("lab", "f"), CoveError);
    assertEquals(full.code, "net.full");
  }));

/** One port of the switch: a unix connection speaking QEMU's stream framing. */
async function port(path: string) {
  const c = await Deno.connect({ transport: "unix", path });
  const got: Uint8Array[] = [];
  let buf = new Uint8Array(0);
  const reading = (async () => {
    const chunk = new Uint8Array(65536);
    while (true) {
      const n = await c.read(chunk).catch(() => null);
      if (n === null) return;
      const nb = new Uint8Array(buf.length + n);
      nb.set(buf);
      nb.set(chunk.subarray(0, n), buf.length);
      buf = nb;
      while (buf.length >= 4) {
        const len = new DataView(buf.buffer, buf.byteOffset).getUint32(0);
        if (buf.length < 4 + len) break;
        got.push(buf.slice(4, 4 + len));
        buf = buf.slice(4 + len);
      }
    }
  })();
  const send = async (dst: string, src: string, body: string) => {
    const mac = (m: string) => m.split(":").map((x) => parseInt(x, 16));
    const frame = new Uint8Array([
      ...mac(dst),
      ...mac(src),
      0x08,
      0x00,
      ...new TextEncoder().encode(body),
    ]);
    const out = new Uint8Array(4 + frame.length);
    new DataView(out.buffer).setUint32(0, frame.length);
    out.set(frame, 4);
    await c.write(out);
  };
  const bodies = () => got.map((f) => new TextDecoder().decode(f.subarray(14)));
  return { c, send, bodies, done: () => (c.close(), reading) };
}

Deno.test("the switch floods broadcasts and unknown destinations, then sends only to the learned port", () =>
  withTempDir(async (dir) => {
    const path = join(dir, "sw.sock");
    const sw = EthernetSwitch.listen(path);
    const A = "52:54:00:00:00:0a", B = "52:54:00:00:00:0b", BCAST = "ff:ff:ff:ff:ff:ff";
    const a = await port(path), b = await port(path), c = await port(path);
    try {
      const settle = () => new Promise((r) => setTimeout(r, 100));
      await settle();
      await a.send(BCAST, A, "hello all"); // everyone else gets it; the switch learns A
      await settle();
      await b.send(A, B, "to a"); // A is known: only a gets it; the switch learns B
      await settle();
      await a.send(B, A, "to b");
      await settle();
      assertEquals(a.bodies(), ["to a"]);
      assertEquals(b.bodies(), ["hello all", "to b"]);
      assertEquals(c.bodies(), ["hello all"]);
      assertEquals(sw.stats().ports, 3);
      assertEquals(sw.stats().macs, 2);
    } finally {
      await a.done();
      await b.done();
      await c.done();
      await sw.close();
    }
  }));

Deno.test("an idle switch exits by itself once its last port has gone", () =>
  withTempDir(async (dir) => {
    const path = join(dir, "sw.sock");
    const sw = EthernetSwitch.listen(path, { exitWhenIdleMs: 200 });
    const a = await port(path);
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(sw.stats().ports, 1); // a port keeps it up
    await a.done();
    await sw.done;
  }));
