/**
 * The QEMU guest agent protocol (qemu-guest-agent, "QGA"), client side.
 *
 * The wire format, as QEMU documents it (qapi/qga schema): the host writes
 * JSON objects `{"execute": NAME, "arguments": {...}}` on the channel; the
 * agent answers each with one JSON object, `{"return": VALUE}` or
 * `{"error": {"class": CLASS, "desc": TEXT}}`. A few commands never answer
 * when they succeed (guest-shutdown, guest-suspend-*). The channel has no
 * session: bytes of a command the host gave up on, or answers it never
 * read, may still be in flight. `guest-sync-delimited` resynchronises: the
 * host first writes a 0xFF byte (the agent's parser drops what it had), then
 * the command with a random id; the agent writes 0xFF before its answer, so
 * the host drops everything up to that byte and then waits for the answer
 * that carries its id.
 *
 * {@link QgaClient} does exactly one command at a time over a connected
 * stream; callers serialise (the supervisor's {@link ./channel.ts} does).
 * After a timeout the client marks itself out of sync and resynchronises
 * before the next command.
 * @module
 */
import { CoveError, ExitCode } from "../errors.ts";

export { QGA_PORT_NAME } from "../../engines/engine.ts";

/** How long the sync handshake may take before the agent counts as absent. */
export const QGA_SYNC_TIMEOUT_MS = 3_000;
/** How long an ordinary command may take. */
export const QGA_COMMAND_TIMEOUT_MS = 30_000;

/** The line and hint for a guest without a (running) agent. */
export function agentUnavailable(name: string, why: string): CoveError {
  return new CoveError(
    "agent.unavailable",
    `the guest agent of '${name}' does not answer: ${why}`,
    {
      hint:
        "install and enable qemu-guest-agent in the guest (apt/dnf install qemu-guest-agent), and keep 'agent: true' in the spec",
      exit: ExitCode.Host,
    },
  );
}

/** An error the agent answered with. */
export class QgaError extends CoveError {
  constructor(readonly errorClass: string, readonly desc: string, command: string) {
    super("agent.error", `the guest agent refused ${command}: ${desc}`, {
      exit: ExitCode.Failure,
    });
  }
}

/** Options of one command. */
export interface QgaCommandOptions {
  /** Milliseconds to wait for the answer (default {@link QGA_COMMAND_TIMEOUT_MS}). */
  timeoutMs?: number;
  /** The command does not answer on success (guest-shutdown): write it and return. */
  noReply?: boolean;
  /** Called once the whole command is written (a later failure happened after the guest got it). */
  onSent?: () => void;
}

const DELIMITER = 0xff;

/** Finds the end of the first complete JSON object in `buf` from `start`, or -1. */
export function jsonObjectEnd(buf: Uint8Array, start: number): number {
  let depth = 0;
  let inString = false;
  let escaped = false;
  let began = false;
  for (let i = start; i < buf.length; i++) {
    const c = buf[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (c === 0x5c) escaped = true;
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      depth++;
      began = true;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
      if (began && depth === 0) return i + 1;
    }
  }
  return -1;
}

/**
 * Writes a command as JSON text. Integers larger than 2^53 (guest-set-time's
 * nanoseconds) are passed as bigint and written as plain integers.
 */
export function encodeCommand(execute: string, args?: Record<string, unknown>): string {
  const body = args === undefined ? { execute } : { execute, arguments: args };
  return JSON.stringify(body, (_k, v) => typeof v === "bigint" ? `\u0000big:${v}` : v)
    .replace(/"\\u0000big:(-?\d+)"/g, "$1");
}

