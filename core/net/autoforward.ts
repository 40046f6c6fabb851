/**
 * Automatic forwards (`networks[].autoForward`): every 2 s the supervisor
 * reads the guest's listening TCP sockets (`/proc/net/tcp` and
 * `/proc/net/tcp6`, through a "read a guest file" function that the guest
 * agent provides) and forwards each new listener on a non-loopback guest
 * address from 127.0.0.1 at the same port, or at the next free one when
 * that is taken; a forward is removed when the guest stops listening. On a
 * NIC the engine forwards itself (QEMU user networking, whose guest address
 * the host cannot reach) the engine adds it (hostfwd_add); elsewhere the
 * supervisor's proxy serves it.
 *
 * The rule ({@link AutoForwardRule}) skips an `ignore` list of guest ports
 * and ports outside `range`, as Lima's portForwards rules do; guest ports
 * that a spec or flag forward already serves are skipped too.
 *
 * {@link parseProcNetTcp} and {@link guestListeners} are pure; the
 * {@link AutoForwarder} does the polling and asks its caller to open and
 * close the forwards (the supervisor's {@link ./forwards.ts ForwardSet}).
 * @module
 */
import type { ForwardSet, PlannedForward } from "./forwards.ts";

/** One socket line of /proc/net/tcp{,6}. */
export interface ProcSocket {
  /** The local address, printed (IPv4 dotted, IPv6 compressed-free hex groups). */
  address: string;
  port: number;
  /** The kernel's state number (10 = LISTEN). */
  state: number;
  v6: boolean;
}

const LISTEN = 0x0a;

/** Reads the kernel's 32-bit words of an address: each is in host (little-endian on x86/arm) order. */
function wordsToBytes(hex: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < hex.length; i += 8) {
    const w = hex.slice(i, i + 8);
    for (let j = 6; j >= 0; j -= 2) out.push(parseInt(w.slice(j, j + 2), 16));
  }
  return out;
}

/**
 * Parses /proc/net/tcp or /proc/net/tcp6 text (the header line is skipped;
 * malformed lines are ignored). Addresses are printed in the usual forms:
 * `0.0.0.0`, `127.0.0.1`, `::`, `::1`, `::ffff:127.0.0.1`, or eight hex groups.
 */
export function parseProcNetTcp(text: string): ProcSocket[] {
  const out: ProcSocket[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4) continue;
    const m = /^([0-9A-Fa-f]{8}|[0-9A-Fa-f]{32}):([0-9A-Fa-f]{4})$/.exec(f[1]);
    if (!m || !/^[0-9A-Fa-f]{2}$/.test(f[3])) continue;
    const bytes = wordsToBytes(m[1]);
    const v6 = bytes.length === 16;
    out.push({
      address: v6 ? formatV6(bytes) : bytes.join("."),
      port: parseInt(m[2], 16),
      state: parseInt(f[3], 16),
      v6,
    });
  }
  return out;
}

