/**
 * Boot benchmark: time from launch to the guest's boot marker, through
 * `cove run` (the supervisor: Deno start-up, spec, checks, QEMU launch,
 * console to console.log) against the identical QEMU command run directly
 * (the argv cove used, read from its status), side by side, alternating,
 * several times. Prints the ratio of the medians (target <= 1.10), the
 * supervisor's peak RSS (VmHWM), the CPU time it used until the marker, and
 * how long after the supervisor started QEMU was launched (cove's fixed
 * cost, which unlike boot times hardly varies with the machine's load).
 * Both sides are timed by reading the console from a socket.
 *
 * Run: `deno run -A bench/boot/main.ts [--runs N]` (Linux; QEMU under TCG
 * unless COVE_QEMU_ACCEL says otherwise).
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BOOT_MARKER,
  ensureTinyGuest,
  tinyGuestCreateArgs,
} from "../../tests/fixtures/tinyguest.ts";
import { Store } from "../../core/store/store.ts";
import { attachConsole, stopVm, vmStatus } from "../../core/supervisor/client.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CLI = join(ROOT, "cli", "main.ts");
const runsArg = Deno.args.indexOf("--runs");
const RUNS = runsArg >= 0 ? Number(Deno.args[runsArg + 1]) : 3;
const ACCEL = Deno.env.get("COVE_QEMU_ACCEL") || "tcg";
const TIMEOUT_MS = 180_000;

function peakRssKiB(pid: number): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** A process's start time in seconds since boot (/proc/PID/stat starttime; 10 ms resolution). */
function startSeconds(pid: number): number | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]) / 100;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // clock ticks; USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

/**
 * One boot through `cove run`; returns ms to marker, the supervisor's peak
 * RSS and CPU time, and the QEMU argv. The marker is read from the console
 * stream of the control socket (replaying what came before the attach), so
 * both sides are timed by reading a socket, not by polling a file.
 */
async function viaCove(
  home: string,
  name: string,
): Promise<
  { ms: number; rssKiB?: number; cpu?: number; qemuCpu?: number; launch?: number; argv: string[] }
> {
  const bundle = await new Store(home).get(name);
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, "run", name],
    env: { COVE_HOME: home, COVE_QEMU_ACCEL: ACCEL },
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let stream: Awaited<ReturnType<typeof attachConsole>> | undefined;
  while (!stream) {
    try {
      stream = await attachConsole(bundle, { replay: 65536 });
    } catch {
      if (performance.now() - t0 > TIMEOUT_MS) throw new Error("cove run: no console");
      await sleep(20);
    }
  }
  let qemuPid: number | undefined;
  let marked = false;
  const findQemu = (async () => {
    while (!qemuPid && !marked) {
      const st = await vmStatus(bundle).catch(() => undefined);
      if (typeof st?.info.pid === "number") qemuPid = st.info.pid;
      else await sleep(50);
    }
  })();
  let text = "";
  const reader = stream.output.getReader();
  while (!text.includes(BOOT_MARKER)) {
    const r = await reader.read();
    if (r.done) throw new Error("cove run: console closed before the boot marker");
    text += new TextDecoder().decode(r.value);
  }
  const ms = performance.now() - t0;
  marked = true;
  const cpu = cpuSeconds(child.pid);
  const qemuCpu = qemuPid ? cpuSeconds(qemuPid) : undefined;
  await findQemu;
  stream.close();
  const st = await vmStatus(bundle);
  const argv = st.info.argv as string[];
  const rssKiB = peakRssKiB(child.pid);
  const [a, b] = [startSeconds(child.pid), startSeconds(st.info.pid as number)];
  const launch = a !== undefined && b !== undefined ? b - a : undefined;
  await stopVm(bundle, { force: true });
  await child.status;
  return { ms, rssKiB, cpu, qemuCpu, launch, argv };
}