/** One QGA conversation over a byte stream (a unix socket to the channel). */
export class QgaClient {
  #conn: Deno.Conn;
  #buf: Uint8Array = new Uint8Array(0);
  #store: Uint8Array = new Uint8Array(0);
  #eof = false;
  #failed: Error | undefined;
  #wake: (() => void) | undefined;
  #inSync = false;
  #closed = false;
  readonly #reading: Promise<void>;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
    this.#reading = this.#readLoop();
  }

  /** Connects to a unix socket that carries the agent's channel. */
  static async connect(path: string): Promise<QgaClient> {
    return new QgaClient(await Deno.connect({ transport: "unix", path }));
  }

  /** True while the stream is open. */
  get open(): boolean {
    return !this.#closed && !this.#eof && !this.#failed;
  }

  /** Appends to the unread bytes, growing the backing store by doubling. */
  #append(b: Uint8Array): void {
    const len = this.#buf.length;
    const off = this.#buf.byteOffset;
    const store = this.#store;
    if (store.buffer === this.#buf.buffer && off + len + b.length <= store.length) {
      store.set(b, off + len);
      this.#buf = store.subarray(off, off + len + b.length);
      return;
    }
    const next = new Uint8Array(Math.max(64 * 1024, (len + b.length) * 2));
    next.set(this.#buf);
    next.set(b, len);
    this.#store = next;
    this.#buf = next.subarray(0, len + b.length);
  }

  async #readLoop(): Promise<void> {
    const chunk = new Uint8Array(256 * 1024);
    try {
      while (true) {
        const n = await this.#conn.read(chunk);
        if (n === null) break;
        this.#append(chunk.subarray(0, n));
        this.#wake?.();
      }
    } catch (e) {
      if (!this.#closed) this.#failed = e instanceof Error ? e : new Error(String(e));
    }
    this.#eof = true;
    this.#wake?.();
  }

  /** Waits until more bytes arrive, the stream ends, or the deadline passes. */
  async #more(deadline: number): Promise<"data" | "timeout"> {
    if (this.#eof) throw this.#gone();
    const left = deadline - Date.now();
    if (left <= 0) return "timeout";
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await new Promise<"data" | "timeout">((resolve) => {
      this.#wake = () => resolve("data");
      timer = setTimeout(() => resolve("timeout"), left);
    });
    clearTimeout(timer);
    this.#wake = undefined;
    if (r === "data" && this.#eof && this.#buf.length === 0) throw this.#gone();
    return r;
  }

  #gone(): CoveError {
    return new CoveError(
      "agent.closed",
      `the guest agent channel closed${this.#failed ? ` (${this.#failed.message})` : ""}`,
      { exit: ExitCode.Failure },
    );
  }

  async #write(text: string | Uint8Array): Promise<void> {
    const data = typeof text === "string" ? new TextEncoder().encode(text) : text;
    let off = 0;
    try {
      while (off < data.length) off += await this.#conn.write(data.subarray(off));
    } catch (e) {
      throw new CoveError(
        "agent.closed",
        `cannot write to the guest agent channel: ${e instanceof Error ? e.message : e}`,
        { exit: ExitCode.Failure },
      );
    }
  }

  /** Reads the next JSON object from the buffer, waiting up to the deadline. */
  async #nextObject(deadline: number): Promise<Record<string, unknown> | "timeout"> {
    while (true) {
      // Skip whitespace and stray bytes before an object.
      let start = 0;
      while (start < this.#buf.length && this.#buf[start] !== 0x7b) start++;
      if (start > 0) this.#buf = this.#buf.subarray(start);
      const end = jsonObjectEnd(this.#buf, 0);
      if (end > 0) {
        const text = new TextDecoder().decode(this.#buf.subarray(0, end));
        this.#buf = this.#buf.subarray(end);
        try {
          const v = JSON.parse(text);
          if (v && typeof v === "object" && !Array.isArray(v)) return v as Record<string, unknown>;
        } catch { /* garbage between answers: skip it */ }
        continue;
      }
      if ((await this.#more(deadline)) === "timeout") return "timeout";
    }
  }

  /**
   * The guest-sync-delimited handshake: after it, the next answer read is
   * the answer to the next command written.
   * @returns false when the agent did not answer within `timeoutMs`.
   */
  async sync(timeoutMs = QGA_SYNC_TIMEOUT_MS): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    const id = crypto.getRandomValues(new Uint32Array(1))[0] & 0x7fffffff;
    await this.#write(new Uint8Array([DELIMITER]));
    await this.#write(encodeCommand("guest-sync-delimited", { id }) + "\n");
    while (true) {
      // Drop everything up to the agent's delimiter.
      const at = this.#buf.indexOf(DELIMITER);
      if (at < 0) {
        this.#buf = new Uint8Array(0);
        if ((await this.#more(deadline)) === "timeout") return false;
        continue;
      }
      this.#buf = this.#buf.subarray(at + 1);
      const obj = await this.#nextObject(deadline);
      if (obj === "timeout") return false;
      if (obj.return === id) {
        this.#inSync = true;
        return true;
      }
      // An older sync's answer: keep looking for ours.
    }
  }

  /** True after a successful sync and until a command times out. */
  get inSync(): boolean {
    return this.#inSync;
  }

  /**
   * Runs one command and returns its `return` value.
   * @throws QgaError when the agent answers with an error; CoveError
   *   `agent.timeout` when it does not answer in time.
   */
  async command<T = unknown>(
    execute: string,
    args?: Record<string, unknown>,
    opts: QgaCommandOptions = {},
  ): Promise<T> {
    if (!this.#inSync) {
      if (!(await this.sync())) {
        throw new CoveError("agent.timeout", "the guest agent did not answer the sync handshake", {
          hint: "is qemu-guest-agent running in the guest?",
          exit: ExitCode.Host,
        });
      }
    }
    await this.#write(encodeCommand(execute, args) + "\n");
    opts.onSent?.();
    if (opts.noReply) {
      // Nothing will come on success; an error answer may, so the next command resyncs.
      this.#inSync = false;
      return undefined as T;
    }
    const timeoutMs = opts.timeoutMs ?? QGA_COMMAND_TIMEOUT_MS;
    const obj = await this.#nextObject(Date.now() + timeoutMs);
    if (obj === "timeout") {
      this.#inSync = false;
      throw new CoveError(
        "agent.timeout",
        `the guest agent did not answer ${execute} within ${Math.round(timeoutMs / 1000)}s`,
        { hint: "the guest may be hung or overloaded; try again", exit: ExitCode.Failure },
      );
    }
    if ("error" in obj) {
      const e = (obj.error ?? {}) as { class?: string; desc?: string };
      throw new QgaError(e.class ?? "GenericError", e.desc ?? "unknown error", execute);
    }
    return obj.return as T;
  }

  /** Closes the stream. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch { /* closed */ }
    await this.#reading.catch(() => {});
  }
}
