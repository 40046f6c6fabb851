/**
 * cove networks: private Ethernet networks between VMs of one host
 * (`cove network create/ls/rm`, and `networks: [{ mode: network, network:
 * NAME }]` in a spec). Each lives in `$COVE_HOME/networks/NAME/`:
 * `network.json` (name, subnet, mode, the addresses handed out) and, while
 * VMs use it, the switch's socket and lock (see {@link ./switch.ts}).
 *
 * Refusals: a bad name or subnet, a subnet that overlaps another cove
 * network or a route of the host, a network that does not exist, and
 * `rm` of a network that VMs still name.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import { withFileLock, writeFileAtomic } from "../store/fsutil.ts";

/** Where a network's traffic may go (vz: the vmnet mode; qemu networks are always host-only). */
export type NetworkMode = "host" | "shared";

/** What `network.json` holds. */
export interface NetworkInfo {
  name: string;
  /** IPv4 CIDR, e.g. 10.250.0.0/24. */
  subnet: string;
  mode: NetworkMode;
  createdAt: string;
  /** VM name -> the address handed out to it (without the prefix length). */
  addresses: Record<string, string>;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** A parsed IPv4 CIDR. */
export interface Cidr {
  base: number;
  prefix: number;
}

function ipToInt(ip: string): number | undefined {
  const p = ip.split(".");
  if (p.length !== 4 || p.some((x) => !/^\d{1,3}$/.test(x) || Number(x) > 255)) return undefined;
  return p.reduce((a, x) => a * 256 + Number(x), 0);
}

/** Prints a 32-bit address. */
export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => (Math.floor(n / 2 ** s) & 255).toString()).join(".");
}

/** Parses `a.b.c.d/N` (8 <= N <= 30); the base is the network address. Throws one usage line. */
export function parseCidr(text: string): Cidr {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(text.trim());
  const ip = m ? ipToInt(m[1]) : undefined;
  const prefix = m ? Number(m[2]) : NaN;
  if (ip === undefined || !(prefix >= 8 && prefix <= 30)) {
    throw new CoveError("net.bad_subnet", `'${text}' is not an IPv4 subnet`, {
      hint: "write it as a CIDR with a prefix of 8 to 30, e.g. 10.250.0.0/24",
      exit: ExitCode.Usage,
    });
  }
  const size = 2 ** (32 - prefix);
  return { base: ip - (ip % size), prefix };
}

/** Prints a CIDR. */
export function formatCidr(c: Cidr): string {
  return `${intToIp(c.base)}/${c.prefix}`;
}

/** True when two subnets share an address. */
export function overlaps(a: Cidr, b: Cidr): boolean {
  const aEnd = a.base + 2 ** (32 - a.prefix);
  const bEnd = b.base + 2 ** (32 - b.prefix);
  return a.base < bEnd && b.base < aEnd;
}

/** The host's IPv4 routes (destination subnets), default routes left out. */
export async function hostRoutes(): Promise<Cidr[]> {
  const run = async (cmd: string, args: string[]) => {
    try {
      const o = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
      return o.success ? new TextDecoder().decode(o.stdout) : "";
    } catch {
      return "";
    }
  };
  const out: Cidr[] = [];
  if (Deno.build.os === "linux") {
    const text = await run("ip", ["-4", "-j", "route", "show", "table", "all"]);
    try {
      for (const r of JSON.parse(text || "[]") as { dst?: string; type?: string }[]) {
        if (!r.dst || r.dst === "default" || (r.type && r.type !== "unicast")) continue;
        const dst = r.dst.includes("/") ? r.dst : `${r.dst}/32`;
        const [ip, p] = dst.split("/");
        const n = ipToInt(ip);
        if (n !== undefined) out.push({ base: n, prefix: Number(p) });
      }
    } catch { /* no routes known */ }
  } else if (Deno.build.os === "darwin") {
    // netstat -rn -f inet: "Destination Gateway Flags Netif Expire"; destinations like 192.168.1 or 10/8.
    for (const line of (await run("netstat", ["-rn", "-f", "inet"])).split("\n")) {
      const d = line.trim().split(/\s+/)[0] ?? "";
      if (!/^\d+(\.\d+){0,3}(\/\d+)?$/.test(d)) continue;
      const [ip, p] = d.split("/");
      const parts = ip.split(".");
      const prefix = p ? Number(p) : parts.length * 8;
      while (parts.length < 4) parts.push("0");
      const n = ipToInt(parts.join("."));
      if (n !== undefined && prefix > 0) out.push({ base: n, prefix });
    }
  }
  return out;
}

/** The networks of one COVE_HOME. */
export class NetworkStore {
  constructor(readonly home: string, readonly routes: () => Promise<Cidr[]> = hostRoutes) {}

  get dir(): string {
    return join(this.home, "networks");
  }

  /** The directory of network `name` (its json, switch socket and lock). */
  path(name: string): string {
    validateNetworkName(name);
    return join(this.dir, name);
  }

  /** The unix socket of the network's switch. */
  switchSocket(name: string): string {
    return join(this.path(name), "switch.sock");
  }

  /** The lock the running switch holds. */
  switchLock(name: string): string {
    return join(this.path(name), "switch.lock");
  }

