/**
 * The supervisor's userspace port forward: a TCP and UDP proxy from a host
 * address and port to a port of the guest, used wherever the engine does not
 * forward a network itself (VZ NAT and bridged, QEMU on a tap or bridge).
 *
 * - TCP: every accepted connection asks {@link ResolveGuest} for the guest's
 *   current address (so an address change reaches the next connection),
 *   connects, and copies both ways through one fixed buffer per direction
 *   (a write is awaited before the next read: backpressure, bounded
 *   memory). An end of stream in one direction is passed on as a half-close
 *   (`closeWrite`); the pair is closed when both directions ended, or at
 *   once when either side resets. A guest port where nothing listens closes
 *   the client's connection; the listener keeps serving.
 * - UDP: one flow per client address and port, each with its own socket to
 *   the guest, closed after an idle timeout; the number of flows and the
 *   datagrams queued while a flow resolves its target are bounded.
 *
 * Opening binds synchronously enough to refuse at `start`: a port in use, a
 * privileged port, an address not on this host each become one CoveError
 * ({@link bindError}).
 * @module
 */
import type dgram from "node:dgram";
import { CoveError, ExitCode } from "../errors.ts";

/**
 * The guest's current address (IPv4 or IPv6 literal), or undefined when it
 * has none yet. `failed` says that a connect to that address just failed:
 * a resolver that knows several candidates answers with another one.
 */
export type ResolveGuest = (hint?: { failed?: string }) => Promise<string | undefined>;

/** One forward as the proxy serves it. */
export interface ProxySpec {
  protocol: "tcp" | "udp";
  /** Host address to bind. */
  address: string;
  /** Host port; 0 picks a free one. */
  host: number;
  /** Guest port. */
  guest: number;
}

/** Tunables (tests shorten the timeouts). */
export interface ProxyOptions {
  /** Bytes buffered per direction of a TCP connection. Default 128 KiB. */
  bufferSize?: number;
  /** How long a connect to the guest may take (a busy guest's full accept queue makes SYNs wait). Default 20 s. */
  connectTimeoutMs?: number;
  /** Most TCP connections at once; more are closed on accept. Default 4096. */
  maxConnections?: number;
  /** A UDP flow with no traffic this long is closed. Default 60000 ms. */
  udpIdleMs?: number;
  /** Most UDP flows at once; the least recently used is closed for a new one. Default 1024. */
  maxFlows?: number;
  /** Datagrams held per flow while its target is resolved. Default 64. */
  maxPending?: number;
  /** Where problems are logged (one line each). */
  log?: (line: string) => void;
  /** Where a refusal names the forward, e.g. `networks[0].forwards[1]` or `--forward 8080:80`. */
  where?: string;
}

/** Counters of a proxy, for `cove port` and the tests. */
export interface ProxyStats {
  /** Open TCP connections or UDP flows. */
  active: number;
  /** Connections or flows served since the start. */
  total: number;
  /** Connections that could not reach the guest. */
  failed: number;
  bytesIn: number;
  bytesOut: number;
}

/** Maps a bind failure to the one line a user sees. */
export function bindError(e: unknown, address: string, port: number, where: string): CoveError {
  const code = (e as { code?: string })?.code;
  const at = where ? `${where}: ` : "";
  if (e instanceof Deno.errors.AddrInUse || code === "EADDRINUSE") {
    return new CoveError("net.port_in_use", `${at}host port ${address}:${port} is already in use`, {
      hint: "stop what listens there, or choose another host port (0 picks a free one)",
      exit: ExitCode.Host,
      cause: e,
    });
  }
  if (e instanceof Deno.errors.AddrNotAvailable || code === "EADDRNOTAVAIL") {
    return new CoveError("net.bad_address", `${at}'${address}' is not an address of this host`, {
      hint: "bind 127.0.0.1, 0.0.0.0 or an address 'ip addr' lists",
      exit: ExitCode.Usage,
      cause: e,
    });
  }
  if (e instanceof Deno.errors.PermissionDenied || code === "EACCES") {
    return new CoveError("net.port_denied", `${at}host port ${port} needs privileges`, {
      hint: "use a host port above 1023, or run cove with the rights to bind it",
      exit: ExitCode.Host,
      cause: e,
    });
  }
  return new CoveError(
    "net.bind",
    `${at}cannot listen on ${address}:${port}: ${(e as Error)?.message ?? e}`,
    { exit: ExitCode.Host, cause: e },
  );
}

function closeQuietly(c: { close(): void } | undefined): void {
  try {
    c?.close();
  } catch { /* already closed */ }
}

/** A running forward, from {@link openForward}; {@link ForwardProxy.close} ends it and every connection. */
export interface ForwardProxy {
  /** The host port actually bound (a requested 0 resolved). */
  readonly port: number;
  readonly spec: ProxySpec;
  stats(): ProxyStats;
  close(): Promise<void>;
}

