/**
 * A minimal HTTP/1.1 server and client over unix sockets, for the
 * supervisor's control socket. One request per connection (`Connection:
 * close`), JSON bodies with Content-Length, and the `Upgrade` handshake
 * (101 Switching Protocols) after which the connection carries raw console
 * bytes both ways.
 *
 * Hand-written because `Deno.serve` cannot hand over the raw connection for
 * a non-WebSocket upgrade, and `fetch` cannot reach a unix socket without
 * unstable APIs; the subset needed here is about two hundred lines. Any
 * HTTP client that speaks unix sockets works too, e.g.
 * `curl --unix-socket control.sock http://cove/status`.
 * @module
 */
import { concatBytes } from "../bytes.ts";

const MAX_HEAD = 16 * 1024;
const MAX_BODY = 1024 * 1024;

/** A parsed request. */
export interface HttpRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  /** Lower-case header names. */
  headers: Map<string, string>;
  body: Uint8Array;
}

/** A response to send. */
export interface HttpResponse {
  status: number;
  body?: unknown;
}

/** What a handler returns: a response, or "upgraded" when it took the connection. */
export type HttpResult = HttpResponse | "upgraded";

/** Handles one request; may take over `conn` after writing a 101 with {@link writeUpgrade}. */
export type HttpHandler = (
  req: HttpRequest,
  conn: Deno.UnixConn,
  rest: Uint8Array,
) => Promise<HttpResult>;

const REASONS: Record<number, string> = {
  101: "Switching Protocols",
  200: "OK",
  400: "Bad Request",
  404: "Not Found",
  405: "Method Not Allowed",
  409: "Conflict",
  413: "Payload Too Large",
  500: "Internal Server Error",
};

function indexOfHeadEnd(buf: Uint8Array): number {
  for (let i = 3; i < buf.length; i++) {
    if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 2] === 10 && buf[i - 3] === 13) return i + 1;
  }
  return -1;
}

/** Reads until the end of an HTTP head; returns the head text and the bytes after it. */
async function readHead(conn: Deno.Conn): Promise<{ head: string; rest: Uint8Array } | null> {
  let buf: Uint8Array = new Uint8Array(0);
  const chunk = new Uint8Array(4096);
  while (true) {
    const end = indexOfHeadEnd(buf);
    if (end >= 0) {
      return { head: new TextDecoder().decode(buf.subarray(0, end)), rest: buf.subarray(end) };
    }
    if (buf.length > MAX_HEAD) return null;
    const n = await conn.read(chunk);
    if (n === null) return null;
    buf = concatBytes([buf, chunk.subarray(0, n)]);
  }
}

async function readBody(
  conn: Deno.Conn,
  rest: Uint8Array,
  length: number,
): Promise<{ body: Uint8Array; rest: Uint8Array }> {
  let buf = rest;
  const chunk = new Uint8Array(16384);
  while (buf.length < length) {
    const n = await conn.read(chunk);
    if (n === null) break;
    buf = concatBytes([buf, chunk.subarray(0, n)]);
  }
  return { body: buf.subarray(0, length), rest: buf.subarray(length) };
}

function parseHeaders(lines: string[]): Map<string, string> {
  const h = new Map<string, string>();
  for (const l of lines) {
    const i = l.indexOf(":");
    if (i > 0) h.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
  }
  return h;
}

/** Writes all bytes. */
export async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

/** Writes a JSON response and closes nothing. */
export async function writeResponse(conn: Deno.Conn, res: HttpResponse): Promise<void> {
  const body = new TextEncoder().encode(
    res.body === undefined ? "" : JSON.stringify(res.body) + "\n",
  );
  const head = `HTTP/1.1 ${res.status} ${REASONS[res.status] ?? "Status"}\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
  await writeAll(conn, concatBytes([new TextEncoder().encode(head), body]));
}

/** Writes the 101 response that starts a raw byte stream. */
export async function writeUpgrade(conn: Deno.Conn, protocol: string): Promise<void> {
  await writeAll(
    conn,
    new TextEncoder().encode(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${protocol}\r\nConnection: Upgrade\r\n\r\n`,
    ),
  );
}

/** A running server. */
export interface HttpServer {
  /** Stops accepting; open connections finish on their own. */
  close(): void;
  readonly finished: Promise<void>;
}

