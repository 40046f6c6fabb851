/**
 * Where to reach a running VM's SSH server (`cove ip`, `cove ssh`,
 * `cove exec`):
 *
 * The engine that runs the VM says how ({@link GuestAccess.route}):
 * - through a port forward (qemu's user networking): the host side of the
 *   forward to guest port `provision.sshPort` (`127.0.0.1:PORT`), as the
 *   supervisor reports it;
 * - at the guest's address (vz's shared NAT, bridged NICs): from macOS's
 *   DHCP leases (matched by MAC, newest unexpired lease first) on NAT, else
 *   from the ARP table; port `provision.sshPort`.
 *
 * A stopped VM and a VM without a network each get one clear line.
 * @module
 */
import type { EngineId } from "../../engines/engine.ts";
import { ENGINE_IDS, loadEngine, resolveEngineId } from "../../engines/select.ts";
import { CoveError, ExitCode } from "../errors.ts";
import { detectHost, type HostInfo } from "../host.ts";
import type { VmSpec } from "../spec/schema.ts";
import type { Bundle } from "../store/bundle.ts";
import { arpIpFor, leaseIpFor, parseArp, parseLeases } from "./leases.ts";

/** Where the guest's SSH server answers. */
export interface GuestAddress {
  /** What `cove ip` prints: the guest's IP, or the host address of the forward. */
  host: string;
  port: number;
  /** How it was found. */
  via: "dhcp-lease" | "arp" | "port-forward";
  /** The NIC's network mode. */
  mode: "nat" | "bridged" | "user" | "network";
}

/** The live state a supervisor reports (`GET /status` on control.sock); only what cove ip reads. */
export interface LiveStatus {
  /** Which engine runs the VM. */
  engine?: string;
  /** Port forwards in effect (host ports resolved). Anywhere in the status object. */
  forwards?: { protocol?: string; address?: string; host: number; guest: number }[];
  [key: string]: unknown;
}

/** Reads the supervisor's live status of a running VM. */
export type StatusReader = (bundle: Bundle) => Promise<LiveStatus | undefined>;

/** Options of {@link guestAddress}. */
export interface AddressOptions {
  /** Keep looking this long (seconds) for an address to appear; default 0. */
  waitSeconds?: number;
  status?: StatusReader;
  /** The engine when the status does not say; default: the spec's engine resolved for `host`. */
  engine?: EngineId;
  /** The host the engine is resolved for; default this one. */
  host?: HostInfo;
  /** For tests: the lease file, and the ARP table reader. */
  leaseFile?: string;
  arp?: () => Promise<string>;
  now?: () => number;
}

/** The default lease file of macOS's bootpd. */
export const DHCPD_LEASES = "/var/db/dhcpd_leases";

/** Throws unless the VM is running. */
export async function assertRunning(bundle: Bundle): Promise<void> {
  if (!(await bundle.isRunning())) {
    throw new CoveError("vm.not_running", `VM '${bundle.name}' is not running`, {
      hint: `start it with 'cove start ${bundle.name}'`,
      exit: ExitCode.State,
    });
  }
}

/** The first NIC that has a network, or one clear line when there is none. */
export function primaryNic(bundle: Bundle, spec: VmSpec): VmSpec["networks"][number] {
  const nic = spec.networks.find((n) => n.mode !== "none");
  if (!nic) {
    throw new CoveError("vm.no_network", `VM '${bundle.name}' has no network`, {
      hint:
        `add one under networks: in its cove.yaml ('cove edit ${bundle.name}'), e.g. { mode: nat }`,
      exit: ExitCode.State,
    });
  }
  return nic;
}

/** Finds the forward to `guestPort` (tcp) anywhere in a status object. */
export function findForward(
  status: unknown,
  guestPort: number,
): { address: string; host: number } | undefined {
  const seen = new Set<unknown>();
  const walk = (v: unknown): { address: string; host: number } | undefined => {
    if (!v || typeof v !== "object" || seen.has(v)) return undefined;
    seen.add(v);
    if (Array.isArray(v)) {
      for (const x of v) {
        const r = walk(x);
        if (r) return r;
      }
      return undefined;
    }
    const o = v as Record<string, unknown>;
    if (
      typeof o.host === "number" && o.host > 0 && o.guest === guestPort &&
      (o.protocol === undefined || o.protocol === "tcp")
    ) {
      const address = typeof o.address === "string" && o.address !== "0.0.0.0" && o.address !== ""
        ? o.address
        : "127.0.0.1";
      return { address, host: o.host };
    }
    for (const x of Object.values(o)) {
      const r = walk(x);
      if (r) return r;
    }
    return undefined;
  };
  return walk(status);
}

async function runArp(): Promise<string> {
  try {
    const out = await new Deno.Command("arp", { args: ["-an"], stdout: "piped", stderr: "null" })
      .output();
    return new TextDecoder().decode(out.stdout);
  } catch {
    return "";
  }
}

/** Finds where a running VM's SSH server answers, waiting up to `waitSeconds`. */
export async function guestAddress(
  bundle: Bundle,
  spec: VmSpec,
  opts: AddressOptions = {},
): Promise<GuestAddress> {
  await assertRunning(bundle);
  const nic = primaryNic(bundle, spec);
  const mode = nic.mode as GuestAddress["mode"];
  const now = opts.now ?? Date.now;
  const deadline = now() + (opts.waitSeconds ?? 0) * 1000;
  const port = spec.provision.sshPort;
  while (true) {
    const status = opts.status ? await opts.status(bundle).catch(() => undefined) : undefined;
    const said = ENGINE_IDS.find((id) => id === status?.engine);
    const engine = await loadEngine(
      said ?? opts.engine ?? resolveEngineId(spec, opts.host ?? detectHost()),
    );
    let found: GuestAddress | undefined;
    if (engine.guestAccess().route(nic) === "port-forward") {
      const fwd = findForward(status, port);
      if (fwd) found = { host: fwd.address, port: fwd.host, via: "port-forward", mode };
      else if (status !== undefined && now() >= deadline) {
        throw new CoveError(
          "vm.no_ssh_forward",
          `VM '${bundle.name}' has no host port forwarded to guest port ${port}`,
          {
            hint: `add { host: 0, guest: ${port} } to the forwards of its network`,
            exit: ExitCode.State,
          },
        );
      }
    } else if (nic.mac) {
      if (nic.mode === "nat") {
        const text = await Deno.readTextFile(opts.leaseFile ?? DHCPD_LEASES).catch(() => "");
        const ip = leaseIpFor(parseLeases(text), nic.mac, now());
        if (ip) found = { host: ip, port, via: "dhcp-lease", mode };
      }
      if (!found) {
        const ip = arpIpFor(parseArp(await (opts.arp ?? runArp)()), nic.mac);
        if (ip) found = { host: ip, port, via: "arp", mode };
      }
    }
    if (found) return found;
    if (now() >= deadline) {
      throw new CoveError("vm.no_address", `VM '${bundle.name}' has no IP address yet`, {
        hint: "it may still be booting: retry with --wait 1m",
        exit: ExitCode.State,
      });
    }
    await new Promise((r) => setTimeout(r, 1000));
    await assertRunning(bundle);
  }
}
