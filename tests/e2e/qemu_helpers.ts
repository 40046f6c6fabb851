/**
 * Helpers for the QEMU end-to-end tests: the tiny guest (built from Debian
 * packages on first use), VMs created through the real CLI in a private
 * COVE_HOME, waiting for console text, and finding QEMU processes. Every
 * QEMU here runs under TCG (COVE_QEMU_ACCEL=tcg): nested KVM hangs on the
 * build machines.
 * @module
 */
import { join } from "node:path";
import { type CliResult, cove } from "../helpers/cli.ts";
import { ensureTinyGuest, type TinyGuest } from "../fixtures/tinyguest.ts";
import { Bundle } from "../../core/store/bundle.ts";
import { Store } from "../../core/store/store.ts";
import { controlSocketTarget } from "../../core/supervisor/paths.ts";
import { httpRequest } from "../../core/supervisor/http.ts";

export {
  BOOT_MARKER,
  COUNTER_MARKER,
  GUEST_HTTP_PORT,
  HTTP_BODY,
  POWEROFF_MARKER,
  READY_MARKER,
} from "../fixtures/tinyguest.ts";

/** Environment for every cove run in these tests. */
export const TEST_ENV = { COVE_QEMU_ACCEL: "tcg" };
/** How long a TCG boot may take on a loaded 2-core machine. */
export const BOOT_TIMEOUT_MS = 120_000;

/** Fails clearly when a tool the tests need is missing. */
export function requireTool(name: string, pkg: string): void {
  const dirs = (Deno.env.get("PATH") ?? "").split(":");
  for (const d of [...dirs, "/usr/bin", "/usr/sbin"]) {
    try {
      if (Deno.statSync(join(d, name)).isFile) return;
    } catch { /* next */ }
  }
  throw new Error(
    `${name} is not installed: the QEMU e2e tests need the '${pkg}' package (run make setup)`,
  );
}

/** The tiny guest, after checking the tools it needs. */
export async function guest(): Promise<TinyGuest> {
  requireTool("qemu-system-x86_64", "qemu-system-x86");
  requireTool("apt-get", "apt");
  requireTool("dpkg-deb", "dpkg");
  return await ensureTinyGuest();
}

