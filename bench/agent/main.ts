/**
 * Guest agent copy benchmark: a 64 MiB random file copied into and out of
 * the same running guest with `cove cp` (over the guest agent: chunked
 * guest-file-read/write through the supervisor) and with `scp` (over the
 * guest's network, user networking's SSH forward), side by side,
 * alternating. Prints the median time of each, and the ratio cove/scp per
 * direction (goal: within 3x).
 *
 * The guest is the Debian cloud guest of the tests
 * (tests/fixtures/debian_cloud_guest.ts: needs root and debootstrap).
 *
 * Run: `deno run -A bench/agent/main.ts [--runs N]` (Linux; QEMU under TCG
 * unless COVE_QEMU_ACCEL says otherwise).
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createFlags, ensureDebianCloudGuest } from "../../tests/fixtures/debian_cloud_guest.ts";
import { guestAddress } from "../../core/access/address.ts";
import { coveKeyPaths } from "../../core/access/keys.ts";
import { readLiveStatus } from "../../core/access/status.ts";
import { Store } from "../../core/store/store.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CLI = join(ROOT, "cli", "main.ts");
const runsArg = Deno.args.indexOf("--runs");
const RUNS = runsArg >= 0 ? Number(Deno.args[runsArg + 1]) : 3;
const ACCEL = Deno.env.get("COVE_QEMU_ACCEL") || "tcg";
const SIZE = 64 * 2 ** 20;
const NAME = "agentbench";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function sh(bin: string, args: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(bin, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `${bin} ${args.slice(0, 4).join(" ")} failed: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}

const home = await Deno.makeTempDir({ prefix: "cove-bench-agent-" });
const env = { COVE_HOME: home, COVE_QEMU_ACCEL: ACCEL, NO_COLOR: "1" };
const cove = (args: string[]) => sh(Deno.execPath(), ["run", "-A", "--quiet", CLI, ...args], env);
let started = false;
try {
  const g = await ensureDebianCloudGuest();
  const config = join(home, "vm.yaml");
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      engine: "qemu",
      cpus: 2,
      memory: "1GiB",
      disks: [{ path: "disk.img", size: "4GiB" }],
      networks: [{ mode: "user" }],
    }),
  );
  await cove([
    "create",
    NAME,
    "--config",
    config,
    ...createFlags(g),
  ]);
  await cove(["start", NAME]);
  started = true;
  console.error("waiting for ssh and the guest agent (a TCG boot takes minutes)...");
  await cove(["ssh", NAME, "--wait", "15m", "--", "true"]);
  await cove(["agent", NAME]);

  const b = await new Store(home).get(NAME);
  const spec = await b.readSpec();
  Deno.env.set("COVE_HOME", home);
  const addr = await guestAddress(b, spec, { status: readLiveStatus });
  const key = coveKeyPaths(home).privateKey;
  const scpBase = [
    "-q",
    "-i",
    key,
    "-P",
    String(addr.port),
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
  ];
  const remote = `${spec.provision.user}@${addr.host}`;

  const src = join(home, "payload.bin");
  const data = new Uint8Array(SIZE);
  for (let o = 0; o < SIZE; o += 65536) crypto.getRandomValues(data.subarray(o, o + 65536));
  await Deno.writeFile(src, data);

  const t = {
    coveUp: [] as number[],
    scpUp: [] as number[],
    coveDown: [] as number[],
    scpDown: [] as number[],
  };
  for (let i = 0; i < RUNS; i++) {
    t.coveUp.push(await timed(() => cove(["cp", src, `${NAME}:/tmp/by-cove.bin`])));
    t.scpUp.push(await timed(() => sh("scp", [...scpBase, src, `${remote}:/tmp/by-scp.bin`])));
    t.coveDown.push(
      await timed(() => cove(["cp", `${NAME}:/tmp/by-cove.bin`, join(home, "back-cove.bin")])),
    );
    t.scpDown.push(
      await timed(() =>
        sh("scp", [...scpBase, `${remote}:/tmp/by-scp.bin`, join(home, "back-scp.bin")])
      ),
    );
    await Deno.remove(join(home, "back-cove.bin"));
    await Deno.remove(join(home, "back-scp.bin"));
    console.error(
      `run ${i + 1}: cove up ${t.coveUp[i].toFixed(1)}s, scp up ${t.scpUp[i].toFixed(1)}s, ` +
        `cove down ${t.coveDown[i].toFixed(1)}s, scp down ${t.scpDown[i].toFixed(1)}s`,
    );
  }
  const mib = SIZE / 2 ** 20;
  const line = (what: string, c: number[], s: number[]) => {
    const mc = median(c), ms = median(s);
    const ratio = mc / ms;
    console.log(
      `${what}: cove cp ${mc.toFixed(2)}s (${(mib / mc).toFixed(1)} MiB/s), scp ${
        ms.toFixed(2)
      }s (${(mib / ms).toFixed(1)} MiB/s), ratio ${ratio.toFixed(2)}x (goal <= 3x: ${
        ratio <= 3 ? "met" : "missed"
      })`,
    );
  };
  console.log(`64 MiB, ${RUNS} runs, accel ${ACCEL}, medians:`);
  line("host -> guest", t.coveUp, t.scpUp);
  line("guest -> host", t.coveDown, t.scpDown);
} finally {
  if (started) await cove(["stop", NAME, "--force"]).catch(() => {});
  await Deno.remove(home, { recursive: true }).catch(() => {});
}
