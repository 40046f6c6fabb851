/**
 * The forwards of one run: the spec's (`networks[].forwards`), the run's
 * own (`cove run/start --forward`) and the automatic ones (autoForward),
 * each served either by the engine (QEMU user networking: hostfwd) or by
 * the supervisor's proxy ({@link ./proxy.ts}).
 *
 * - {@link parseForwardFlag} reads `[ADDR:]HOST:GUEST[/udp]`.
 * - {@link planForwards} merges flag forwards into the spec (onto the first
 *   NIC with a network), refuses two forwards on one host port (naming
 *   both), and splits the spec into what the engine serves and what the
 *   proxy serves.
 * - {@link ForwardSet} opens the proxied forwards all or nothing (a refusal
 *   closes what was opened), opens and closes automatic forwards while the VM
 *   runs (through the engine on a NIC it forwards itself, else the proxy),
 *   lists every active forward with its origin for `cove port`, and closes
 *   them when the VM stops.
 * @module
 */
import { CoveError, ExitCode } from "../errors.ts";
import type { NetworkSpec, PortForwardSpec, VmSpec } from "../spec/schema.ts";
import { type ForwardProxy, openForward, type ProxyOptions, type ResolveGuest } from "./proxy.ts";

/** Where a forward came from. */
export type ForwardOrigin = "spec" | "flag" | "auto";

/** A forward as `cove port` shows it. */
export interface ActiveForward {
  protocol: "tcp" | "udp";
  /** Host address bound. */
  address: string;
  /** Host port (resolved when 0 was asked for). */
  host: number;
  guest: number;
  origin: ForwardOrigin;
  /** Index into spec.networks. */
  network: number;
  /** engine: the engine forwards it (QEMU hostfwd); proxy: the supervisor does. */
  via: "engine" | "proxy";
  /** How the spec or the command line named it, for messages. */
  where: string;
}

/** A forward of the plan, before it is open. */
export interface PlannedForward extends PortForwardSpec {
  origin: ForwardOrigin;
  network: number;
  where: string;
}

function usage(code: string, message: string, hint?: string): CoveError {
  return new CoveError(code, message, { hint, exit: ExitCode.Usage });
}

/**
 * Parses one `--forward` value: `[ADDR:]HOST:GUEST[/tcp|/udp]`; an IPv6
 * address goes in brackets (`[::1]:8080:80`). The address defaults to
 * 127.0.0.1, the protocol to tcp; HOST 0 picks a free port.
 */
export function parseForwardFlag(value: string): PortForwardSpec {
  const bad = (why: string) =>
    usage(
      "usage.forward",
      `--forward '${value}': ${why}`,
      "write [ADDR:]HOST:GUEST[/udp], e.g. 8080:80 or 0.0.0.0:5353:53/udp",
    );
  let rest = value.trim();
  let protocol: "tcp" | "udp" = "tcp";
  const slash = rest.lastIndexOf("/");
  if (slash >= 0) {
    const p = rest.slice(slash + 1).toLowerCase();
    if (p !== "tcp" && p !== "udp") throw bad(`'${p}' is not tcp or udp`);
    protocol = p;
    rest = rest.slice(0, slash);
  }
  let address = "127.0.0.1";
  const v6 = /^\[([0-9a-fA-F:.]+)\]:(.*)$/.exec(rest);
  if (v6) {
    address = v6[1];
    rest = v6[2];
  }
  const parts = rest.split(":");
  if (!v6 && parts.length === 3) address = parts.shift()!;
  if (parts.length !== 2) throw bad("expected HOST:GUEST with an optional ADDR: in front");
  const port = (s: string, min: number) => {
    const n = Number(s);
    if (!/^\d+$/.test(s) || n < min || n > 65535) {
      throw bad(`'${s}' is not a port (${min}-65535)`);
    }
    return n;
  };
  const host = port(parts[0], 0);
  const guest = port(parts[1], 1);
  if (address === "" || /\s/.test(address)) throw bad("the address is empty");
  return { protocol, address, host, guest };
}

/** Prints a forward the way `--forward` takes it. */
export function formatForward(f: Pick<PortForwardSpec, "protocol" | "address" | "host" | "guest">) {
  const addr = f.address.includes(":") ? `[${f.address}]` : f.address;
  return `${addr}:${f.host}:${f.guest}${f.protocol === "udp" ? "/udp" : ""}`;
}

const ANY = new Set(["0.0.0.0", "::", ""]);

/** True when two host sides would collide: same protocol and port, and overlapping addresses. */
export function sameHostPort(
  a: Pick<PortForwardSpec, "protocol" | "address" | "host">,
  b: Pick<PortForwardSpec, "protocol" | "address" | "host">,
): boolean {
  if (a.protocol !== b.protocol || a.host === 0 || a.host !== b.host) return false;
  return a.address === b.address || ANY.has(a.address) || ANY.has(b.address);
}

