/**
 * The guest's addresses as its agent reports them
 * (guest-network-get-interfaces): the first resolver of `cove ip` when the
 * agent answers, before DHCP leases and the ARP table.
 * @module
 */
import type { AgentTransport } from "./transport.ts";

/** One address of a guest interface. */
export interface AgentAddress {
  interface: string;
  address: string;
  family: "ipv4" | "ipv6";
  prefix: number;
  mac?: string;
}

interface QgaInterface {
  name: string;
  "hardware-address"?: string;
  "ip-addresses"?: { "ip-address-type": string; "ip-address": string; prefix: number }[];
}

/** Every address the agent reports, loopback and link-local left out. */
export async function agentAddresses(
  agent: AgentTransport,
  opts: { timeoutMs?: number } = {},
): Promise<AgentAddress[]> {
  const ifs = await agent.command<QgaInterface[]>("guest-network-get-interfaces", undefined, {
    timeoutMs: opts.timeoutMs ?? 10_000,
  });
  return usableAddresses(ifs);
}

/** Keeps the addresses a host could reach: no loopback, no link-local; IPv4 first. */
export function usableAddresses(ifs: QgaInterface[]): AgentAddress[] {
  const out: AgentAddress[] = [];
  for (const i of ifs) {
    for (const a of i["ip-addresses"] ?? []) {
      const ip = a["ip-address"];
      const family = a["ip-address-type"] === "ipv6" ? "ipv6" : "ipv4";
      if (family === "ipv4" && (ip.startsWith("127.") || ip.startsWith("169.254."))) continue;
      if (family === "ipv6" && (ip === "::1" || /^fe[89ab]/i.test(ip))) continue;
      out.push({
        interface: i.name,
        address: ip,
        family,
        prefix: a.prefix,
        mac: i["hardware-address"],
      });
    }
  }
  return out.sort((a, b) => (a.family === b.family ? 0 : a.family === "ipv4" ? -1 : 1));
}
