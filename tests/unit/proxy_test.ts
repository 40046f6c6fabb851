// The supervisor's userspace forward (core/net/proxy.ts) against real servers on loopback.
import { assert, assertEquals, assertRejects } from "../helpers/assert.ts";
import dgram from "node:dgram";
import { openForward } from "../../core/net/proxy.ts";
import { CoveError } from "../../core/errors.ts";
import { linuxTest } from "../helpers/guard.ts";

const linux = Deno.build.os === "linux";

async function readAll(c: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  let size = 0;
  while (true) {
    const n = await c.read(buf);
    if (n === null) break;
    parts.push(buf.slice(0, n));
    size += n;
  }
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

async function writeAll(c: Deno.Conn, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await c.write(b.subarray(off));
}

async function sha(b: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", b as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(d), (x) => x.toString(16).padStart(2, "0")).join("");
}

function random(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, Math.min(n, i + 65536)));
  return b;
}

/** A server that reads to end of stream, then answers with the SHA-256 of what it read and `reply`. */
function digestServer(hostname: string, reply: Uint8Array) {
  const l = Deno.listen({ hostname, port: 0 });
  const done = (async () => {
    for await (const c of l) {
      void (async () => {
        try {
          const got = await readAll(c);
          await writeAll(c, new TextEncoder().encode((await sha(got)) + "\n"));
          await writeAll(c, reply);
        } finally {
          c.close();
        }
      })();
    }
  })().catch(() => {});
  return { port: l.addr.port, close: async () => (l.close(), await done) };
}

function fdCount(): number {
  let n = 0;
  for (const _ of Deno.readDirSync("/proc/self/fd")) n++;
  return n;
}

Deno.test("a TCP forward copies both directions byte-identically and passes the half-close on", async () => {
  const reply = random(3 * 1024 * 1024 + 17);
  const srv = digestServer("127.0.0.1", reply);
  const p = await openForward(
    { protocol: "tcp", address: "127.0.0.1", host: 0, guest: srv.port },
    () => Promise.resolve("127.0.0.1"),
  );
  try {
    const upload = random(5 * 1024 * 1024 + 3);
    const c = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
    const reading = readAll(c);
    await writeAll(c, upload);
    await c.closeWrite(); // the server only answers after it saw the end of our stream
    const got = await reading;
    c.close();
    const text = new TextDecoder().decode(got.subarray(0, 65));
    assertEquals(text, (await sha(upload)) + "\n");
    assertEquals(await sha(got.subarray(65)), await sha(reply));
  } finally {
    await p.close();
    await srv.close();
  }
});

Deno.test("a TCP forward to a port where nothing listens closes the client and keeps serving", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close(); // nothing listens there now
  const p = await openForward(
    { protocol: "tcp", address: "127.0.0.1", host: 0, guest: port },
    () => Promise.resolve("127.0.0.1"),
  );
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
    const got = await readAll(c).catch(() => new Uint8Array());
    c.close();
    assertEquals(got.length, 0);
    assertEquals(p.stats().failed, 1);
    // Now something listens: the same forward serves it.
    const srv = Deno.listen({ hostname: "127.0.0.1", port });
    const served = (async () => {
      const s = await srv.accept();
      await writeAll(s, new TextEncoder().encode("up"));
      s.close();
    })();
    const c2 = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
    assertEquals(new TextDecoder().decode(await readAll(c2)), "up");
    c2.close();
    await served;
    srv.close();
  } finally {
    await p.close();
  }
});

linuxTest({
  name:
    "a TCP forward re-resolves the guest per connection: after an address change the next connection reaches the new address",
  needs: "connects to 127.0.0.2, a loopback address on Linux only",
  fn: async () => {
    const a = digestServer("127.0.0.1", new TextEncoder().encode("A"));
    const b = Deno.listen({ hostname: "127.0.0.2", port: a.port });
    const bDone = (async () => {
      for await (const c of b) {
        await readAll(c);
        await writeAll(c, new TextEncoder().encode("x".repeat(65) + "B"));
        c.close();
      }
    })().catch(() => {});
    let current = "127.0.0.1";
    const p = await openForward(
      { protocol: "tcp", address: "127.0.0.1", host: 0, guest: a.port },
      () => Promise.resolve(current),
    );
    const ask = async () => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
      await c.closeWrite();
      const got = new TextDecoder().decode(await readAll(c));
      c.close();
      return got.slice(65);
    };
    try {
      assertEquals(await ask(), "A");
      current = "127.0.0.2";
      assertEquals(await ask(), "B");
    } finally {
      await p.close();
      await a.close();
      b.close();
      await bDone;
    }
  },
});

