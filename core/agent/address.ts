/**
 * The guest's addresses as its agent reports them
 * (guest-network-get-interfaces): the first resolver of `cove ip` when the
 * agent answers, before DHCP leases and the ARP table.
 * @module
 */
import { type AddressOptions, type GuestAddress, guestAddress } from "../access/address.ts";
import { CoveError, ExitCode } from "../errors.ts";
import type { VmSpec } from "../spec/schema.ts";
import type { Bundle } from "../store/bundle.ts";
import { agentOf } from "./remote.ts";
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

/** Where `cove ip` finds a running VM: the agent's report, or {@link guestAddress}'s. */
export type VmAddress =
  | (GuestAddress & { addresses?: undefined })
  | { host: string; via: "agent"; addresses: AgentAddress[]; port?: undefined };

/**
 * `cove ip`: the guest agent first (it knows the guest's addresses without
 * leases or ARP), except on user networking, where the host reaches the
 * guest only through its port forward; then leases, ARP or the forward.
 */
export async function vmAddress(
  bundle: Bundle,
  spec: VmSpec,
  opts: AddressOptions = {},
): Promise<VmAddress> {
  const nic = spec.networks.find((n) => n.mode !== "none");
  if (spec.agent && nic?.mode !== "user" && (await bundle.isRunning())) {
    const found = await agentOf(bundle).then((a) => agentAddresses(a, { timeoutMs: 5_000 }))
      .catch(() => [] as AgentAddress[]);
    if (found.length) return { host: found[0].address, via: "agent", addresses: found };
    if (!nic) {
      throw new CoveError(
        "vm.no_address",
        `VM '${bundle.name}' has no network, and its guest agent reports no address but loopback`,
        {
          hint: "add one under networks: in its cove.yaml, e.g. { mode: nat }",
          exit: ExitCode.State,
        },
      );
    }
  }
  return await guestAddress(bundle, spec, opts);
}
