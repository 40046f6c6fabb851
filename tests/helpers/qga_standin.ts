/**
 * A STAND-IN for qemu-guest-agent, for unit tests of cove's protocol client
 * where no guest runs: a unix socket server that speaks the documented QGA
 * wire format (JSON commands; `{"return":…}` / `{"error":{"class","desc"}}`
 * answers; a 0xFF byte resets its parser; guest-sync-delimited answers
 * after a 0xFF byte; guest-shutdown never answers). Its "guest" is this
 * host: guest-exec runs real processes here and guest-file-* opens real
 * files, so exec and cp are exercised end to end against real data.
 * Real guests are tested in tests/e2e/agent_test.ts.
 *
 * Fault knobs make the faults the client must survive: garbage and stale
 * answers on the wire, an agent that never answers, one that stops
 * answering after N commands, and answers split across writes.
 * @module
 */
import { Buffer } from "node:buffer";

/** Faults to inject. */
export interface StandinFaults {
  /** Never answer anything (an absent agent behind a connected port). */
  silent?: boolean;
  /** Stop answering after this many commands (an agent that hangs mid-command). */
  stallAfter?: number;
  /** Write junk and a stale answer before the delimiter of every sync. */
  noise?: boolean;
  /** Split every answer into single-byte writes. */
  dribble?: boolean;
  /** Fail guest-fsfreeze-thaw this many times. */
  thawFailures?: number;
  /** Keep at most this many bytes of each exec output stream, as QGA's 16 MiB cap (default: no cap). */
  outputLimit?: number;
  /** Commands that answer CommandNotFound / are disabled. */
  disabled?: string[];
  /** Close the connection at guest-shutdown, as QEMU's end of the port does when the guest powers off. */
  closeOnShutdown?: boolean;
}

interface Proc {
  done: Promise<void>;
  exited: boolean;
  code?: number;
  signal?: number;
  out: Uint8Array;
  err: Uint8Array;
}

/** The stand-in's record of what it was asked. */
export interface StandinLog {
  commands: string[];
  setTime: (number | null)[];
  shutdowns: string[];
  frozen: boolean;
  freezes: number;
  thaws: number;
  connections: number;
}

/** A running stand-in agent. */
export interface QgaStandin {
  socket: string;
  log: StandinLog;
  faults: StandinFaults;
  close(): Promise<void>;
}

const enc = new TextEncoder();

function b64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64");
}

