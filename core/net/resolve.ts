/**
 * The guest's current address as the host sees it, for the supervisor's
 * forwards ({@link ./proxy.ts} asks once per connection): by the NIC's MAC
 * address, from macOS's DHCP leases (VZ NAT) and else the host's neighbour
 * table. On Linux the table is read with `ip -s -j neigh`, which says how
 * long ago each entry was last confirmed: when a guest changed its address
 * both entries carry its MAC, and the freshest one wins.
 *
 * Answers are cached for a second and concurrent callers share one lookup,
 * so 200 connections at once cost one subprocess, not 200. This is the
 * default; an engine that knows better (the guest agent) can give the proxy
 * its own {@link ResolveGuest}.
 * @module
 */
import { arpIpFor, leaseIpFor, normaliseMac, parseArp, parseLeases } from "../access/leases.ts";
import type { ResolveGuest } from "./proxy.ts";

/** One entry of `ip -s -j neigh`. */
export interface NeighEntry {
  dst: string;
  lladdr?: string;
  /** Seconds since the entry was last confirmed reachable. */
  confirmed?: number;
  state?: string[];
}

/**
 * The addresses of the usable neighbour entries for `mac`, best first:
 * FAILED and INCOMPLETE entries are skipped, IPv4 comes first, then the
 * smallest `confirmed` age.
 */
export function neighIpsFor(entries: NeighEntry[], mac: string): string[] {
  const want = normaliseMac(mac);
  const ok = entries.filter((e) =>
    e.lladdr && normaliseMac(e.lladdr) === want &&
    !(e.state ?? []).some((s) => s === "FAILED" || s === "INCOMPLETE")
  );
  const v4 = (e: NeighEntry) => (e.dst.includes(":") ? 1 : 0);
  ok.sort((a, b) => v4(a) - v4(b) || (a.confirmed ?? Infinity) - (b.confirmed ?? Infinity));
  return ok.map((e) => e.dst);
}

async function output(cmd: string, args: string[]): Promise<string> {
  try {
    const o = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return o.success ? new TextDecoder().decode(o.stdout) : "";
  } catch {
    return "";
  }
}

/** Options of {@link macResolver}. */
export interface MacResolverOptions {
  /** macOS bootpd's lease file; default /var/db/dhcpd_leases. */
  leaseFile?: string;
  /** Cache answers this long (ms). Default 1000. */
  cacheMs?: number;
}

/** A {@link ResolveGuest} that finds the NIC with `mac` in the host's tables. */
export function macResolver(mac: string, opts: MacResolverOptions = {}): ResolveGuest {
  let cached: { at: number; ips: string[] } | undefined;
  let inflight: Promise<string[]> | undefined;
  /** Addresses a connect failed on lately, with when: tried last for a while. */
  const failed = new Map<string, number>();
  const lookup = async (): Promise<string[]> => {
    if (Deno.build.os === "darwin") {
      const text = await Deno.readTextFile(opts.leaseFile ?? "/var/db/dhcpd_leases").catch(() =>
        ""
      );
      const ip = leaseIpFor(parseLeases(text), mac) ??
        arpIpFor(parseArp(await output("arp", ["-an"])), mac);
      return ip ? [ip] : [];
    }
    const json = await output("ip", ["-s", "-j", "neigh", "show"]);
    if (json) {
      try {
        const ips = neighIpsFor(JSON.parse(json) as NeighEntry[], mac);
        if (ips.length) return ips;
      } catch { /* fall back to /proc */ }
    }
    // /proc/net/arp: "IP HWtype Flags HWaddress Mask Device".
    const text = await Deno.readTextFile("/proc/net/arp").catch(() => "");
    const rows = text.split("\n").slice(1).map((l) => l.trim().split(/\s+/));
    return rows.filter((r) =>
      r.length >= 4 && r[2] !== "0x0" && normaliseMac(r[3]) === normaliseMac(mac)
    ).map((r) => r[0]);
  };
  const pick = (ips: string[]) => {
    const now = Date.now();
    for (const [ip, at] of failed) if (now - at > 30_000) failed.delete(ip);
    return ips.find((ip) => !failed.has(ip)) ?? ips[0];
  };
  return async (hint) => {
    if (hint?.failed) {
      failed.set(hint.failed, Date.now());
      cached = undefined;
    }
    const now = Date.now();
    if (cached && now - cached.at < (opts.cacheMs ?? 1000) && cached.ips.length) {
      return pick(cached.ips);
    }
    inflight ??= lookup().then((ips) => {
      cached = { at: Date.now(), ips };
      return ips;
    }).finally(() => (inflight = undefined));
    return pick(await inflight);
  };
}