/** One boot of the same QEMU command, run directly; returns ms and QEMU's CPU seconds to marker. */
async function direct(argv: string[]): Promise<{ ms: number; qemuCpu?: number }> {
  const consoleArg = argv.find((a) => a.startsWith("socket,id=cove-console,path="))!;
  const sock = /path=(.*?),server=on/.exec(consoleArg)![1].replaceAll(",,", ",");
  const runtime = sock.slice(0, sock.lastIndexOf("/"));
  await Deno.mkdir(runtime, { recursive: true, mode: 0o700 });
  const t0 = performance.now();
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    let conn: Deno.UnixConn | undefined;
    while (!conn) {
      try {
        conn = await Deno.connect({ transport: "unix", path: sock });
      } catch {
        if (performance.now() - t0 > TIMEOUT_MS) throw new Error("qemu: no console socket");
        await sleep(5);
      }
    }
    let text = "";
    const buf = new Uint8Array(65536);
    while (!text.includes(BOOT_MARKER)) {
      const n = await conn.read(buf);
      if (n === null) throw new Error("qemu: console closed before the boot marker");
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    const ms = performance.now() - t0;
    const qemuCpu = cpuSeconds(child.pid);
    conn.close();
    return { ms, qemuCpu };
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await Deno.remove(runtime, { recursive: true }).catch(() => {});
  }
}

async function main(): Promise<void> {
  const g = await ensureTinyGuest();
  const home = await Deno.makeTempDir({ prefix: "cove-bench-boot-" });
  const name = "bench";
  try {
    const create = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        CLI,
        ...tinyGuestCreateArgs(name, g),
      ],
      env: { COVE_HOME: home },
      cwd: ROOT,
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!create.success) throw new Error(new TextDecoder().decode(create.stderr));
    console.log(
      `boot to '${BOOT_MARKER}': cove run vs the same qemu command, ${RUNS} runs each, accel ${ACCEL}`,
    );
    console.log(
      "run  cove run (s)  qemu direct (s)  qemu CPU cove/direct (s)  supervisor RSS  supervisor CPU" +
        "  qemu launched after",
    );
    const coveMs: number[] = [];
    const directMs: number[] = [];
    const coveCpu: number[] = [];
    const directCpu: number[] = [];
    const rss: number[] = [];
    const launches: number[] = [];
    let argv: string[] = [];
    const fmt = (v: number | undefined, unit: string, width: number) =>
      (v === undefined ? "?" : `${v.toFixed(2)}${unit}`).padEnd(width);
    for (let i = 0; i < RUNS; i++) {
      // Alternate which goes first, so that load drifts hit both alike.
      let c: Awaited<ReturnType<typeof viaCove>>;
      let d: Awaited<ReturnType<typeof direct>>;
      if (i % 2 === 0 || argv.length === 0) {
        c = await viaCove(home, name);
        argv = c.argv;
        d = await direct(argv);
      } else {
        d = await direct(argv);
        c = await viaCove(home, name);
      }
      coveMs.push(c.ms);
      directMs.push(d.ms);
      if (c.qemuCpu !== undefined && d.qemuCpu !== undefined) {
        coveCpu.push(c.qemuCpu);
        directCpu.push(d.qemuCpu);
      }
      if (c.rssKiB) rss.push(c.rssKiB);
      if (c.launch !== undefined) launches.push(c.launch);
      console.log(
        String(i + 1).padEnd(5) + fmt(c.ms / 1000, "", 15) + fmt(d.ms / 1000, "", 17) +
          `${fmt(c.qemuCpu, "", 0)} / ${fmt(d.qemuCpu, "", 0)}`.padEnd(25) +
          fmt(c.rssKiB && c.rssKiB / 1024, " MiB", 16) + fmt(c.cpu, " s", 16) +
          fmt(c.launch, " s", 0),
      );
    }
    const ratio = median(coveMs) / median(directMs);
    const sec = (ms: number) => (ms / 1000).toFixed(2);
    console.log(
      `median boot to marker: cove run ${sec(median(coveMs))} s, qemu direct ${
        sec(median(directMs))
      } s, ` +
        `ratio ${ratio.toFixed(3)} (target <= 1.10: ${ratio <= 1.10 ? "met" : "NOT met"})`,
    );
    if (coveCpu.length) {
      const cr = median(coveCpu) / median(directCpu);
      console.log(
        `median qemu CPU to marker (less sensitive to other load): cove ${
          median(coveCpu).toFixed(2)
        } s, ` +
          `direct ${median(directCpu).toFixed(2)} s, ratio ${cr.toFixed(3)}`,
      );
    }
    if (launches.length) {
      console.log(`cove's fixed cost before qemu runs (median): ${median(launches).toFixed(2)} s`);
    }
    const peak = rss.length ? `${(Math.max(...rss) / 1024).toFixed(1)} MiB` : "unknown";
    console.log(`supervisor peak RSS: ${peak}`);
  } finally {
    await Deno.remove(home, { recursive: true }).catch(() => {});
  }
}

await main();