/** Starts a stand-in agent on a new unix socket in `dir`. */
export function startQgaStandin(dir: string, faults: StandinFaults = {}): QgaStandin {
  const socket = `${dir}/qga-standin.sock`;
  const listener = Deno.listen({ transport: "unix", path: socket });
  const log: StandinLog = {
    commands: [],
    setTime: [],
    shutdowns: [],
    frozen: false,
    freezes: 0,
    thaws: 0,
    connections: 0,
  };
  const procs = new Map<number, Proc>();
  const files = new Map<number, Deno.FsFile>();
  let nextHandle = 1000;
  const conns = new Set<Deno.Conn>();
  let answered = 0;

  async function handle(cmd: { execute?: string; arguments?: Record<string, unknown> }) {
    const a = cmd.arguments ?? {};
    const name = String(cmd.execute);
    if (faults.disabled?.includes(name)) {
      return { error: { class: "CommandNotFound", desc: `The command ${name} has been disabled` } };
    }
    switch (name) {
      case "guest-sync":
      case "guest-sync-delimited":
        return { return: a.id };
      case "guest-ping":
        return { return: {} };
      case "guest-info":
        return {
          return: {
            version: "9.9.9-standin",
            supported_commands: [
              "guest-exec",
              "guest-exec-status",
              "guest-file-open",
              "guest-info",
              "guest-ping",
            ].map((n) => ({ name: n, enabled: true, "success-response": true })),
          },
        };
      case "guest-exec": {
        const capture = a["capture-output"] === true;
        const input = typeof a["input-data"] === "string"
          ? new Uint8Array(Buffer.from(a["input-data"], "base64"))
          : undefined;
        let child: Deno.ChildProcess;
        try {
          child = new Deno.Command(String(a.path), {
            args: (a.arg as string[] | undefined) ?? [],
            stdin: input ? "piped" : "null",
            stdout: capture ? "piped" : "null",
            stderr: capture ? "piped" : "null",
          }).spawn();
        } catch (e) {
          return {
            error: {
              class: "GenericError",
              desc:
                `Guest agent command failed, error was 'Failed to execute child process “${a.path}” (${
                  e instanceof Error ? e.message : e
                })'`,
            },
          };
        }
        const pid = child.pid;
        const p: Proc = {
          exited: false,
          out: new Uint8Array(),
          err: new Uint8Array(),
          done: Promise.resolve(),
        };
        p.done = (async () => {
          if (input) {
            const w = child.stdin.getWriter();
            await w.write(input).catch(() => {});
            await w.close().catch(() => {});
          }
          const o = await child.output();
          p.out = o.stdout ?? new Uint8Array();
          p.err = o.stderr ?? new Uint8Array();
          p.exited = true;
          if (o.signal) {
            p.signal = Deno.build.os === "linux" ? signalNumber(o.signal) : 9;
          } else p.code = o.code;
        })();
        procs.set(pid, p);
        return { return: { pid } };
      }
      case "guest-exec-status": {
        const p = procs.get(Number(a.pid));
        if (!p) return { error: { class: "GenericError", desc: `Invalid parameter 'pid'` } };
        if (!p.exited) return { return: { exited: false } };
        procs.delete(Number(a.pid));
        const r: Record<string, unknown> = { exited: true };
        if (p.signal !== undefined) r.signal = p.signal;
        else r.exitcode = p.code;
        const cap = faults.outputLimit ?? Infinity;
        if (p.out.length) r["out-data"] = b64(p.out.subarray(0, cap));
        if (p.err.length) r["err-data"] = b64(p.err.subarray(0, cap));
        if (p.out.length > cap) r["out-truncated"] = true;
        if (p.err.length > cap) r["err-truncated"] = true;
        return { return: r };
      }
      case "guest-file-open": {
        const mode = String(a.mode ?? "r");
        try {
          const f = await Deno.open(String(a.path), {
            read: mode.startsWith("r"),
            write: mode.startsWith("w") || mode.startsWith("a"),
            create: !mode.startsWith("r"),
            truncate: mode.startsWith("w"),
            append: mode.startsWith("a"),
          });
          const h = nextHandle++;
          files.set(h, f);
          return { return: h };
        } catch (e) {
          return {
            error: {
              class: "GenericError",
              desc: `failed to open file '${a.path}' (mode: '${mode}'): ${
                e instanceof Deno.errors.NotFound ? "No such file or directory" : String(e)
              }`,
            },
          };
        }
      }
      case "guest-file-read": {
        const f = files.get(Number(a.handle));
        if (!f) return { error: { class: "GenericError", desc: "handle not found" } };
        const want = Number(a.count ?? 4096);
        const buf = new Uint8Array(want);
        let got = 0;
        let eof = false;
        while (got < want) {
          const n = await f.read(buf.subarray(got));
          if (n === null) {
            eof = true;
            break;
          }
          got += n;
        }
        return { return: { count: got, "buf-b64": b64(buf.subarray(0, got)), eof } };
      }
      case "guest-file-write": {
        const f = files.get(Number(a.handle));
        if (!f) return { error: { class: "GenericError", desc: "handle not found" } };
        const data = new Uint8Array(Buffer.from(String(a["buf-b64"]), "base64"));
        let off = 0;
        while (off < data.length) off += await f.write(data.subarray(off));
        return { return: { count: data.length, eof: false } };
      }
      case "guest-file-flush":
        return { return: {} };
      case "guest-file-close": {
        const f = files.get(Number(a.handle));
        if (!f) return { error: { class: "GenericError", desc: "handle not found" } };
        f.close();
        files.delete(Number(a.handle));
        return { return: {} };
      }
      case "guest-network-get-interfaces":
        return {
          return: [
            {
              name: "lo",
              "hardware-address": "00:00:00:00:00:00",
              "ip-addresses": [{ "ip-address-type": "ipv4", "ip-address": "127.0.0.1", prefix: 8 }],
            },
            {
              name: "eth0",
              "hardware-address": "52:54:00:12:34:56",
              "ip-addresses": [
                { "ip-address-type": "ipv6", "ip-address": "fe80::5054:ff:fe12:3456", prefix: 64 },
                { "ip-address-type": "ipv4", "ip-address": "10.0.2.15", prefix: 24 },
              ],
            },
          ],
        };
      case "guest-set-time":
        log.setTime.push(typeof a.time === "number" ? a.time : null);
        return { return: {} };
      case "guest-get-time":
        return { return: Date.now() * 1e6 };
      case "guest-fsfreeze-freeze":
        if (log.frozen) {
          return {
            error: {
              class: "GenericError",
              desc: "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state",
            },
          };
        }
        log.frozen = true;
        log.freezes++;
        return { return: 2 };
      case "guest-fsfreeze-thaw":
        if ((faults.thawFailures ?? 0) > 0) {
          faults.thawFailures!--;
          return { error: { class: "GenericError", desc: "failed to thaw: device busy" } };
        }
        log.thaws++;
        if (!log.frozen) return { return: 0 };
        log.frozen = false;
        return { return: 2 };
      case "guest-fsfreeze-status":
        return { return: log.frozen ? "frozen" : "thawed" };
      case "guest-shutdown":
        log.shutdowns.push(String(a.mode ?? "powerdown"));
        return undefined; // success: no answer, as documented
      default:
        return {
          error: { class: "CommandNotFound", desc: `The command ${name} has not been found` },
        };
    }
  }

  async function write(conn: Deno.Conn, bytes: Uint8Array) {
    if (faults.dribble) {
      for (let i = 0; i < bytes.length; i++) await conn.write(bytes.subarray(i, i + 1));
      return;
    }
    let off = 0;
    while (off < bytes.length) off += await conn.write(bytes.subarray(off));
  }

  async function serve(conn: Deno.Conn) {
    log.connections++;
    conns.add(conn);
    let buf = new Uint8Array(0);
    const chunk = new Uint8Array(1 << 20);
    try {
      reading: while (true) {
        const n = await conn.read(chunk);
        if (n === null) break;
        const next = new Uint8Array(buf.length + n);
        next.set(buf);
        next.set(chunk.subarray(0, n), buf.length);
        buf = next;
        while (true) {
          const ff = buf.indexOf(0xff);
          const end = objectEnd(buf);
          if (ff >= 0 && (end < 0 || ff < end)) {
            // 0xFF resets the parser: a partial command before it is dropped.
            buf = buf.subarray(ff + 1);
            continue;
          }
          if (end < 0) break;
          const text = new TextDecoder().decode(buf.subarray(0, end));
          buf = buf.subarray(end);
          let cmd: { execute?: string; arguments?: Record<string, unknown> };
          try {
            cmd = JSON.parse(text.trim());
          } catch {
            await write(
              conn,
              enc.encode(
                JSON.stringify({ error: { class: "GenericError", desc: "JSON parse error" } }) +
                  "\n",
              ),
            );
            continue;
          }
          log.commands.push(String(cmd.execute));
          if (faults.silent) continue;
          if (faults.stallAfter !== undefined && answered >= faults.stallAfter) continue;
          answered++;
          const res = await handle(cmd);
          if (cmd.execute === "guest-shutdown" && faults.closeOnShutdown) break reading;
          if (res === undefined) continue;
          const out = enc.encode(JSON.stringify(res) + "\n");
          if (cmd.execute === "guest-sync-delimited") {
            if (faults.noise) {
              await write(conn, enc.encode('garbage{"return": 12345}\n'));
            }
            await write(conn, new Uint8Array([0xff]));
          }
          await write(conn, out);
        }
      }
    } catch { /* client gone */ }
    conns.delete(conn);
    try {
      conn.close();
    } catch { /* closed */ }
  }

  const accepting = (async () => {
    try {
      for await (const c of listener) void serve(c);
    } catch { /* closed */ }
  })();

  return {
    socket,
    log,
    faults,
    async close() {
      try {
        listener.close();
      } catch { /* closed */ }
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      for (const f of files.values()) {
        try {
          f.close();
        } catch { /* closed */ }
      }
      await Promise.all([...procs.values()].map((p) => p.done.catch(() => {})));
      await accepting;
      await Deno.remove(socket).catch(() => {});
    },
  };
}

function objectEnd(buf: Uint8Array): number {
  let depth = 0;
  let str = false;
  let esc = false;
  let began = false;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (str) {
      if (esc) esc = false;
      else if (c === 0x5c) esc = true;
      else if (c === 0x22) str = false;
      continue;
    }
    if (c === 0x22) str = true;
    else if (c === 0x7b) {
      depth++;
      began = true;
    } else if (c === 0x7d) {
      depth--;
      if (began && depth === 0) return i + 1;
    }
  }
  return -1;
}

function signalNumber(sig: Deno.Signal): number {
  const table: Partial<Record<Deno.Signal, number>> = {
    SIGHUP: 1,
    SIGINT: 2,
    SIGQUIT: 3,
    SIGKILL: 9,
    SIGSEGV: 11,
    SIGPIPE: 13,
    SIGALRM: 14,
    SIGTERM: 15,
  };
  return table[sig] ?? 1;
}
