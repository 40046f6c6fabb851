/**
 * The Ethernet switch of a cove network: a small L2 learning switch on a
 * unix stream socket. Each QEMU of the network connects with `-netdev
 * stream` (frames as a 4-byte big-endian length and the frame); the switch
 * learns which port each source MAC address came from, sends a frame to
 * the port of its destination, and floods broadcasts, multicasts and
 * unknown destinations to every other port. Nothing leaves the host: the
 * switch has no uplink.
 *
 * Memory is bounded: a frame longer than {@link MAX_FRAME} ends that port,
 * and a port that does not keep up has frames dropped (as a real switch
 * does) once {@link MAX_QUEUED} bytes wait for it.
 * @module
 */

/** The largest frame accepted (a jumbo frame and some). */
export const MAX_FRAME = 65536;
/** Bytes queued for a slow port before its frames are dropped. */
export const MAX_QUEUED = 1024 * 1024;

interface Port {
  conn: Deno.Conn;
  queued: number;
  chain: Promise<void>;
  closed: boolean;
}

/** Counters of a switch, for tests and logs. */
export interface SwitchStats {
  ports: number;
  frames: number;
  flooded: number;
  dropped: number;
  macs: number;
}

function macKey(b: Uint8Array, off: number): string {
  let s = "";
  for (let i = off; i < off + 6; i++) s += b[i].toString(16).padStart(2, "0");
  return s;
}

/** A running switch; {@link close} ends it and every port. */
export class EthernetSwitch {
  #ports = new Set<Port>();
  #macs = new Map<string, Port>();
  #listener: Deno.Listener;
  #serving: Promise<void>;
  #stats = { frames: 0, flooded: 0, dropped: 0 };
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  #closed = Promise.withResolvers<void>();

  private constructor(listener: Deno.Listener, readonly opts: SwitchOptions) {
    this.#listener = listener;
    this.#serving = this.#accept();
    this.#armIdle();
  }

  /** Listens on `path` (a unix socket). */
  static listen(path: string, opts: SwitchOptions = {}): EthernetSwitch {
    const l = Deno.listen({ transport: "unix", path });
    return new EthernetSwitch(l, opts);
  }

  stats(): SwitchStats {
    return { ...this.#stats, ports: this.#ports.size, macs: this.#macs.size };
  }

  /** Resolves when the switch has closed (idle, or {@link close}). */
  get done(): Promise<void> {
    return this.#closed.promise;
  }

  #armIdle(): void {
    clearTimeout(this.#idleTimer);
    const idle = this.opts.exitWhenIdleMs;
    if (idle === undefined || this.#ports.size > 0) return;
    this.#idleTimer = setTimeout(() => {
      if (this.#ports.size === 0) {
        this.opts.log?.("switch: no ports left; exiting");
        void this.close();
      }
    }, idle);
  }

  async #accept(): Promise<void> {
    while (true) {
      let c: Deno.Conn;
      try {
        c = await this.#listener.accept();
      } catch {
        return;
      }
      const port: Port = { conn: c, queued: 0, chain: Promise.resolve(), closed: false };
      this.#ports.add(port);
      clearTimeout(this.#idleTimer);
      void this.#serve(port);
    }
  }

  async #serve(port: Port): Promise<void> {
    const buf = new Uint8Array(MAX_FRAME + 4);
    let have = 0;
    const chunk = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await port.conn.read(chunk);
        if (n === null) break;
        let off = 0;
        while (off < n) {
          const take = Math.min(n - off, buf.length - have);
          buf.set(chunk.subarray(off, off + take), have);
          have += take;
          off += take;
          // Whole frames out of the buffer.
          let start = 0;
          while (have - start >= 4) {
            const len = new DataView(buf.buffer, start, 4).getUint32(0);
            if (len > MAX_FRAME) throw new Error(`a ${len}-byte frame`);
            if (have - start < 4 + len) break;
            if (len >= 14) this.#forward(port, buf.slice(start, start + 4 + len));
            start += 4 + len;
          }
          buf.copyWithin(0, start, have);
          have -= start;
        }
      }
    } catch (e) {
      this.opts.log?.(`switch: port closed: ${(e as Error).message}`);
    } finally {
      this.#drop(port);
    }
  }

  #drop(port: Port): void {
    if (port.closed) return;
    port.closed = true;
    this.#ports.delete(port);
    for (const [k, p] of this.#macs) if (p === port) this.#macs.delete(k);
    try {
      port.conn.close();
    } catch { /* closed */ }
    this.#armIdle();
  }

  /** `framed` is the length prefix and the frame. */
  #forward(from: Port, framed: Uint8Array): void {
    this.#stats.frames++;
    const src = macKey(framed, 4 + 6);
    if ((framed[4 + 6] & 1) === 0) this.#macs.set(src, from);
    const multicast = (framed[4] & 1) === 1;
    const to = multicast ? undefined : this.#macs.get(macKey(framed, 4));
    if (to) {
      if (to !== from) this.#send(to, framed);
      return;
    }
    this.#stats.flooded++;
    for (const p of this.#ports) if (p !== from) this.#send(p, framed);
  }

  #send(port: Port, framed: Uint8Array): void {
    if (port.closed) return;
    if (port.queued + framed.length > MAX_QUEUED) {
      this.#stats.dropped++;
      return;
    }
    port.queued += framed.length;
    port.chain = port.chain.then(async () => {
      let off = 0;
      while (off < framed.length) off += await port.conn.write(framed.subarray(off));
    }).then(
      () => void (port.queued -= framed.length),
      () => this.#drop(port),
    );
  }

  /** Closes the listener and every port. */
  async close(): Promise<void> {
    clearTimeout(this.#idleTimer);
    try {
      this.#listener.close();
    } catch { /* closed */ }
    for (const p of [...this.#ports]) this.#drop(p);
    await this.#serving;
    clearTimeout(this.#idleTimer);
    this.#closed.resolve();
  }
}

/** Options of {@link EthernetSwitch.listen}. */
export interface SwitchOptions {
  /** Close the switch once it has had no port for this long. */
  exitWhenIdleMs?: number;
  log?: (line: string) => void;
}