/** The result of {@link planForwards}. */
export interface ForwardPlan {
  /** The spec the engine starts: flag forwards merged, proxied forwards removed. */
  engineSpec: VmSpec;
  /** Every forward, in order: the spec's, then the flags'. */
  all: PlannedForward[];
  /** The ones the supervisor's proxy serves. */
  proxied: PlannedForward[];
}

/**
 * Merges `--forward` values into the spec and decides who serves each
 * forward. `engineForwards(nic)` says whether the engine forwards that NIC's
 * ports itself (an Engine method). Throws one line for two forwards on one
 * host port, or for flag forwards on a VM without a network.
 */
export function planForwards(
  spec: VmSpec,
  flags: PortForwardSpec[],
  engineForwards: (nic: NetworkSpec, index: number) => boolean,
): ForwardPlan {
  const all: PlannedForward[] = [];
  spec.networks.forEach((n, i) =>
    n.forwards.forEach((f, j) =>
      all.push({ ...f, origin: "spec", network: i, where: `networks[${i}].forwards[${j}]` })
    )
  );
  if (flags.length > 0) {
    const first = spec.networks.findIndex((n) => n.mode !== "none");
    if (first < 0) {
      throw usage(
        "net.no_network",
        `--forward ${formatForward(flags[0])}: the VM has no network to forward to`,
        "add one under networks: in its cove.yaml, e.g. { mode: nat }",
      );
    }
    for (const f of flags) {
      all.push({ ...f, origin: "flag", network: first, where: `--forward ${formatForward(f)}` });
    }
  }
  for (let i = 0; i < all.length; i++) {
    for (let j = 0; j < i; j++) {
      if (sameHostPort(all[i], all[j])) {
        throw usage(
          "net.forward_conflict",
          `${all[j].where} and ${all[i].where} both use host port ${all[i].host}/${
            all[i].protocol
          }`,
          "give one of them another host port (0 picks a free one)",
        );
      }
    }
  }
  const byEngine = spec.networks.map((n, i) => n.mode !== "none" && engineForwards(n, i));
  const proxied = all.filter((f) => !byEngine[f.network]);
  const engineSpec: VmSpec = {
    ...spec,
    networks: spec.networks.map((n, i) => ({
      ...n,
      forwards: byEngine[i]
        ? all.filter((f) => f.network === i).map(({ protocol, address, host, guest }) => ({
          protocol,
          address,
          host,
          guest,
        }))
        : [],
    })),
  };
  return { engineSpec, all, proxied };
}

/** Finds which other VM holds a host port, for the refusal's message. */
export type PortOwner = (
  f: Pick<PortForwardSpec, "protocol" | "address" | "host">,
) => Promise<string | undefined>;

/**
 * Adds and removes forwards that the engine serves, while the VM runs (the
 * engine's `RunningVm.addForward`: QEMU user networking's hostfwd_add).
 */
export interface LiveEngineForwards {
  /** Whether the engine serves this NIC's forwards (no proxy could reach its guest). */
  serves(network: number): boolean;
  /** Adds one; resolves with the host port bound. */
  add(f: PlannedForward): Promise<number>;
  /** Removes one that {@link add} added (`host` as it resolved). */
  remove(f: PlannedForward): Promise<void>;
}

/** The live forwards of one run. */
export class ForwardSet {
  #proxies = new Map<PlannedForward, ForwardProxy>();
  #engine: ActiveForward[] = [];
  /** Forwards the engine added while the VM runs, with the host port it bound. */
  #engineAdded: PlannedForward[] = [];
  #live: LiveEngineForwards | undefined;
  #closed = false;

  constructor(
    readonly resolveFor: (network: number) => ResolveGuest,
    readonly opts: ProxyOptions = {},
  ) {}

  /**
   * Opens every proxied forward, or none: a refusal closes the ones opened
   * and throws one line (naming the other VM when `owner` knows it).
   */
  async openAll(planned: PlannedForward[], owner?: PortOwner): Promise<void> {
    const opened: PlannedForward[] = [];
    try {
      for (const f of planned) {
        await this.open(f, owner);
        opened.push(f);
      }
    } catch (e) {
      for (const f of opened) await this.close(f);
      throw e;
    }
  }

  /** Opens one proxied forward. */
  async open(f: PlannedForward, owner?: PortOwner): Promise<ForwardProxy> {
    if (this.#closed) {
      throw new CoveError("vm.state", "the VM has stopped", { exit: ExitCode.State });
    }
    try {
      const p = await openForward(f, this.resolveFor(f.network), { ...this.opts, where: f.where });
      this.#proxies.set(f, p);
      return p;
    } catch (e) {
      if (e instanceof CoveError && e.code === "net.port_in_use" && owner) {
        const other = await owner(f).catch(() => undefined);
        if (other) {
          throw new CoveError(
            "net.forward_conflict",
            `${f.where}: host port ${f.address}:${f.host}/${f.protocol} is already forwarded by ${other}`,
            {
              hint: "give one of them another host port (0 picks a free one)",
              exit: ExitCode.Host,
            },
          );
        }
      }
      throw e;
    }
  }

