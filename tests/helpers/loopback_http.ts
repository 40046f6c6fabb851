/**
 * A loopback HTTP server for downloader and catalog tests: serves in-memory
 * files with ETag/Last-Modified, honours `Range` and `If-Range`, and can be
 * told to drop a connection halfway, stall, or answer with a given status.
 * Listens on 127.0.0.1 only and records every request's headers.
 * @module
 */

/** How the server treats one file. */
export interface ServedFile {
  body: Uint8Array<ArrayBuffer>;
  etag?: string;
  /** Send no ETag at all (a server that validates by Last-Modified only). */
  noEtag?: boolean;
  /** Last-Modified; a request whose If-Modified-Since is this gets a 304. */
  lastModified?: string;
  contentType?: string;
  /** Drop the connection after this many bytes for the next N full/ranged responses. */
  dropAfter?: number;
  dropTimes?: number;
  /** Stall (send nothing more) after this many bytes. */
  stallAfter?: number;
  /** Stall only the next N responses (default: every one). */
  stallTimes?: number;
  /** Never answer (no headers) while this is true; the connection is held open. */
  noAnswer?: boolean;
  /** Extra response headers (Last-Modified, Retry-After). */
  headers?: Record<string, string>;
  /** Answer with this status and no body. */
  status?: number;
}

/** A request the server saw. */
export interface SeenRequest {
  path: string;
  range: string | null;
  ifRange: string | null;
  ifNoneMatch: string | null;
  ifModifiedSince: string | null;
}

/** A running loopback server. */
export interface LoopbackServer {
  base: string;
  files: Map<string, ServedFile>;
  seen: SeenRequest[];
  close(): Promise<void>;
}

/** Starts the server on a free port. */
export function startLoopbackServer(): LoopbackServer {
  const files = new Map<string, ServedFile>();
  const seen: SeenRequest[] = [];
  const timers = new Set<ReturnType<typeof setTimeout>>();
  /** Ends every held request and stalled body, so close() does not wait for them. */
  const release = new Set<() => void>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = new URL(req.url).pathname;
    const range = req.headers.get("Range");
    const ifRange = req.headers.get("If-Range");
    seen.push({
      path,
      range,
      ifRange,
      ifNoneMatch: req.headers.get("If-None-Match"),
      ifModifiedSince: req.headers.get("If-Modified-Since"),
    });
    const f = files.get(path);
    if (!f) return new Response("not found", { status: 404 });
    if (f.noAnswer) {
      return new Promise<Response>((resolve) => {
        const done = () => {
          release.delete(done);
          resolve(new Response(null, { status: 499 }));
        };
        release.add(done);
        req.signal.addEventListener("abort", done, { once: true });
      });
    }
    if (f.status) return new Response(null, { status: f.status, headers: f.headers });
    const etag = f.noEtag ? undefined : f.etag ?? `"${f.body.length}"`;
    if (etag && req.headers.get("If-None-Match") === etag) {
      return new Response(null, { status: 304, headers: { ETag: etag } });
    }
    if (f.lastModified && req.headers.get("If-Modified-Since") === f.lastModified) {
      return new Response(null, { status: 304, headers: { "Last-Modified": f.lastModified } });
    }
    let start = 0;
    let status = 200;
    const m = range ? /^bytes=(\d+)-$/.exec(range) : null;
    if (m && (ifRange === null || ifRange === (etag ?? f.lastModified))) {
      start = Number(m[1]);
      if (start >= f.body.length) {
        return new Response(null, {
          status: 416,
          headers: { "Content-Range": `bytes */${f.body.length}` },
        });
      }
      status = 206;
    }
    const slice = f.body.subarray(start);
    const headers: Record<string, string> = {
      "Content-Length": String(slice.length),
      "Content-Type": f.contentType ?? "application/octet-stream",
      "Accept-Ranges": "bytes",
      ...(etag ? { ETag: etag } : {}),
      ...(f.lastModified ? { "Last-Modified": f.lastModified } : {}),
      ...f.headers,
    };
    if (status === 206) {
      headers["Content-Range"] = `bytes ${start}-${f.body.length - 1}/${f.body.length}`;
    }
    const drop = f.dropAfter !== undefined && (f.dropTimes ?? 1) > 0;
    if (drop) f.dropTimes = (f.dropTimes ?? 1) - 1;
    const cut = drop
      ? Math.max(0, f.dropAfter! - start)
      : f.stallAfter !== undefined && (f.stallTimes === undefined || f.stallTimes-- > 0)
      ? Math.max(0, f.stallAfter - start)
      : undefined;
    if (cut === undefined) return new Response(slice, { status, headers });
    const stall = !drop;
    const body = new ReadableStream<Uint8Array>({
      start(ctl) {
        ctl.enqueue(slice.subarray(0, cut));
        if (stall) {
          // Never closes (until close()): the client's stall timeout must fire.
          const end = () => {
            release.delete(end);
            try {
              ctl.error(new Error("server closed"));
            } catch { /* already closed */ }
          };
          release.add(end);
          return;
        }
        const t = setTimeout(() => {
          timers.delete(t);
          ctl.close(); // fewer bytes than Content-Length: the connection is cut
        }, 20);
        timers.add(t);
      },
    });
    return new Response(body, { status, headers });
  });
  const addr = server.addr as Deno.NetAddr;
  return {
    base: `http://127.0.0.1:${addr.port}`,
    files,
    seen,
    async close() {
      for (const t of timers) clearTimeout(t);
      for (const r of [...release]) r();
      await server.shutdown();
    },
  };
}

/** Deterministic pseudo-random bytes (xorshift), so failures reproduce. */
export function pseudoRandomBytes(n: number, seed = 1): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
