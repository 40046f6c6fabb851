/**
 * A real OCI registry for tests: Debian's `docker-registry` (the CNCF
 * distribution registry) started on a free loopback port with its storage
 * in a temporary directory, open or behind htpasswd (bcrypt) auth. Plus an
 * HTTP proxy in front of it that counts requests and injects faults
 * (dropped connections, flipped bytes, truncated bodies, slow bodies), and
 * a Bearer-token front that answers challenges like ghcr.io or Docker Hub.
 * Everything listens on 127.0.0.1 only.
 * @module
 */
import { join } from "node:path";

/** A running registry. */
export interface TestRegistry {
  /** `127.0.0.1:PORT`. */
  host: string;
  port: number;
  root: string;
  stop(): Promise<void>;
}

function need(bin: string): void {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin").split(":")) {
    try {
      if (Deno.statSync(join(dir, bin)).isFile) return;
    } catch { /* next */ }
  }
  throw new Error(
    `'${bin}' is required for this test: apt-get install ${
      bin === "htpasswd" ? "apache2-utils" : bin
    }`,
  );
}

/** A free loopback TCP port. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Starts `docker-registry serve` on a free port; with `auth`, behind htpasswd. */
export async function startRegistry(
  auth?: { user: string; password: string },
): Promise<TestRegistry> {
  need("docker-registry");
  const root = await Deno.makeTempDir({ prefix: "cove-registry-" });
  const port = freePort();
  let authYaml = "";
  if (auth) {
    need("htpasswd");
    const htpasswd = join(root, "htpasswd");
    // -i: the password comes on stdin, not in argv.
    const child = new Deno.Command("htpasswd", {
      args: ["-Bin", auth.user],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    })
      .spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(auth.password + "\n"));
    await w.close();
    const out = await child.output();
    if (!out.success) throw new Error(`htpasswd failed: ${new TextDecoder().decode(out.stderr)}`);
    await Deno.writeFile(htpasswd, out.stdout);
    authYaml = `auth:\n  htpasswd:\n    realm: cove-test\n    path: ${htpasswd}\n`;
  }
  const config = join(root, "config.yml");
  await Deno.writeTextFile(
    config,
    `version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${join(root, "data")}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port}
${authYaml}`,
  );
  const child = new Deno.Command("docker-registry", {
    args: ["serve", config],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = child.stderr.pipeTo(new WritableStream()).catch(() => {});
  const host = `127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const r = await fetch(`http://${host}/v2/`);
      await r.body?.cancel();
      if (r.status === 200 || r.status === 401) break;
    } catch { /* not yet */ }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error("docker-registry did not start within 20 s");
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    host,
    port,
    root,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      await child.status;
      await stderr;
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}

/** What the proxy does to one blob response. */
export interface BlobFault {
  /** Cut the connection after this many body bytes. */
  dropAfter?: number;
  /** Flip one byte at this offset of the body. */
  flipAt?: number;
  /** Send only this many bytes, with a matching Content-Length. */
  truncateTo?: number;
  /** Bytes per second (roughly), to make a pull slow enough to interrupt. */
  rate?: number;
}

/**
 * A stall the fault-injecting proxy plays on one request: no answer at all
 * (`headers`), or the upstream's headers and the first `after` body bytes,
 * then nothing more (`body`). The connection stays open until the client
 * gives up.
 */
export type StallFault = { at: "headers" } | { at: "body"; after: number };

/** A proxy in front of a registry. */
export interface TestProxy {
  /** Decides a stall for any request (checked before `fault`). */
  stall: (method: string, path: string) => StallFault | undefined;
  host: string;
  /** Every request: method and path. */
  seen: { method: string; path: string; range: string | null }[];
  /** Decides the fault for a blob GET (`n` counts blob GETs from 0). */
  fault: (path: string, n: number) => BlobFault | undefined;
  /** Blob GET requests seen. */
  blobGets(): number;
  /** Response body bytes sent for blob GETs. */
  blobBytes: number;
  stop(): Promise<void>;
}