/** Runs cove with the test environment. */
export function run(
  home: string,
  args: string[],
  opts: { stdin?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<CliResult> {
  return cove(home, args, { ...opts, env: { ...TEST_ENV, ...opts.env } });
}

/** Options of {@link createGuestVm}. */
export interface VmOptions {
  shares?: { path: string; tag: string }[];
  forwards?: { host: number; guest: number }[];
  memory?: string;
  /** Extra kernel command line. */
  cmdline?: string;
  /** A raw disk of this size (`disk.img`, /dev/vda in the guest). */
  disk?: string;
}

/** Creates a VM of the tiny guest through `cove create --config`. */
export async function createGuestVm(
  home: string,
  name: string,
  opts: VmOptions = {},
): Promise<string> {
  const g = await guest();
  const tags = (opts.shares ?? []).map((s) => s.tag);
  const cmdline = [
    g.cmdline,
    tags.length ? `cove.shares=${tags.join(",")}` : "",
    opts.cmdline ?? "",
  ]
    .filter((s) => s).join(" ");
  const spec = {
    engine: "qemu",
    cpus: 1,
    memory: opts.memory ?? "384MiB",
    disks: opts.disk ? [{ path: "disk.img", size: opts.disk }] : [],
    boot: { loader: "kernel", kernel: g.kernel, initrd: g.initrd, cmdline },
    networks: [{
      mode: "user",
      forwards: (opts.forwards ?? []).map((f) => ({ ...f, protocol: "tcp" })),
    }],
    shares: (opts.shares ?? []).map((s) => ({ path: s.path, tag: s.tag })),
  };
  await Deno.mkdir(home, { recursive: true });
  const file = join(home, `${name}.yaml`);
  await Deno.writeTextFile(file, JSON.stringify(spec));
  const r = await run(home, ["create", name, "--config", file]);
  if (r.code !== 0) throw new Error(`cove create ${name} failed: ${r.stderr}`);
  return join(home, "vms", name);
}

/** Reads a VM's console.log ("" when absent). */
export async function consoleLog(home: string, name: string): Promise<string> {
  try {
    return await Deno.readTextFile(join(home, "vms", name, "console.log"));
  } catch {
    return "";
  }
}

/** Types `line` and a newline on a running VM's serial console, through its supervisor. */
export async function typeInto(home: string, name: string, line: string): Promise<void> {
  const b = new Store(home).bundle(name);
  const r = await httpRequest(await controlSocketTarget(b), "POST", "/console/input", {
    data: line + "\n",
  });
  if (r.status !== 200) throw new Error(`console input to ${name}: ${r.status}`);
}

/**
 * Types `line` until `marker` appears on the console after it, again every
 * `everyMs`: the tiny guest's shell starts a moment after its ready marker,
 * and its line editor drops what was typed before it read. So `line` must
 * be safe to run twice.
 */
export async function typeUntil(
  home: string,
  name: string,
  line: string,
  marker: string,
  timeoutMs = 60_000,
  everyMs = 10_000,
): Promise<void> {
  const from = (await consoleLog(home, name)).length;
  const deadline = Date.now() + timeoutMs;
  let next = 0;
  while (Date.now() < deadline) {
    if (Date.now() >= next) {
      await typeInto(home, name, line);
      next = Date.now() + everyMs;
    }
    if ((await consoleLog(home, name)).slice(from).includes(marker)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(
    `'${marker}' did not appear on ${name}'s console within ${
      timeoutMs / 1000
    }s of typing '${line}':\n${(await consoleLog(home, name)).slice(-2000)}`,
  );
}

/** Waits until console.log contains `text`. */
export async function waitForConsole(
  home: string,
  name: string,
  text: string,
  timeoutMs = BOOT_TIMEOUT_MS,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const log = await consoleLog(home, name);
    if (log.includes(text)) return log;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(
    `'${text}' did not appear on ${name}'s console within ${timeoutMs / 1000}s:\n${
      (await consoleLog(home, name)).slice(-2000)
    }`,
  );
}

/** Waits for `cond` to hold. */
export async function waitFor(
  what: string,
  cond: () => Promise<boolean> | boolean,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Pids of QEMU processes whose command line mentions `needle` (e.g. a bundle path). */
export function qemuPids(needle: string): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`).split("\0");
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      if (/^\d+ \(.*\) Z/.test(stat)) continue;
      if (cmd[0].includes("qemu-system") && cmd.some((a) => a.includes(needle))) {
        out.push(Number(e.name));
      }
    } catch { /* gone */ }
  }
  return out;
}

/** Pids of cove processes running with COVE_HOME=home (detached supervisors). */
export function supervisorPids(home: string): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === Deno.pid) continue;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
      if (!cmd.includes("cli/main.ts")) continue;
      const env = Deno.readTextFileSync(`/proc/${e.name}/environ`).split("\0");
      if (env.includes(`COVE_HOME=${home}`)) out.push(Number(e.name));
    } catch { /* gone */ }
  }
  return out;
}

/** True while a process exists (and is not a zombie). */
export function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(Deno.readTextFileSync(`/proc/${pid}/stat`));
  } catch {
    return false;
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

/** The parsed `cove get --format json`. */
export async function getJson(
  home: string,
  name: string,
): Promise<
  Record<string, unknown> & {
    state: string;
    error?: string;
    live?: { supervisor?: { pid: number; info: Record<string, unknown> } };
  }
> {
  const r = await run(home, ["get", name, "--format", "json"]);
  if (r.code !== 0) throw new Error(`cove get failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Asserts that a VM left nothing behind: no held lock, no socket, no runtime dir, no QEMU. */
export async function assertNothingLeft(home: string, name: string): Promise<void> {
  const dir = join(home, "vms", name);
  const leftovers: string[] = [];
  for (const f of ["control.sock", "run"]) {
    try {
      await Deno.lstat(join(dir, f));
      leftovers.push(f);
    } catch { /* good */ }
  }
  if (await new Bundle(name, dir).holder().catch(() => null)) leftovers.push("a held lock");
  const pids = qemuPids(dir);
  if (pids.length) leftovers.push(`qemu pids ${pids.join(",")}`);
  if (leftovers.length) throw new Error(`VM '${name}' left ${leftovers.join(", ")} behind`);
}

/** Removes a test home, stopping anything still running in it first. */
export async function cleanupHome(home: string): Promise<void> {
  for (const pid of supervisorPids(home)) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* gone */ }
  }
  for (const pid of qemuPids(home)) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* gone */ }
  }
  await Deno.remove(home, { recursive: true }).catch(() => {});
}
