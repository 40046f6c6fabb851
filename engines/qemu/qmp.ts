/**
 * A small QMP (QEMU Machine Protocol) client over a unix socket: the
 * capabilities handshake, commands with ids, and events. QMP is one JSON
 * object per line; written by hand because it is a few dozen lines and no
 * npm package speaks it over Deno's unix sockets.
 * @module
 */

/** A QMP event such as SHUTDOWN, STOP or RESUME. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** A failed QMP command. */
export class QmpError extends Error {
  constructor(readonly cls: string, message: string) {
    super(message);
    this.name = "QmpError";
  }
}

/**
 * Settles like `p`, or rejects with a QmpError("Timeout", `what`) after
 * `ms` milliseconds, whichever comes first.
 */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new QmpError("Timeout", what)), Math.max(0, ms));
  });
  return Promise.race([p, expired]).finally(() => clearTimeout(timer));
}

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void };

/** A connected QMP session. */
export class Qmp {
  #conn: Deno.UnixConn;
  #pending = new Map<string, Pending>();
  #next = 1;
  #closed = false;
  #listeners: ((e: QmpEvent) => void)[] = [];
  readonly closed: Promise<void>;

  readonly #greeted: Promise<void>;

  private constructor(conn: Deno.UnixConn) {
    this.#conn = conn;
    let onGreeting!: () => void;
    this.#greeted = new Promise<void>((r) => (onGreeting = r));
    this.closed = this.#readLoop(onGreeting);
  }

  /**
   * Connects, waits for the greeting and negotiates capabilities; gives up
   * (and closes the connection) after `timeoutMs`.
   */
  static async connect(path: string, timeoutMs = 10_000): Promise<Qmp> {
    const conn = await Deno.connect({ transport: "unix", path });
    const q = new Qmp(conn);
    try {
      await withTimeout(
        Promise.race([
          q.#greeted,
          q.closed.then(() => {
            throw new Error("QMP closed before its greeting");
          }),
        ]).then(() => q.execute("qmp_capabilities")),
        timeoutMs,
        `QMP did not answer within ${timeoutMs} ms`,
      );
    } catch (e) {
      q.close();
      throw e;
    }
    return q;
  }

  /** Calls `fn` for every event, until the returned function is called. */
  onEvent(fn: (e: QmpEvent) => void): () => void {
    this.#listeners.push(fn);
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== fn);
    };
  }

  /**
   * Runs a QMP command and returns its `return` value; with `timeoutMs`,
   * rejects with a QmpError("Timeout") if QEMU does not answer in time.
   */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    timeoutMs?: number,
  ): Promise<T> {
    if (this.#closed) return Promise.reject(new QmpError("Closed", "QEMU is not running"));
    const id = `cove-${this.#next++}`;
    const msg =
      JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) +
      "\n";
    const answer = new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#write(msg).catch((e) => {
        this.#pending.delete(id);
        reject(e instanceof Error ? e : new Error(String(e)));
      });
    });
    if (timeoutMs === undefined) return answer;
    return withTimeout(answer, timeoutMs, `QEMU did not answer '${command}' within ${timeoutMs} ms`)
      .finally(() => this.#pending.delete(id));
  }

  async #write(s: string): Promise<void> {
    const bytes = new TextEncoder().encode(s);
    let off = 0;
    while (off < bytes.length) off += await this.#conn.write(bytes.subarray(off));
  }

  async #readLoop(onGreeting: () => void): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    const chunk = new Uint8Array(16384);
    try {
      while (true) {
        const n = await this.#conn.read(chunk);
        if (n === null) break;
        buf += dec.decode(chunk.subarray(0, n), { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let msg: Record<string, unknown>;
          try {
            msg = JSON.parse(line);
          } catch {
            continue;
          }
          if ("QMP" in msg) onGreeting();
          else if ("event" in msg) {
            for (const l of this.#listeners) l(msg as unknown as QmpEvent);
          } else if (typeof msg.id === "string" && this.#pending.has(msg.id)) {
            const p = this.#pending.get(msg.id)!;
            this.#pending.delete(msg.id);
            if ("error" in msg) {
              const err = msg.error as { class?: string; desc?: string };
              p.reject(new QmpError(err.class ?? "GenericError", err.desc ?? "QMP error"));
            } else p.resolve(msg.return);
          }
        }
      }
    } catch { /* connection reset: QEMU is gone */ }
    this.#closed = true;
    for (const p of this.#pending.values()) p.reject(new QmpError("Closed", "QEMU exited"));
    this.#pending.clear();
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }

  /** Closes the session (QEMU keeps running). */
  close(): void {
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }
}