  /**
   * Checks that the host side of forwards someone else will bind (the
   * engine's hostfwd) is free, with this run's names for them in the
   * refusal. Binds and closes at once.
   */
  async probe(planned: PlannedForward[], owner?: PortOwner): Promise<void> {
    for (const f of planned) {
      if (f.host === 0) continue;
      const probe = new ForwardSet(() => () => Promise.resolve(undefined), this.opts);
      await probe.open(f, owner);
      await probe.closeAll();
    }
  }

  /** Lets {@link openLive} add forwards through the engine (once the VM runs). */
  setLiveEngine(live: LiveEngineForwards): void {
    this.#live = live;
  }

  /**
   * Opens one forward while the VM runs (autoForward): through the engine
   * on a NIC it serves itself, whose guest the proxy cannot reach (QEMU
   * user networking), else through the proxy. Resolves with the host port.
   */
  async openLive(f: PlannedForward): Promise<number> {
    if (this.#closed) {
      throw new CoveError("vm.state", "the VM has stopped", { exit: ExitCode.State });
    }
    const live = this.#live;
    if (live?.serves(f.network)) {
      const host = await live.add(f);
      if (this.#closed) {
        await live.remove({ ...f, host }).catch(() => {});
        throw new CoveError("vm.state", "the VM has stopped", { exit: ExitCode.State });
      }
      this.#engineAdded.push({ ...f, host });
      return host;
    }
    return (await this.open(f)).port;
  }

  /** Closes one forward (an automatic one whose guest listener went away). */
  async close(f: PlannedForward): Promise<void> {
    const k = this.#engineAdded.indexOf(f);
    if (k >= 0) {
      this.#engineAdded.splice(k, 1);
      await this.#live?.remove(f);
      return;
    }
    const p = this.#proxies.get(f);
    this.#proxies.delete(f);
    await p?.close();
  }

  /** Records the forwards the engine serves, with the host ports it resolved. */
  setEngineForwards(list: ActiveForward[]): void {
    this.#engine = list;
  }

  /** Every active forward. */
  list(): ActiveForward[] {
    const proxied = [...this.#proxies].map(([f, p]): ActiveForward => ({
      protocol: f.protocol,
      address: f.address,
      host: p.port,
      guest: f.guest,
      origin: f.origin,
      network: f.network,
      via: "proxy",
      where: f.where,
    }));
    const added = this.#engineAdded.map((f): ActiveForward => ({
      protocol: f.protocol,
      address: f.address,
      host: f.host,
      guest: f.guest,
      origin: f.origin,
      network: f.network,
      via: "engine",
      where: f.where,
    }));
    return [...this.#engine, ...added, ...proxied];
  }

  /** The forward opened by {@link open} or {@link openLive} that `pred` picks (autoForward). */
  find(pred: (f: PlannedForward) => boolean): PlannedForward | undefined {
    return this.#engineAdded.find(pred) ?? [...this.#proxies.keys()].find(pred);
  }

  /** Closes every forward; later opens are refused. */
  async closeAll(): Promise<void> {
    this.#closed = true;
    const ps = [...this.#proxies.values()];
    this.#proxies.clear();
    this.#engine = [];
    // The engine's own go with the VM.
    this.#engineAdded = [];
    await Promise.all(ps.map((p) => p.close()));
  }
}

/**
 * The engine-served forwards with the host ports the engine actually bound:
 * `reported` is the engine's `info().forwards` (same order as the engine
 * spec's forwards), used when it matches.
 */
export function engineActive(plan: ForwardPlan, reported: unknown): ActiveForward[] {
  // The engine's order: network by network, each network's forwards as the engine spec lists them.
  const mine = plan.all.filter((f) => !plan.proxied.includes(f))
    .map((f, k) => ({ f, k }))
    .sort((a, b) => a.f.network - b.f.network || a.k - b.k)
    .map(({ f }) => f);
  const rep = Array.isArray(reported) ? reported as { host?: unknown; guest?: unknown }[] : [];
  return mine.map((f, k): ActiveForward => {
    const r = rep[k];
    const host = r && typeof r.host === "number" && r.guest === f.guest ? r.host : f.host;
    return {
      protocol: f.protocol,
      address: f.address,
      host,
      guest: f.guest,
      origin: f.origin,
      network: f.network,
      via: "engine",
      where: f.where,
    };
  });
}