Deno.test("200 parallel connections through a TCP forward all complete and leave no descriptor open", async () => {
  const srv = digestServer("127.0.0.1", new TextEncoder().encode("ok"));
  const p = await openForward(
    { protocol: "tcp", address: "127.0.0.1", host: 0, guest: srv.port },
    () => Promise.resolve("127.0.0.1"),
  );
  const before = linux ? fdCount() : 0;
  try {
    const one = async (i: number) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
      const body = new TextEncoder().encode(`connection ${i}`.repeat(100));
      const reading = readAll(c);
      await writeAll(c, body);
      await c.closeWrite();
      const got = new TextDecoder().decode(await reading);
      c.close();
      return got === `${await sha(body)}\nok`;
    };
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => one(i)));
    assertEquals(results.filter((r) => r).length, 200);
    assertEquals(p.stats().total, 200);
    // The proxy closes its side once both directions ended.
    for (let i = 0; i < 100 && p.stats().active > 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assertEquals(p.stats().active, 0);
    if (linux) assert(fdCount() <= before + 2, `descriptors: ${before} before, ${fdCount()} after`);
  } finally {
    await p.close();
    await srv.close();
  }
});

Deno.test("a TCP forward reads no more than it can write: a guest that does not read holds the client back", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of l) held.push(c); // accepted, never read
  })().catch(() => {});
  const p = await openForward(
    { protocol: "tcp", address: "127.0.0.1", host: 0, guest: l.addr.port },
    () => Promise.resolve("127.0.0.1"),
  );
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
    const total = 256 * 1024 * 1024;
    const chunk = new Uint8Array(1024 * 1024);
    let sent = 0;
    const writing = (async () => {
      try {
        while (sent < total) sent += await c.write(chunk);
      } catch { /* closed at the end */ }
    })();
    await new Promise((r) => setTimeout(r, 1500));
    // Only kernel socket buffers and the proxy's one buffer per direction hold data.
    assert(p.stats().bytesIn < 64 * 1024 * 1024, `the proxy read ${p.stats().bytesIn} bytes`);
    assert(sent < total, "the writer was not held back");
    c.close();
    await writing;
  } finally {
    await p.close();
    for (const h of held) h.close();
    l.close();
    await accepting;
  }
});

Deno.test("a UDP forward echoes per flow, and closes a flow after its idle timeout", async () => {
  const echo = dgram.createSocket("udp4");
  await new Promise<void>((r) => echo.bind(0, "127.0.0.1", () => r()));
  echo.on(
    "message",
    (m, r) => echo.send(Buffer.concat([Buffer.from("echo:"), m]), r.port, r.address),
  );
  const p = await openForward(
    { protocol: "udp", address: "127.0.0.1", host: 0, guest: echo.address().port },
    () => Promise.resolve("127.0.0.1"),
    { udpIdleMs: 300 },
  );
  const client = (tag: string) =>
    new Promise<string>((resolve, reject) => {
      const s = dgram.createSocket("udp4");
      const t = setTimeout(() => (s.close(), reject(new Error("no UDP answer"))), 5000);
      s.on("message", (m) => {
        clearTimeout(t);
        s.close();
        resolve(m.toString());
      });
      s.send(Buffer.from(tag), p.port, "127.0.0.1");
    });
  try {
    assertEquals(await Promise.all([client("one"), client("two")]), ["echo:one", "echo:two"]);
    assertEquals(p.stats().total, 2);
    for (let i = 0; i < 100 && p.stats().active > 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assertEquals(p.stats().active, 0);
  } finally {
    await p.close();
    echo.close();
  }
});

Deno.test("a forward on a port in use, or on an address not on this host, is refused in one line", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const e = await assertRejects(
      () =>
        openForward(
          { protocol: "tcp", address: "127.0.0.1", host: l.addr.port, guest: 80 },
          () => Promise.resolve("127.0.0.1"),
          { where: "--forward" },
        ),
      CoveError,
    );
    assertEquals((e as CoveError).code, "net.port_in_use");
    assertEquals((e as CoveError).exit, 5);
    assert((e as CoveError).message.includes(`127.0.0.1:${l.addr.port}`));
  } finally {
    l.close();
  }
  for (const protocol of ["tcp", "udp"] as const) {
    const e = await assertRejects(
      () =>
        openForward(
          { protocol, address: "192.0.2.77", host: 0, guest: 80 },
          () => Promise.resolve("127.0.0.1"),
        ),
      CoveError,
    );
    assertEquals((e as CoveError).code, "net.bad_address");
    assertEquals((e as CoveError).exit, 2);
  }
});

linuxTest({
  name:
    "when the connect to the resolved address fails the proxy asks again, naming it, and uses the new answer",
  needs: "connects to 127.0.0.3, a loopback address on Linux only",
  fn: async () => {
    const srv = digestServer("127.0.0.1", new TextEncoder().encode("new"));
    const asked: (string | undefined)[] = [];
    const p = await openForward(
      { protocol: "tcp", address: "127.0.0.1", host: 0, guest: srv.port },
      (hint) => {
        asked.push(hint?.failed);
        return Promise.resolve(hint?.failed ? "127.0.0.1" : "127.0.0.3"); // .3: nothing listens
      },
    );
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: p.port });
      await c.closeWrite();
      const got = new TextDecoder().decode(await readAll(c));
      c.close();
      assertEquals(got.slice(65), "new");
      assertEquals(asked, [undefined, "127.0.0.3"]);
    } finally {
      await p.close();
      await srv.close();
    }
  },
});