function formatV6(b: number[]): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((b[i] << 8) | b[i + 1]);
  if (groups.every((g) => g === 0)) return "::";
  if (groups.slice(0, 7).every((g) => g === 0) && groups[7] === 1) return "::1";
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${b.slice(12).join(".")}`;
  }
  return groups.map((g) => g.toString(16)).join(":");
}

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
export function isLoopback(address: string): boolean {
  return address === "::1" || /^(::ffff:)?127\./.test(address);
}

/** Which guest ports to forward automatically. */
export interface AutoForwardRule {
  /** Guest ports never forwarded. */
  ignore: number[];
  /** Only guest ports in from..to (inclusive). */
  range: { from: number; to: number };
}

/** The default rule: every port. */
export const DEFAULT_RULE: AutoForwardRule = { ignore: [], range: { from: 1, to: 65535 } };

/**
 * The guest ports that listen on a non-loopback address (in either table)
 * and that the rule allows, sorted.
 */
export function guestListeners(
  tcp: string,
  tcp6: string,
  rule: AutoForwardRule = DEFAULT_RULE,
): number[] {
  const ports = new Set<number>();
  for (const s of [...parseProcNetTcp(tcp), ...parseProcNetTcp(tcp6)]) {
    if (s.state !== LISTEN || isLoopback(s.address)) continue;
    if (s.port < rule.range.from || s.port > rule.range.to || rule.ignore.includes(s.port)) {
      continue;
    }
    ports.add(s.port);
  }
  return [...ports].sort((a, b) => a - b);
}

/** Reads a file in the guest (the guest agent's `guest-file-open/read`); undefined when it cannot. */
export type ReadGuestFile = (path: string) => Promise<string | undefined>;

/** Options of {@link AutoForwarder}. */
export interface AutoForwarderOptions {
  read: ReadGuestFile;
  rule?: AutoForwardRule;
  /** Opens the forward of a guest port; returns the host port it got. */
  open: (guestPort: number) => Promise<number>;
  /** Closes the forward of a guest port. */
  close: (guestPort: number) => Promise<void>;
  /** Guest ports a spec or flag forward already serves. */
  skip?: () => number[];
  /** Poll period; default 2000 ms. */
  intervalMs?: number;
  log?: (line: string) => void;
}

/** Polls the guest's listeners and keeps one forward per listener. */
export class AutoForwarder {
  #active = new Map<number, number>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running = false;
  #stopped = false;

  constructor(readonly opts: AutoForwarderOptions) {}

  /** Guest port -> host port of the automatic forwards now open. */
  active(): Map<number, number> {
    return new Map(this.#active);
  }

  /** One poll: opens forwards for new listeners, closes those whose listener went away. */
  async tick(): Promise<void> {
    if (this.#running || this.#stopped) return;
    this.#running = true;
    try {
      const tcp = await this.opts.read("/proc/net/tcp").catch(() => undefined);
      const tcp6 = await this.opts.read("/proc/net/tcp6").catch(() => undefined);
      if (tcp === undefined && tcp6 === undefined) return; // the agent does not answer: keep what is open
      const skip = new Set(this.opts.skip?.() ?? []);
      const want = new Set(
        guestListeners(tcp ?? "", tcp6 ?? "", this.opts.rule).filter((p) => !skip.has(p)),
      );
      for (const [guest, host] of [...this.#active]) {
        if (want.has(guest) || this.#stopped) continue;
        this.#active.delete(guest);
        await this.opts.close(guest).catch(() => {});
        this.opts.log?.(
          `auto-forward removed: 127.0.0.1:${host} (guest ${guest} stopped listening)`,
        );
      }
      for (const guest of want) {
        if (this.#active.has(guest) || this.#stopped) continue;
        try {
          const host = await this.opts.open(guest);
          this.#active.set(guest, host);
          this.opts.log?.(`auto-forward: 127.0.0.1:${host} -> guest ${guest}/tcp`);
        } catch (e) {
          this.opts.log?.(`auto-forward of guest port ${guest} failed: ${(e as Error).message}`);
        }
      }
    } finally {
      this.#running = false;
    }
  }

  /** Starts polling. */
  start(): void {
    const loop = async () => {
      await this.tick();
      if (!this.#stopped) this.#timer = setTimeout(loop, this.opts.intervalMs ?? 2000);
    };
    void loop();
  }

  /** Stops polling and closes every automatic forward. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    for (const guest of this.#active.keys()) await this.opts.close(guest).catch(() => {});
    this.#active.clear();
  }
}

/**
 * Tries host port `preferred`, then the next ones, through `tryOpen`, until
 * one is not in use (at most `attempts`); a privileged port the host refuses
 * falls back to any free port (0).
 */
export async function openAtOrAfter(
  preferred: number,
  tryOpen: (host: number) => Promise<number>,
  attempts = 100,
): Promise<number> {
  for (let p = preferred, i = 0; i < attempts && p <= 65535; p++, i++) {
    try {
      return await tryOpen(p);
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === "net.port_denied") return await tryOpen(0);
      if (code !== "net.port_in_use") throw e;
    }
  }
  return await tryOpen(0);
}

/** The rule of a NIC's `autoForward`, or undefined when it is off. */
export function autoForwardRule(
  nic: { autoForward?: boolean | AutoForwardRule },
): AutoForwardRule | undefined {
  const a = nic.autoForward;
  if (!a) return undefined;
  return a === true ? DEFAULT_RULE : { ignore: a.ignore, range: a.range };
}

/**
 * Starts the automatic forwards of NIC `network` into `set` (origin `auto`,
 * from 127.0.0.1), reading the guest through `read`. Guest ports that a
 * spec or flag forward of the same NIC serves are left to it.
 */
export function startAutoForward(
  set: ForwardSet,
  network: number,
  rule: AutoForwardRule,
  read: ReadGuestFile,
  opts: { intervalMs?: number; log?: (line: string) => void } = {},
): AutoForwarder {
  const mine = (guest: number) => (f: PlannedForward) =>
    f.origin === "auto" && f.network === network && f.guest === guest;
  const w = new AutoForwarder({
    read,
    rule,
    intervalMs: opts.intervalMs,
    log: opts.log,
    skip: () =>
      set.list().filter((f) => f.origin !== "auto" && f.network === network).map((f) => f.guest),
    open: (guest) =>
      openAtOrAfter(guest, (host) =>
        set.openLive({
          protocol: "tcp",
          address: "127.0.0.1",
          host,
          guest,
          origin: "auto",
          network,
          where: `autoForward of guest port ${guest}`,
        })),
    close: async (guest) => {
      const f = set.find(mine(guest));
      if (f) await set.close(f);
    },
  });
  w.start();
  return w;
}
