/**
 * Finding a guest's IP address from the host side, by MAC address:
 * macOS's DHCP server lease file (`/var/db/dhcpd_leases`, written by
 * bootpd for Virtualization.framework's shared NAT) and, as a fallback,
 * the ARP table (`arp -an`).
 *
 * bootpd writes MAC addresses without leading zeros in each octet
 * (`52:54:0:a:b:c`), so every MAC is normalised before comparing. Leases
 * are tried newest first and expired ones are skipped: a VM that was
 * recreated with the same MAC may have several.
 * @module
 */

/** One DHCP lease. */
export interface Lease {
  name?: string;
  ip: string;
  /** Normalised with {@link normaliseMac}. */
  mac: string;
  /** When the lease expires, ms since the epoch (bootpd's `lease=` is hex seconds). */
  expires: number;
}

/** Lower case, no leading zeros in an octet: `52:54:00:0A:0b:0c` -> `52:54:0:a:b:c`. */
export function normaliseMac(mac: string): string {
  return mac.trim().toLowerCase().split(/[:-]/).map((o) => o.replace(/^0+(?=.)/, "")).join(":");
}

/** Parses bootpd's lease file: `{ key=value ... }` blocks. Unknown keys are ignored. */
export function parseLeases(text: string): Lease[] {
  const out: Lease[] = [];
  for (const block of text.split("{").slice(1)) {
    const body = block.split("}")[0];
    const kv: Record<string, string> = {};
    for (const line of body.split("\n")) {
      const i = line.indexOf("=");
      if (i > 0) kv[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    // hw_address is "<hardware type>,<mac>"; type 1 is Ethernet.
    const hw = kv.hw_address ?? "";
    const comma = hw.indexOf(",");
    const mac = comma >= 0 ? hw.slice(comma + 1) : hw;
    const ip = kv.ip_address;
    if (!ip || !mac || !/^[0-9a-fA-F]{1,2}([:-][0-9a-fA-F]{1,2}){5}$/.test(mac)) continue;
    const lease = kv.lease ? parseInt(kv.lease.replace(/^0x/i, ""), 16) : NaN;
    out.push({
      name: kv.name,
      ip,
      mac: normaliseMac(mac),
      expires: Number.isFinite(lease) ? lease * 1000 : 0,
    });
  }
  return out;
}

/** The IP of the newest unexpired lease for `mac`, if any. */
export function leaseIpFor(leases: Lease[], mac: string, now = Date.now()): string | undefined {
  const want = normaliseMac(mac);
  return leases
    .filter((l) => l.mac === want && l.expires > now)
    .sort((a, b) => b.expires - a.expires)[0]?.ip;
}

/** One ARP table entry. */
export interface ArpEntry {
  ip: string;
  mac: string;
  iface?: string;
}

/**
 * Parses `arp -an` output from macOS (`? (192.168.64.3) at 52:54:0:1:2:3 on
 * bridge100 ifscope [bridge]`) and Linux (`? (10.0.2.2) at 52:55:0a:00:02:02
 * [ether] on eth0`). Incomplete entries are skipped.
 */
export function parseArp(text: string): ArpEntry[] {
  const out: ArpEntry[] = [];
  for (const line of text.split("\n")) {
    const m = /\(([0-9.]+)\) at ([0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){5})(?:.*? on (\S+))?/.exec(
      line,
    );
    if (m) out.push({ ip: m[1], mac: normaliseMac(m[2]), iface: m[3] });
  }
  return out;
}

/** The IP the ARP table holds for `mac` (the last entry wins, as the newest). */
export function arpIpFor(entries: ArpEntry[], mac: string): string | undefined {
  const want = normaliseMac(mac);
  return entries.filter((e) => e.mac === want).at(-1)?.ip;
}