/**
 * Binds the host side of a forward and starts serving it. Throws a
 * CoveError (see {@link bindError}) when the host side cannot be bound.
 *
 * @example
 * ```ts
 * import { openForward } from "./proxy.ts";
 * const p = await openForward(
 *   { protocol: "tcp", address: "127.0.0.1", host: 0, guest: 80 },
 *   () => Promise.resolve("192.168.64.5"),
 * );
 * console.log(p.port);
 * await p.close();
 * ```
 */
export async function openForward(
  spec: ProxySpec,
  resolve: ResolveGuest,
  opts: ProxyOptions = {},
): Promise<ForwardProxy> {
  return spec.protocol === "udp"
    ? await UdpProxy.open(spec, resolve, opts)
    : TcpProxy.open(spec, resolve, opts);
}

/** Connects with a deadline; a connect that completes after it is closed. */
async function connectWithin(hostname: string, port: number, ms: number): Promise<Deno.TcpConn> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let late = false;
  const p = Deno.connect({ hostname, port, transport: "tcp" });
  p.then((c) => late && closeQuietly(c), () => {});
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => {
          late = true;
          rej(new Error(`connect to ${hostname}:${port} timed out`));
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

class TcpProxy implements ForwardProxy {
  readonly port: number;
  #listener: Deno.TcpListener;
  #conns = new Set<Deno.TcpConn>();
  #serving: Promise<void>;
  #closed = false;
  #stats: ProxyStats = { active: 0, total: 0, failed: 0, bytesIn: 0, bytesOut: 0 };

  private constructor(
    readonly spec: ProxySpec,
    listener: Deno.TcpListener,
    readonly resolve: ResolveGuest,
    readonly opts: ProxyOptions,
  ) {
    this.#listener = listener;
    this.port = listener.addr.port;
    this.#serving = this.#accept();
  }

  static open(spec: ProxySpec, resolve: ResolveGuest, opts: ProxyOptions): TcpProxy {
    let l: Deno.TcpListener;
    try {
      l = Deno.listen({ hostname: spec.address, port: spec.host, transport: "tcp" });
    } catch (e) {
      throw bindError(e, spec.address, spec.host, opts.where ?? "");
    }
    return new TcpProxy(spec, l, resolve, opts);
  }

  stats(): ProxyStats {
    return { ...this.#stats, active: this.#conns.size };
  }

  async #accept(): Promise<void> {
    const max = this.opts.maxConnections ?? 4096;
    while (!this.#closed) {
      let c: Deno.TcpConn;
      try {
        c = await this.#listener.accept();
      } catch (e) {
        if (this.#closed || e instanceof Deno.errors.BadResource) return;
        // EMFILE and friends: back off briefly instead of spinning.
        this.opts.log?.(`forward ${this.port}: accept failed: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (this.#conns.size >= max) {
        closeQuietly(c);
        continue;
      }
      this.#conns.add(c);
      this.#stats.total++;
      void this.#serve(c);
    }
  }

  async #serve(client: Deno.TcpConn): Promise<void> {
    let guest: Deno.TcpConn | undefined;
    try {
      const addr = await this.resolve().catch(() => undefined);
      if (!addr || this.#closed) {
        this.#stats.failed++;
        return;
      }
      const timeout = this.opts.connectTimeoutMs ?? 20_000;
      try {
        guest = await connectWithin(addr, this.spec.guest, timeout);
      } catch {
        // The address may be stale (the guest moved): ask once more, saying which one failed.
        const again = await this.resolve({ failed: addr }).catch(() => undefined);
        if (again && again !== addr && !this.#closed) {
          guest = await connectWithin(again, this.spec.guest, timeout).catch(() => undefined);
        }
        if (!guest) {
          this.#stats.failed++;
          return;
        }
      }
      if (this.#closed) return;
      this.#conns.add(guest);
      try {
        client.setNoDelay(true);
        guest.setNoDelay(true);
      } catch { /* not fatal */ }
      const size = this.opts.bufferSize ?? 128 * 1024;
      let aborted = false;
      const abort = () => {
        aborted = true;
        closeQuietly(client);
        closeQuietly(guest);
      };
      const pump = async (from: Deno.TcpConn, to: Deno.TcpConn, count: "bytesIn" | "bytesOut") => {
        const buf = new Uint8Array(size);
        try {
          while (true) {
            const n = await from.read(buf);
            if (n === null) break;
            let off = 0;
            while (off < n) off += await to.write(buf.subarray(off, n));
            this.#stats[count] += n;
          }
        } catch {
          if (!aborted) abort();
          return;
        }
        // End of stream: pass the half-close on; the other direction keeps going.
        try {
          await to.closeWrite();
        } catch {
          if (!aborted) abort();
        }
      };
      await Promise.all([pump(client, guest, "bytesIn"), pump(guest, client, "bytesOut")]);
    } finally {
      closeQuietly(client);
      closeQuietly(guest);
      this.#conns.delete(client);
      if (guest) this.#conns.delete(guest);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#listener);
    for (const c of this.#conns) closeQuietly(c);
    await this.#serving.catch(() => {});
  }
}

interface Flow {
  socket: dgram.Socket;
  last: number;
  /** Datagrams waiting for the target; undefined once it is known. */
  pending: Uint8Array[] | undefined;
  target: string | undefined;
}

class UdpProxy implements ForwardProxy {
  #flows = new Map<string, Flow>();
  #sweep: ReturnType<typeof setInterval>;
  #closed = false;
  #stats: ProxyStats = { active: 0, total: 0, failed: 0, bytesIn: 0, bytesOut: 0 };

  private constructor(
    /** node:dgram, loaded by {@link UdpProxy.open}. */
    private readonly udp: typeof dgram,
    readonly spec: ProxySpec,
    readonly socket: dgram.Socket,
    readonly port: number,
    readonly resolve: ResolveGuest,
    readonly opts: ProxyOptions,
  ) {
    const idle = opts.udpIdleMs ?? 60_000;
    this.#sweep = setInterval(() => {
      const now = Date.now();
      for (const [k, f] of this.#flows) if (now - f.last > idle) this.#drop(k, f);
    }, Math.max(50, Math.min(idle / 2, 5000)));
    socket.on("message", (msg, rinfo) => this.#fromClient(msg, rinfo));
    socket.on("error", (e) => opts.log?.(`forward ${port}/udp: ${e.message}`));
  }

  static async open(spec: ProxySpec, resolve: ResolveGuest, opts: ProxyOptions): Promise<UdpProxy> {
    // Loaded with the first UDP forward: node:dgram costs every supervisor's start otherwise.
    const udp = (await import("node:dgram")).default;
    const type = spec.address.includes(":") ? "udp6" : "udp4";
    const s = udp.createSocket({ type });
    try {
      await new Promise<void>((res, rej) => {
        s.once("error", rej);
        s.bind(spec.host, spec.address, () => {
          s.off("error", rej);
          res();
        });
      });
    } catch (e) {
      closeQuietly(s);
      throw bindError(e, spec.address, spec.host, opts.where ?? "");
    }
    return new UdpProxy(udp, spec, s, s.address().port, resolve, opts);
  }

  stats(): ProxyStats {
    return { ...this.#stats, active: this.#flows.size };
  }

  #drop(key: string, f: Flow): void {
    this.#flows.delete(key);
    closeQuietly(f.socket);
  }

  #fromClient(msg: Uint8Array, rinfo: dgram.RemoteInfo): void {
    if (this.#closed) return;
    const key = `${rinfo.address}|${rinfo.port}`;
    let f = this.#flows.get(key);
    if (!f) {
      const max = this.opts.maxFlows ?? 1024;
      if (this.#flows.size >= max) {
        // Maps iterate in insertion order and we re-insert on use: the first is the least recent.
        const [k, old] = this.#flows.entries().next().value!;
        this.#drop(k, old);
      }
      f = this.#newFlow(key, rinfo);
    } else {
      this.#flows.delete(key);
      this.#flows.set(key, f);
    }
    f.last = Date.now();
    this.#stats.bytesIn += msg.length;
    if (f.pending) {
      if (f.pending.length < (this.opts.maxPending ?? 64)) f.pending.push(msg);
      return;
    }
    if (f.target) f.socket.send(msg, this.spec.guest, f.target);
  }

  #newFlow(key: string, rinfo: dgram.RemoteInfo): Flow {
    const type = rinfo.family === "IPv6" ? "udp6" : "udp4";
    const socket = this.udp.createSocket({ type });
    const f: Flow = { socket, last: Date.now(), pending: [], target: undefined };
    this.#flows.set(key, f);
    this.#stats.total++;
    socket.on("error", () => this.#drop(key, f));
    socket.on("message", (m) => {
      if (this.#closed) return;
      f.last = Date.now();
      this.#stats.bytesOut += m.length;
      this.socket.send(m, rinfo.port, rinfo.address);
    });
    void (async () => {
      const target = await this.resolve().catch(() => undefined);
      const queued = f.pending ?? [];
      f.pending = undefined;
      if (!target || this.#flows.get(key) !== f) {
        this.#stats.failed++;
        if (this.#flows.get(key) === f) this.#drop(key, f);
        return;
      }
      f.target = target;
      for (const m of queued) socket.send(m, this.spec.guest, target);
    })();
    return f;
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    clearInterval(this.#sweep);
    for (const [k, f] of this.#flows) this.#drop(k, f);
    closeQuietly(this.socket);
    return Promise.resolve();
  }
}
