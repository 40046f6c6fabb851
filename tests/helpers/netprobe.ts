/**
 * A network client for the forwarding tests, run as its own process so a
 * test can run it inside a network namespace (`ip netns exec NS deno run
 * -A tests/helpers/netprobe.ts ...`). Prints one JSON object.
 *
 * - `http HOST PORT PATH`: one HTTP/1.0 GET on its own connection; status,
 *   body length and SHA-256.
 * - `parallel HOST PORT PATH N`: N such GETs at once; how many answered 200
 *   and how many distinct bodies came back.
 * - `udp HOST PORT TEXT`: one datagram; the reply's text (or null after 5 s).
 * - `closed HOST PORT`: connects and reads; the bytes received before the end.
 * - `drain HOST PORT`: connects, reads to the end; bytes and seconds (for bench/forward).
 * @module
 */
import dgram from "node:dgram";

async function sha256(b: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", b as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(d), (x) => x.toString(16).padStart(2, "0")).join("");
}

async function readAll(c: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  const buf = new Uint8Array(256 * 1024);
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

async function get(host: string, port: number, path: string) {
  const c = await Deno.connect({ hostname: host, port });
  try {
    const req = new TextEncoder().encode(`GET ${path} HTTP/1.0\r\nHost: ${host}\r\n\r\n`);
    let off = 0;
    while (off < req.length) off += await c.write(req.subarray(off));
    const all = await readAll(c);
    let end = -1;
    for (let i = 3; i < all.length; i++) {
      if (all[i - 3] === 13 && all[i - 2] === 10 && all[i - 1] === 13 && all[i] === 10) {
        end = i + 1;
        break;
      }
    }
    if (end < 0) return { status: 0, length: 0, sha256: "", body: new Uint8Array() };
    const head = new TextDecoder().decode(all.subarray(0, end));
    const status = Number(/^HTTP\/1\.\d (\d{3})/.exec(head)?.[1] ?? 0);
    const body = all.subarray(end);
    return { status, length: body.length, sha256: await sha256(body), body };
  } finally {
    try {
      c.close();
    } catch { /* closed */ }
  }
}

const [cmd, host, portText, ...rest] = Deno.args;
const port = Number(portText);
let result: unknown;
if (cmd === "http") {
  const { status, length, sha256 } = await get(host, port, rest[0] ?? "/");
  result = { status, length, sha256 };
} else if (cmd === "parallel") {
  const n = Number(rest[1] ?? "200");
  const all = await Promise.all(
    Array.from({ length: n }, () => get(host, port, rest[0] ?? "/").catch(() => undefined)),
  );
  const ok = all.filter((r) => r?.status === 200);
  result = { ok: ok.length, failed: n - ok.length, bodies: new Set(ok.map((r) => r!.sha256)).size };
} else if (cmd === "udp") {
  const s = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
  result = await new Promise((resolve) => {
    const t = setTimeout(() => resolve({ reply: null }), 5000);
    s.on("message", (m) => {
      clearTimeout(t);
      resolve({ reply: m.toString() });
    });
    s.send(new TextEncoder().encode(rest[0] ?? "ping"), port, host);
  });
  s.close();
} else if (cmd === "closed") {
  try {
    const c = await Deno.connect({ hostname: host, port });
    const got = await readAll(c).catch(() => new Uint8Array());
    c.close();
    result = { connected: true, bytes: got.length };
  } catch (e) {
    result = { connected: false, error: (e as Error).name };
  }
} else if (cmd === "drain") {
  const t0 = performance.now();
  const c = await Deno.connect({ hostname: host, port });
  const buf = new Uint8Array(1024 * 1024);
  let bytes = 0;
  while (true) {
    const n = await c.read(buf);
    if (n === null) break;
    bytes += n;
  }
  c.close();
  result = { bytes, seconds: (performance.now() - t0) / 1000 };
} else {
  console.error("usage: netprobe http|parallel|udp|closed|drain HOST PORT ...");
  Deno.exit(2);
}
console.log(JSON.stringify(result));
