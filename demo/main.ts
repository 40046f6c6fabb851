/**
 * `make demo`: the main job of cove on a Linux machine, end to end.
 *
 * Builds the tiny guest from Debian's packages (a Debian kernel and a
 * busybox initramfs, cached under tests/.cache/ after the first run),
 * creates a VM from it with the cove CLI, boots it, shows the guest's own
 * output (its `uname -a`), then stops it through the ACPI power button and
 * deletes it. It uses a private COVE_HOME, so your own VMs are untouched.
 *
 * Run: `deno run -A demo/main.ts` (needs apt-get, dpkg-deb and QEMU: `make setup`).
 * Set COVE_DEMO_KEEP=1 to keep the demo's COVE_HOME for a look afterwards.
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BOOT_MARKER,
  ensureTinyGuest,
  READY_MARKER,
  tinyGuestCreateArgs,
} from "../tests/fixtures/tinyguest.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "cli", "main.ts");
const t0 = performance.now();
const enc = new TextEncoder();

function say(line: string): void {
  Deno.stdout.writeSync(enc.encode(line + "\n"));
}

function elapsed(): string {
  return `${((performance.now() - t0) / 1000).toFixed(1)}s`;
}

/** Runs `cove ARGS`, echoing the command like a shell trace; throws on failure. */
async function cove(home: string, args: string[], show = true): Promise<string> {
  const shown = args.map((a) => (/[\s"']/.test(a) ? `"${a}"` : a)).join(" ");
  if (show) say(`\n$ cove ${shown}`);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, ...args],
    env: { COVE_HOME: home },
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  if (show && stdout.trim()) say(stdout.trimEnd());
  if (!out.success) {
    throw new Error(`cove ${args[0]} failed: ${stderr.trim() || `exit ${out.code}`}`);
  }
  return stdout;
}

async function waitForConsole(
  home: string,
  name: string,
  marker: string,
  timeoutMs: number,
): Promise<string> {
  const path = join(home, "vms", name, "console.log");
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const text = await Deno.readTextFile(path).catch(() => "");
    if (text.includes(marker)) return text;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the guest did not print ${marker} within ${timeoutMs / 1000}s (see ${path})`);
}

async function main(): Promise<number> {
  say("cove demo: a Debian kernel + busybox guest, created, booted and stopped with cove");
  say("\n# building the tiny guest from Debian packages (cached after the first run)");
  const g = await ensureTinyGuest();
  say(`kernel ${g.release}: ${g.kernel}\ninitramfs: ${g.initrd}   [${elapsed()}]`);

  const home = await Deno.makeTempDir({ prefix: "cove-demo-" });
  const name = "demo";
  let started = false;
  try {
    await cove(home, tinyGuestCreateArgs(name, g));
    await cove(home, ["start", name]);
    started = true;
    say(`# waiting for the guest to boot   [${elapsed()}]`);
    const log = await waitForConsole(home, name, READY_MARKER, 120_000);
    const from = log.indexOf(BOOT_MARKER);
    const lines = log.slice(from, log.indexOf(READY_MARKER)).split("\n").map((l) => l.trimEnd())
      .filter((l) => l);
    say(`\n# the guest's console (its /init ran 'uname -a'):   [${elapsed()}]`);
    for (const l of lines) say(`  | ${l}`);
    await cove(home, ["list"]);
    await cove(home, ["stop", name]);
    started = false;
    const after = await Deno.readTextFile(join(home, "vms", name, "console.log"));
    const off = after.split("\n").find((l) => /COVE-TINYGUEST-POWEROFF|Power down/.test(l));
    if (off) {
      say(
        `  | ${
          off.slice(Math.max(0, off.indexOf("COVE-"))).trim()
        }   (the guest handled the ACPI power button)`,
      );
    }
    await cove(home, ["list"]);
    await cove(home, ["delete", name]);
    say(`\ncove demo: done in ${elapsed()}`);
    return 0;
  } catch (e) {
    say(`\ncove demo: FAILED: ${e instanceof Error ? e.message : e}`);
    if (started) await cove(home, ["stop", name, "--force"], false).catch(() => {});
    return 1;
  } finally {
    if (Deno.env.get("COVE_DEMO_KEEP")) say(`(kept COVE_HOME=${home})`);
    else await Deno.remove(home, { recursive: true }).catch(() => {});
  }
}

Deno.exit(await main());