/** Starts an HTTP proxy to `upstream` (`127.0.0.1:PORT`). */
export function startProxy(upstream: string): TestProxy {
  let blobGetCount = 0;
  /** Ends every stall still held, so shutting down does not wait for them. */
  const release = new Set<() => void>();
  const proxy: TestProxy = {
    host: "",
    seen: [],
    fault: () => undefined,
    stall: () => undefined,
    blobGets: () => blobGetCount,
    blobBytes: 0,
    stop: async () => {},
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    proxy.seen.push({ method: req.method, path: url.pathname, range: req.headers.get("range") });
    const stall = proxy.stall(req.method, url.pathname);
    if (stall?.at === "headers") {
      // No answer: hold the request until the client hangs up.
      await new Promise<void>((r) => {
        const done = () => {
          release.delete(done);
          r();
        };
        release.add(done);
        req.signal.addEventListener("abort", done, { once: true });
      });
      return new Response(null, { status: 499 });
    }
    const headers = new Headers(req.headers);
    headers.set("host", upstream);
    const up = await fetch(`http://${upstream}${url.pathname}${url.search}`, {
      method: req.method,
      headers,
      body: req.body,
      redirect: "manual",
    });
    if (stall?.at === "body") {
      const all = new Uint8Array(await up.arrayBuffer());
      const stallHeaders = new Headers(up.headers);
      stallHeaders.delete("content-encoding");
      return new Response(
        new ReadableStream<Uint8Array>({
          start(ctl) {
            // Never closed (until stop): the client's stall timeout must fire.
            if (stall.after > 0) ctl.enqueue(all.slice(0, Math.min(stall.after, all.length)));
            const end = () => {
              release.delete(end);
              try {
                ctl.error(new Error("proxy stopped"));
              } catch { /* already closed */ }
            };
            release.add(end);
          },
          cancel() {
            // the client hung up
          },
        }),
        { status: up.status, headers: stallHeaders },
      );
    }
    const isBlobGet = req.method === "GET" && /\/blobs\/sha256:/.test(url.pathname);
    const outHeaders = new Headers(up.headers);
    const loc = outHeaders.get("location");
    if (loc) outHeaders.set("location", loc.replace(upstream, proxy.host));
    if (!isBlobGet || !up.body || up.status >= 300) {
      return new Response(up.body, { status: up.status, headers: outHeaders });
    }
    const fault = proxy.fault(url.pathname, blobGetCount++) ?? {};
    if (fault.truncateTo !== undefined) {
      const all = new Uint8Array(await up.arrayBuffer());
      const body = all.slice(0, Math.min(fault.truncateTo, all.length));
      outHeaders.set("content-length", String(body.length));
      proxy.blobBytes += body.length;
      return new Response(body, { status: up.status, headers: outHeaders });
    }
    const reader = up.body.getReader();
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(ctl) {
        const r = await reader.read();
        if (r.done) {
          ctl.close();
          return;
        }
        let c = r.value;
        if (fault.flipAt !== undefined && fault.flipAt >= sent && fault.flipAt < sent + c.length) {
          c = c.slice();
          c[fault.flipAt - sent] ^= 0xff;
        }
        if (fault.dropAfter !== undefined && sent + c.length > fault.dropAfter) {
          const keep = c.subarray(0, Math.max(0, fault.dropAfter - sent));
          if (keep.length) ctl.enqueue(keep);
          sent += keep.length;
          proxy.blobBytes += keep.length;
          await reader.cancel().catch(() => {});
          // Let the partial bytes out, then end the body short of its
          // Content-Length: the server has to break the connection.
          await new Promise((r) => setTimeout(r, 20));
          ctl.close();
          return;
        }
        if (fault.rate) await new Promise((r) => setTimeout(r, (c.length / fault.rate!) * 1000));
        sent += c.length;
        proxy.blobBytes += c.length;
        ctl.enqueue(c);
      },
      cancel() {
        reader.cancel().catch(() => {});
      },
    });
    return new Response(body, { status: up.status, headers: outHeaders });
  });
  proxy.host = `127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
  proxy.stop = async () => {
    for (const r of [...release]) r();
    await server.shutdown();
  };
  return proxy;
}

/**
 * A registry front with Bearer token auth: unauthenticated requests get a
 * `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge; the realm
 * hands out a token for the right Basic credentials; requests with that
 * token go through to `upstream`.
 */
export function startTokenFront(upstream: string, user: string, password: string): {
  host: string;
  tokenRequests: { scope: string[]; service: string | null; basic: boolean }[];
  stop(): Promise<void>;
} {
  const token = crypto.randomUUID();
  const tokenRequests: { scope: string[]; service: string | null; basic: boolean }[] = [];
  let host = "";
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/token") {
      const auth = req.headers.get("authorization") ?? "";
      tokenRequests.push({
        scope: url.searchParams.getAll("scope"),
        service: url.searchParams.get("service"),
        basic: auth.startsWith("Basic "),
      });
      if (auth !== `Basic ${btoa(`${user}:${password}`)}`) {
        return Response.json({ errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] }, {
          status: 401,
        });
      }
      return Response.json({ token, expires_in: 300 });
    }
    if (req.headers.get("authorization") !== `Bearer ${token}`) {
      const m = /^\/v2\/(.+)\/(manifests|blobs)\//.exec(url.pathname);
      const scope = m
        ? `,scope="repository:${m[1]}:${
          req.method === "GET" || req.method === "HEAD" ? "pull" : "pull,push"
        }"`
        : "";
      await req.body?.cancel();
      return new Response(
        JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }),
        {
          status: 401,
          headers: {
            "www-authenticate": `Bearer realm="http://${host}/token",service="cove-test"${scope}`,
          },
        },
      );
    }
    const headers = new Headers(req.headers);
    headers.delete("authorization");
    const up = await fetch(`http://${upstream}${url.pathname}${url.search}`, {
      method: req.method,
      headers,
      body: req.body,
      redirect: "manual",
    });
    const outHeaders = new Headers(up.headers);
    const loc = outHeaders.get("location");
    if (loc) outHeaders.set("location", loc.replace(upstream, host));
    return new Response(up.body, { status: up.status, headers: outHeaders });
  });
  host = `127.0.0.1:${(server.addr as Deno.NetAddr).port}`;
  return { host, tokenRequests, stop: () => server.shutdown() };
}

/** Deterministic pseudo-random bytes. */
export function prng(n: number, seed: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s & 0xff;
  }
  return out;
}
