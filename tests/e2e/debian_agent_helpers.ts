/**
 * What the e2e tests that boot the Debian cloud guest (with qemu-guest-agent,
 * tests/fixtures/debian_cloud_guest.ts) under TCG share: the `cove` runner
 * with TCG forced, the tools they need, the create-and-start of a VM from the
 * fixture, the wait for its agent, and the log tails printed on failure.
 * @module
 */
import { join } from "node:path";
import { assertEquals } from "../helpers/assert.ts";
import { type CliResult, cove } from "../helpers/cli.ts";
import { createFlags, type DebianCloudGuest } from "../fixtures/debian_cloud_guest.ts";

const ENV = { COVE_QEMU_ACCEL: "tcg" };
/** A TCG boot to the agent takes a minute or two on a quiet 2-core machine; allow for a busy one. */
export const BOOT_WAIT_S = 900;

/** True when `name` is an executable file on PATH (or in /usr/bin, /usr/sbin, /sbin). */
export function haveTool(name: string): boolean {
  for (const d of [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/bin", "/usr/sbin", "/sbin"]) {
    try {
      if (Deno.statSync(join(d, name)).isFile) return true;
    } catch { /* next */ }
  }
  return false;
}

/** Throws one line naming the tools of `names` this host lacks (make setup installs them). */
export function requireTools(names: string[]): void {
  const missing = names.filter((t) => !haveTool(t));
  if (missing.length) {
    throw new Error(`this host lacks ${missing.join(", ")}: the test needs them (run make setup)`);
  }
}

/** Runs cove in `home` with QEMU under TCG. */
export function run(
  home: string,
  args: string[],
  opts: { stdin?: string; timeoutMs?: number } = {},
): Promise<CliResult> {
  return cove(home, args, { env: ENV, timeoutMs: opts.timeoutMs ?? 180_000, stdin: opts.stdin });
}

/** Creates VM `name` from the fixture with the spec `config` (JSON) and starts it. */
export async function createAndStart(
  home: string,
  name: string,
  g: DebianCloudGuest,
  config: Record<string, unknown>,
): Promise<void> {
  const file = join(home, `${name}.yaml`);
  await Deno.writeTextFile(file, JSON.stringify(config));
  const c = await run(home, [
    "create",
    name,
    "--config",
    file,
    ...createFlags(g),
  ], { timeoutMs: 300_000 });
  assertEquals(c.code, 0, c.stderr);
  const s = await run(home, ["start", name], { timeoutMs: 300_000 });
  assertEquals(s.code, 0, s.stderr);
}

/** Polls `cove agent NAME` until the agent answers or `seconds` pass; the last result. */
export async function waitForAgent(
  home: string,
  name: string,
  seconds: number,
): Promise<CliResult> {
  const until = Date.now() + seconds * 1000;
  let r: CliResult;
  do {
    r = await run(home, ["agent", name]);
    if (r.code === 0) return r;
    await new Promise((res) => setTimeout(res, 3000));
  } while (Date.now() < until);
  return r;
}

/** The last 40 lines of the VM's console. */
export async function consoleTail(home: string, name: string): Promise<string> {
  const log = await Deno.readTextFile(join(home, "vms", name, "console.log")).catch(() => "");
  return log.split("\n").slice(-40).join("\n");
}
