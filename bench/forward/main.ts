/**
 * Forward benchmark: a 1 GiB TCP transfer out of one guest, through cove's
 * userspace proxy (to the guest's own address on a tap device) against the
 * same transfer through QEMU's own hostfwd (slirp, user networking), in one
 * run, alternating. The VM has both NICs: eth0 on user networking, eth1 on
 * a tap device bridged inside a network namespace that the benchmark makes;
 * the guest sends 1 GiB of zeros to each connection on port 9000 (busybox
 * nc). Prints both throughputs, the ratio of the medians (cove's time over
 * hostfwd's; the goal is at most 1.0) and the CPU time the supervisor used
 * per proxied transfer.
 *
 * Run as root on Linux: `deno run -A bench/forward/main.ts [--runs N] [--size 1GiB]`
 * (`--size` shortens the transfer where TCG makes 1 GiB take many minutes).
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureNetGuest } from "../../tests/fixtures/netguest.ts";
import { Store } from "../../core/store/store.ts";
import { controlSocketTarget } from "../../core/supervisor/paths.ts";
import { httpRequest } from "../../core/supervisor/http.ts";
import { formatSize, parseSize } from "../../core/units.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CLI = join(ROOT, "cli", "main.ts");
const PROBE = join(ROOT, "tests", "helpers", "netprobe.ts");
const runsArg = Deno.args.indexOf("--runs");
const RUNS = runsArg >= 0 ? Number(Deno.args[runsArg + 1]) : 3;
const sizeArg = Deno.args.indexOf("--size");
const GIB = sizeArg >= 0 ? parseSize(Deno.args[sizeArg + 1], "--size") : 1024 ** 3;
const NS = `cove-bench-fwd-${Deno.pid}`;
const HOSTFWD_PORT = 29001;
const PROXY_PORT = 29002;

if (Deno.build.os !== "linux" || Deno.uid() !== 0) {
  console.error("bench/forward: needs Linux and root (a network namespace and a tap device)");
  Deno.exit(2);
}

async function sh(cmd: string, args: string[], env?: Record<string, string>): Promise<string> {
  const o = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped", cwd: ROOT })
    .output();
  const text = new TextDecoder().decode(o.stdout);
  if (!o.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(o.stderr)}`);
  }
  return text;
}
const inNs = (args: string[], env?: Record<string, string>) =>
  sh("ip", ["netns", "exec", NS, ...args], env);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

async function drain(port: number): Promise<{ bytes: number; seconds: number }> {
  const out = await inNs([
    Deno.execPath(),
    "run",
    "-A",
    "--quiet",
    PROBE,
    "drain",
    "127.0.0.1",
    String(port),
  ]);
  return JSON.parse(out.trim().split("\n").pop()!);
}

const home = await Deno.makeTempDir({ prefix: "cove-bench-fwd-" });
const env = { COVE_HOME: home, COVE_QEMU_ACCEL: Deno.env.get("COVE_QEMU_ACCEL") || "tcg" };
const cove = (args: string[]) => inNs([Deno.execPath(), "run", "-A", "--quiet", CLI, ...args], env);
await sh("ip", ["netns", "add", NS]);
try {
  await inNs(["ip", "link", "set", "lo", "up"]);
  await inNs(["ip", "link", "add", "br0", "type", "bridge"]);
  await inNs(["ip", "addr", "add", "10.78.0.1/24", "dev", "br0"]);
  await inNs(["ip", "link", "set", "br0", "up"]);
  await inNs(["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
  await inNs(["ip", "link", "set", "tap0", "master", "br0"]);
  await inNs(["ip", "link", "set", "tap0", "up"]);

  const g = await ensureNetGuest();
  const spec = {
    engine: "qemu",
    cpus: 1,
    memory: "384MiB",
    disks: [],
    boot: { loader: "kernel", kernel: g.kernel, initrd: g.initrd, cmdline: g.cmdline },
    networks: [
      { mode: "user", forwards: [{ host: HOSTFWD_PORT, guest: 9000 }] },
      {
        mode: "bridged",
        interface: "tap0",
        mac: "52:54:00:78:00:02",
        forwards: [{ host: PROXY_PORT, guest: 9000 }],
      },
    ],
  };
  const file = join(home, "bench.yaml");
  await Deno.writeTextFile(file, JSON.stringify(spec));
  await cove(["create", "bench", "--config", file]);
  await cove(["start", "bench"]);
  const bundle = new Store(home).bundle("bench");
  const consoleText = () => Deno.readTextFile(bundle.consoleLog).catch(() => "");
  const waitFor = async (text: string) => {
    const end = Date.now() + 180_000;
    while (!(await consoleText()).includes(text)) {
      if (Date.now() > end) throw new Error(`'${text}' did not appear on the console`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  await waitFor("COVE-TINYGUEST-READY");
  const type = async (line: string) => {
    await httpRequest(await controlSocketTarget(bundle), "POST", "/console/input", {
      data: line + "\n",
    });
  };
  await type(
    "ip link set eth1 up; ip addr add 10.78.0.2/24 dev eth1; ping -c 1 -W 2 10.78.0.1 >/dev/null; " +
      `printf '#!/bin/sh\\nexec head -c ${GIB} /dev/zero\\n' > /bin/zeros; chmod +x /bin/zeros; ` +
      "nc -ll -p 9000 -e /bin/zeros & echo BENCH-$((6*7))",
  );
  await waitFor("BENCH-42");
  const status = JSON.parse(await cove(["get", "bench", "--format", "json"])) as {
    live?: { supervisor?: { pid: number } };
  };
  const sup = status.live?.supervisor?.pid ?? 0;

  const proxy: number[] = [];
  const slirp: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const a = await drain(HOSTFWD_PORT);
    if (a.bytes !== GIB) throw new Error(`hostfwd gave ${a.bytes} bytes`);
    slirp.push(a.seconds);
    const c0 = cpuSeconds(sup);
    const b = await drain(PROXY_PORT);
    if (b.bytes !== GIB) throw new Error(`the proxy gave ${b.bytes} bytes`);
    cpu.push(cpuSeconds(sup) - c0);
    proxy.push(b.seconds);
    console.log(
      `run ${i + 1}: hostfwd ${(GIB / a.seconds / 2 ** 20).toFixed(0)} MiB/s, ` +
        `cove proxy ${(GIB / b.seconds / 2 ** 20).toFixed(0)} MiB/s (supervisor CPU ${
          cpu[i].toFixed(2)
        } s)`,
    );
  }
  const ratio = median(proxy) / median(slirp);
  console.log(
    `${formatSize(GIB)}, median of ${RUNS}: hostfwd ${median(slirp).toFixed(2)} s, cove proxy ${
      median(proxy).toFixed(2)
    } s; ratio ${ratio.toFixed(3)} (goal <= 1.0); supervisor CPU per transfer ${
      median(cpu).toFixed(2)
    } s`,
  );
} finally {
  await cove(["stop", "bench", "--force"]).catch(() => {});
  await sh("ip", ["netns", "del", NS]).catch(() => {});
  await Deno.remove(home, { recursive: true }).catch(() => {});
}