/** Serves `handler` on a listening unix socket. */
export function serveHttp(
  listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>,
  handler: HttpHandler,
): HttpServer {
  let closed = false;
  const serveConn = async (conn: Deno.UnixConn) => {
    let upgraded = false;
    try {
      const got = await readHead(conn);
      if (!got) {
        await writeResponse(conn, {
          status: 400,
          body: { error: { code: "http.bad_request", message: "bad request" } },
        });
        return;
      }
      const [first, ...lines] = got.head.split("\r\n");
      const [method, target] = first.split(" ");
      const headers = parseHeaders(lines);
      const length = Number(headers.get("content-length") ?? "0");
      if (!Number.isFinite(length) || length < 0 || length > MAX_BODY) {
        await writeResponse(conn, {
          status: 413,
          body: { error: { code: "http.too_large", message: "body too large" } },
        });
        return;
      }
      const { body, rest } = await readBody(conn, got.rest, length);
      const url = new URL(target ?? "/", "http://cove");
      const res = await handler(
        { method, path: url.pathname, query: url.searchParams, headers, body },
        conn,
        rest,
      );
      if (res === "upgraded") {
        upgraded = true;
        return;
      }
      await writeResponse(conn, res);
    } catch {
      // The peer went away or sent garbage: nothing to answer.
    } finally {
      if (!upgraded) {
        try {
          conn.close();
        } catch { /* closed */ }
      }
    }
  };
  const finished = (async () => {
    try {
      for await (const conn of listener) {
        if (closed) {
          conn.close();
          break;
        }
        void serveConn(conn);
      }
    } catch { /* listener closed */ }
  })();
  return {
    close() {
      closed = true;
      try {
        listener.close();
      } catch { /* closed */ }
    },
    finished,
  };
}

/** A response read by the client. */
export interface ClientResponse {
  status: number;
  headers: Map<string, string>;
  body: Uint8Array;
  /** The body parsed as JSON (undefined when empty). */
  json<T = unknown>(): T;
}

/** A request that got no answer within its timeout (the peer accepted, then said nothing). */
export class HttpTimeout extends Error {
  constructor(readonly timeoutMs: number) {
    super(`no answer within ${timeoutMs / 1000}s`);
    this.name = "HttpTimeout";
  }
}

/**
 * Sends one request over a new connection to a unix socket. With
 * `timeoutMs`, the whole exchange is bounded and ends in {@link HttpTimeout}.
 */
export async function httpRequest(
  socket: string,
  method: string,
  path: string,
  body?: unknown,
  opts: { timeoutMs?: number } = {},
): Promise<ClientResponse> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut = false;
  if (opts.timeoutMs) {
    timer = setTimeout(() => {
      timedOut = true;
      try {
        conn.close();
      } catch { /* closed */ }
    }, opts.timeoutMs);
  }
  try {
    return await exchange(conn, method, path, body);
  } catch (e) {
    if (timedOut) throw new HttpTimeout(opts.timeoutMs!);
    throw e;
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

async function exchange(
  conn: Deno.UnixConn,
  method: string,
  path: string,
  body: unknown,
): Promise<ClientResponse> {
  {
    const payload = body === undefined
      ? new Uint8Array()
      : new TextEncoder().encode(JSON.stringify(body));
    const head = `${method} ${path} HTTP/1.1\r\nHost: cove\r\nConnection: close\r\n` +
      (body === undefined ? "" : "Content-Type: application/json\r\n") +
      `Content-Length: ${payload.length}\r\n\r\n`;
    await writeAll(conn, concatBytes([new TextEncoder().encode(head), payload]));
    const got = await readHead(conn);
    if (!got) throw new Error("the control socket closed without an answer");
    const [first, ...lines] = got.head.split("\r\n");
    const status = Number(first.split(" ")[1]);
    const headers = parseHeaders(lines);
    const length = headers.has("content-length") ? Number(headers.get("content-length")) : Infinity;
    let data = got.rest;
    const chunk = new Uint8Array(16384);
    while (data.length < length) {
      const n = await conn.read(chunk);
      if (n === null) break;
      data = concatBytes([data, chunk.subarray(0, n)]);
    }
    const text = new TextDecoder().decode(data);
    return {
      status,
      headers,
      body: data,
      json<T>() {
        return (text.trim() ? JSON.parse(text) : undefined) as T;
      },
    };
  }
}

/** Opens an upgraded byte stream; returns the connection and any bytes already read past the head. */
export async function httpUpgrade(
  socket: string,
  path: string,
  protocol: string,
): Promise<{ conn: Deno.UnixConn; first: Uint8Array }> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  try {
    await writeAll(
      conn,
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nHost: cove\r\nConnection: Upgrade\r\nUpgrade: ${protocol}\r\nContent-Length: 0\r\n\r\n`,
      ),
    );
    const got = await readHead(conn);
    if (!got) throw new Error("the control socket closed without an answer");
    const status = Number(got.head.split(" ")[1]);
    if (status !== 101) {
      const { body } = await readBody(conn, got.rest, MAX_BODY).catch(() => ({
        body: new Uint8Array(),
      }));
      let msg = `status ${status}`;
      try {
        const j = JSON.parse(new TextDecoder().decode(body)) as { error?: { message?: string } };
        if (j.error?.message) msg = j.error.message;
      } catch { /* not JSON */ }
      throw new Error(msg);
    }
    return { conn, first: got.rest };
  } catch (e) {
    try {
      conn.close();
    } catch { /* closed */ }
    throw e;
  }
}
