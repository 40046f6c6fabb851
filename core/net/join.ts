/**
 * Joining cove networks at `start`: the supervisor looks the network up
 * (one line when it does not exist), takes the VM's address on it, and,
 * for engines that join through cove's switch, makes sure the network's
 * switch runs: its own detached process (`cove network switch NAME`,
 * hidden), holding the network's switch lock, so that it outlives any one
 * VM and exits by itself once the last VM has left.
 * @module
 */
import { CoveError, ExitCode } from "../errors.ts";
import { coveCommand } from "../supervisor/start.ts";
import { type NetworkInfo, NetworkStore } from "./networks.ts";
import { EthernetSwitch } from "./switch.ts";

/** How long a switch with no VM left stays up. */
export const SWITCH_IDLE_MS = 10_000;
/** How long `start` waits for a switch it launched to listen. */
const SWITCH_START_MS = 10_000;

async function answers(path: string): Promise<boolean> {
  try {
    const c = await Deno.connect({ transport: "unix", path });
    c.close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Returns the switch socket of network `name`, launching the switch when
 * none answers.
 */
export async function ensureSwitch(store: NetworkStore, name: string): Promise<string> {
  const path = store.switchSocket(name);
  if (await answers(path)) return path;
  const cmd = coveCommand(["network", "switch", name]);
  const child = new Deno.Command(cmd.command, {
    args: cmd.args,
    env: { COVE_HOME: store.home },
    stdin: "null",
    stdout: "null",
    stderr: "null",
    detached: true,
  }).spawn();
  child.unref();
  const deadline = Date.now() + SWITCH_START_MS;
  while (Date.now() < deadline) {
    if (await answers(path)) return path;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new CoveError("net.switch", `the switch of cove network '${name}' did not start`, {
    hint: `see 'cove network ls'; a stale ${path} can be removed`,
    exit: ExitCode.Failure,
  });
}

/**
 * The body of `cove network switch NAME`: runs the switch until it has been
 * idle for {@link SWITCH_IDLE_MS}. A second switch of the same network
 * finds the lock taken and returns at once.
 */
export async function runSwitch(store: NetworkStore, name: string): Promise<void> {
  await store.get(name);
  const lock = await Deno.open(store.switchLock(name), {
    read: true,
    write: true,
    create: true,
    mode: 0o600,
  });
  try {
    if (!(await lock.tryLock(true))) return; // another switch serves this network
    const path = store.switchSocket(name);
    await Deno.remove(path).catch(() => {});
    const sw = EthernetSwitch.listen(path, { exitWhenIdleMs: SWITCH_IDLE_MS });
    await Deno.chmod(path, 0o600);
    await sw.done;
    await Deno.remove(path).catch(() => {});
  } finally {
    lock.close();
  }
}

/** The network a NIC joins, and the VM's address on it. */
export interface Joined {
  info: NetworkInfo;
  /** ADDR/PREFIX. */
  address: string;
}

/** Looks up the network of a `mode: network` NIC and hands out the VM's address. */
export async function joinNetwork(home: string, name: string, vm: string): Promise<Joined> {
  const store = new NetworkStore(home);
  const info = await store.get(name);
  return { info, address: await store.address(name, vm) };
}

/** Network name -> the VMs whose spec joins it, over every VM of the store at `home`. */
export async function networkMembers(home: string): Promise<Map<string, string[]>> {
  const { Store } = await import("../store/store.ts");
  const store = new Store(home);
  const out = new Map<string, string[]>();
  for (const v of await store.list()) {
    const spec = await store.bundle(v.name).readSpec().catch(() => undefined);
    for (const n of spec?.networks ?? []) {
      if (n.mode !== "network" || !n.network) continue;
      const list = out.get(n.network) ?? [];
      if (!list.includes(v.name)) list.push(v.name);
      out.set(n.network, list);
    }
  }
  return out;
}