  async list(): Promise<NetworkInfo[]> {
    const out: NetworkInfo[] = [];
    try {
      for await (const e of Deno.readDir(this.dir)) {
        if (!e.isDirectory || !NAME_RE.test(e.name)) continue;
        const n = await this.#read(e.name).catch(() => undefined);
        if (n) out.push(n);
      }
    } catch { /* no networks yet */ }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async #read(name: string): Promise<NetworkInfo> {
    return JSON.parse(await Deno.readTextFile(join(this.path(name), "network.json")));
  }

  /** The network `name`, or one line saying it does not exist. */
  async get(name: string): Promise<NetworkInfo> {
    try {
      return await this.#read(name);
    } catch (e) {
      if (e instanceof CoveError) throw e;
      throw new CoveError("net.not_found", `no cove network named '${name}'`, {
        hint: `create it with 'cove network create ${name}', or see 'cove network ls'`,
        exit: ExitCode.NotFound,
      });
    }
  }

  /** Creates a network; the subnet defaults to the first free 10.250.N.0/24. */
  async create(
    name: string,
    opts: { subnet?: string; mode?: NetworkMode } = {},
  ): Promise<NetworkInfo> {
    const dir = this.path(name);
    const others = await this.list();
    if (others.some((n) => n.name === name)) {
      throw new CoveError("net.exists", `a cove network named '${name}' exists`, {
        hint: `remove it with 'cove network rm ${name}' or choose another name`,
        exit: ExitCode.Usage,
      });
    }
    const routes = await this.routes();
    const taken = [
      ...others.map((n) => ({ what: `cove network '${n.name}'`, cidr: parseCidr(n.subnet) })),
      ...routes.map((r) => ({ what: "a route of this host", cidr: r })),
    ];
    let cidr: Cidr;
    if (opts.subnet) {
      cidr = parseCidr(opts.subnet);
      const clash = taken.find((t) => overlaps(t.cidr, cidr));
      if (clash) {
        throw new CoveError(
          "net.subnet_overlap",
          `subnet ${formatCidr(cidr)} overlaps ${clash.what} (${formatCidr(clash.cidr)})`,
          { hint: "choose another --subnet", exit: ExitCode.Usage },
        );
      }
    } else {
      let found: Cidr | undefined;
      for (let i = 0; i < 256 && !found; i++) {
        const c = parseCidr(`10.250.${i}.0/24`);
        if (!taken.some((t) => overlaps(t.cidr, c))) found = c;
      }
      if (!found) {
        throw new CoveError("net.no_subnet", "no free subnet in 10.250.0.0/16", {
          hint: "give one with --subnet",
          exit: ExitCode.Usage,
        });
      }
      cidr = found;
    }
    const info: NetworkInfo = {
      name,
      subnet: formatCidr(cidr),
      mode: opts.mode ?? "host",
      createdAt: new Date().toISOString(),
      addresses: {},
    };
    await Deno.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = await Deno.makeTempDir({ dir: this.dir, prefix: `.${name}-` });
    await Deno.writeTextFile(join(tmp, "network.json"), JSON.stringify(info, null, 2) + "\n", {
      mode: 0o600,
    });
    await Deno.rename(tmp, dir);
    return info;
  }

  /** Removes a network; refused while `members` (the VMs whose spec names it) is not empty. */
  async remove(name: string, members: string[]): Promise<void> {
    await this.get(name);
    if (members.length > 0) {
      throw new CoveError(
        "net.in_use",
        `cove network '${name}' still has members: ${members.join(", ")}`,
        {
          hint: "remove it from their networks: first ('cove edit NAME'), or delete those VMs",
          exit: ExitCode.State,
        },
      );
    }
    await Deno.remove(this.path(name), { recursive: true });
  }

  /**
   * The address of `vm` on the network: the one handed out before, or the
   * next free host address of the subnet (the first is the network's own,
   * reserved like a gateway). Returned with the prefix length.
   */
  async address(name: string, vm: string): Promise<string> {
    return await withFileLock(join(this.path(name), "network.lock"), async () => {
      const info = await this.get(name);
      const c = parseCidr(info.subnet);
      let ip = info.addresses[vm];
      if (!ip) {
        const used = new Set(Object.values(info.addresses));
        const last = c.base + 2 ** (32 - c.prefix) - 2;
        for (let n = c.base + 2; n <= last && !ip; n++) if (!used.has(intToIp(n))) ip = intToIp(n);
        if (!ip) {
          throw new CoveError("net.full", `cove network '${name}' has no free address`, {
            exit: ExitCode.State,
          });
        }
        info.addresses[vm] = ip;
        const file = join(this.path(name), "network.json");
        await writeFileAtomic(file, JSON.stringify(info, null, 2) + "\n");
      }
      return `${ip}/${c.prefix}`;
    });
  }
}

/** Throws one line unless `name` is a valid network name. */
export function validateNetworkName(name: string): void {
  if (!NAME_RE.test(name) || name.includes("..")) {
    throw new CoveError("net.bad_name", `'${name}' is not a valid network name`, {
      hint: "use letters, digits, '.', '_' or '-' (at most 63), starting with a letter or digit",
      exit: ExitCode.Usage,
    });
  }
}
