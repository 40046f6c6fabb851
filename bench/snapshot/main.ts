/**
 * Snapshot benchmark, for the tiny guest with 512 MiB of memory, in one run:
 *
 * - save: `saveSnapshot` (the library call behind `cove snapshot save`:
 *   control socket, free-space check, pause, QMP migrate to a file, disk
 *   copy, resume, record) against the same QMP sequence run directly on the
 *   same QEMU command (stop, migrate to a file, copy the disk, cont); also
 *   the guest's paused time on both sides, and cove's paused time against
 *   its own state write (goal: at most the state write plus 100 ms);
 * - restore: `restoreSnapshot` of a stopped VM until it runs again (disk
 *   copy, supervisor start, QEMU `-incoming`, cont) against QEMU's own
 *   `-incoming` start of the same command and state file until `cont`.
 *
 * Runs alternate between the two sides; medians and ratios are printed
 * (goal <= 1.10). One `cove snapshot save` through the CLI process is timed
 * as well, to show what Deno's start-up adds.
 *
 * Run: `deno run -A bench/snapshot/main.ts [--runs N]` (Linux; TCG unless
 * COVE_QEMU_ACCEL says otherwise).
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  ensureTinyGuest,
  READY_MARKER,
  tinyGuestCreateArgs,
} from "../../tests/fixtures/tinyguest.ts";
import {
  removeVmSnapshots,
  restoreSnapshot,
  saveSnapshot,
  startDetached,
  stopVm,
  Store,
  vmStatus,
} from "../../mod.ts";
import { Qmp } from "../../engines/qemu/qmp.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CLI = join(ROOT, "cli", "main.ts");
const runsArg = Deno.args.indexOf("--runs");
const RUNS = runsArg >= 0 ? Number(Deno.args[runsArg + 1]) : 5;
const ACCEL = Deno.env.get("COVE_QEMU_ACCEL") || "tcg";
Deno.env.set("COVE_QEMU_ACCEL", ACCEL);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitForFile(path: string, text: string, timeoutMs = 180_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const t = await Deno.readTextFile(path).catch(() => "");
    if (t.includes(text)) return;
    await sleep(100);
  }
  throw new Error(`'${text}' did not appear in ${path}`);
}

/** The same QEMU command as cove's, in its own runtime directory, with an extra argument list. */
function directArgv(argv: string[], runtime: string, extra: string[]): {
  argv: string[];
  qmp: string;
  console: string;
} {
  const qmp = join(runtime, "qmp.sock");
  const cons = join(runtime, "console.sock");
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const prev = argv[i - 1];
    if (prev === "-qmp") out.push(`unix:${qmp},server=on,wait=off`);
    else if (prev === "-pidfile") out.push(join(runtime, "qemu.pid"));
    else if (a.startsWith("socket,id=cove-console,path=")) {
      out.push(`socket,id=cove-console,path=${cons},server=on,wait=on`);
    } // cove's QEMU holds the forwarded host ports: the direct one goes without them.
    else out.push(a.replace(/,hostfwd=[^,]+/g, ""));
  }
  return { argv: [...out, ...extra], qmp, console: cons };
}

/** A directly launched QEMU with its console drained and a QMP session. */
interface Direct {
  child: Deno.ChildProcess;
  qmp: Qmp;
  text: () => string;
  close(): Promise<void>;
}

async function launchDirect(argv: string[], runtime: string, extra: string[]): Promise<Direct> {
  await Deno.mkdir(runtime, { recursive: true, mode: 0o700 });
  const d = directArgv(argv, runtime, extra);
  const child = new Deno.Command(d.argv[0], {
    args: d.argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let errText = "";
  void (async () => {
    for await (const c of child.stderr) errText += new TextDecoder().decode(c);
  })().catch(() => {});
  let conn: Deno.UnixConn | undefined;
  const t0 = Date.now();
  while (!conn) {
    try {
      conn = await Deno.connect({ transport: "unix", path: d.console });
    } catch {
      if (Date.now() - t0 > 60_000) throw new Error(`qemu: no console: ${errText.trim()}`);
      await sleep(2);
    }
  }
  let text = "";
  const c = conn;
  void (async () => {
    const buf = new Uint8Array(65536);
    try {
      while (true) {
        const n = await c.read(buf);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
    } catch { /* closed */ }
  })();
  let qmp: Qmp | undefined;
  while (!qmp) {
    try {
      qmp = await Qmp.connect(d.qmp, 10_000);
    } catch {
      if (Date.now() - t0 > 60_000) throw new Error(`qemu: no QMP: ${errText.trim()}`);
      await sleep(2);
    }
  }
  return {
    child,
    qmp,
    text: () => text,
    async close() {
      qmp!.close();
      try {
        c.close();
      } catch { /* closed */ }
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
      await Deno.remove(runtime, { recursive: true }).catch(() => {});
    },
  };
}

/** Polls QMP until `done` says so. */
async function pollUntil(qmp: Qmp, cmd: string, done: (r: Record<string, unknown>) => boolean) {
  while (true) {
    const r = await qmp.execute<Record<string, unknown>>(cmd, undefined, 10_000);
    if (r.status === "failed") throw new Error(`${cmd}: ${JSON.stringify(r)}`);
    if (done(r)) return;
    await sleep(2);
  }
}

async function cp(src: string, dst: string): Promise<void> {
  const r = await new Deno.Command("cp", { args: ["--reflink=auto", "--sparse=always", src, dst] })
    .output();
  if (!r.success) throw new Error("cp failed");
}

async function main(): Promise<void> {
  const g = await ensureTinyGuest();
  const home = await Deno.makeTempDir({ prefix: "cove-bench-snap-" });
  Deno.env.set("COVE_HOME", home);
  const store = new Store(home);
  const name = "bench";
  const work = join(home, "direct");
  await Deno.mkdir(work, { mode: 0o700 });
  try {
    const create = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", CLI, ...tinyGuestCreateArgs(name, g)],
      env: { COVE_HOME: home },
      cwd: ROOT,
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!create.success) throw new Error(new TextDecoder().decode(create.stderr));
    const bundle = await store.get(name);
    const disk = join(bundle.dir, "disk.img");
    await startDetached(store, name);
    await waitForFile(bundle.consoleLog, READY_MARKER);
    const argv = (await vmStatus(bundle)).info.argv as string[];

    // The direct side boots its own QEMU of the same command (on a copy of the disk: QEMU locks images).
    const directDisk = join(work, "disk.img");
    await cp(disk, directDisk);
    const dargv = argv.map((a) => a.replace(`file=${disk}`, `file=${directDisk}`));
    const direct = await launchDirect(dargv, join(work, "run"), []);
    while (!direct.text().includes(READY_MARKER)) await sleep(100);

    console.log(
      `snapshot save/restore, tiny guest with 512 MiB, accel ${ACCEL}, ${RUNS} runs each side, alternating`,
    );
    const cove = {
      save: [] as number[],
      paused: [] as number[],
      state: [] as number[],
      inside: [] as number[],
    };
    const dir = { save: [] as number[], paused: [] as number[], state: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      const t0 = performance.now();
      const r = await saveSnapshot(store, name, { tag: `b${i}` });
      cove.save.push(performance.now() - t0);
      cove.paused.push(r.pausedMs);
      cove.state.push(r.stateMs);
      cove.inside.push(r.totalMs);

      const file = join(work, `d${i}.state`);
      const t1 = performance.now();
      await direct.qmp.execute("stop");
      const tp = performance.now();
      await direct.qmp.execute("migrate-set-parameters", { "max-bandwidth": 2 ** 40 });
      await direct.qmp.execute("migrate", { uri: `exec:cat > '${file}'` });
      await pollUntil(direct.qmp, "query-migrate", (m) => m.status === "completed");
      const ts = performance.now();
      await cp(directDisk, join(work, `d${i}.img`));
      await direct.qmp.execute("cont");
      const t2 = performance.now();
      dir.save.push(t2 - t1);
      dir.paused.push(t2 - tp);
      dir.state.push(ts - tp);
      console.log(
        `save ${i + 1}: cove ${cove.save[i].toFixed(0)} ms (paused ${
          cove.paused[i].toFixed(0)
        }, state ${cove.state[i].toFixed(0)}, in the supervisor ${
          cove.inside[i].toFixed(0)
        }), direct ${dir.save[i].toFixed(0)} ms (paused ${dir.paused[i].toFixed(0)}, state ${
          dir.state[i].toFixed(0)
        })`,
      );
      if (i < RUNS - 1) await Deno.remove(join(work, `d${i}.img`));
    }
    // Once through the CLI process, for what Deno's start-up adds.
    const tc = performance.now();
    const cli = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", CLI, "snapshot", "save", name, "cli"],
      env: { COVE_HOME: home, COVE_QEMU_ACCEL: ACCEL },
      cwd: ROOT,
      stdout: "null",
      stderr: "null",
    }).output();
    const cliMs = performance.now() - tc;
    if (!cli.success) throw new Error("cove snapshot save failed");
    await direct.close();

    // Restore: cove from a stopped VM until it runs; QEMU's own -incoming start until cont.
    const lastState = join(work, `d${RUNS - 1}.state`);
    const rest = { cove: [] as number[], direct: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      if (await bundle.isRunning()) await stopVm(bundle, { force: true });
      const t0 = performance.now();
      await restoreSnapshot(store, name, `b${RUNS - 1}`);
      rest.cove.push(performance.now() - t0);

      const t1 = performance.now();
      const d = await launchDirect(dargv, join(work, "run"), ["-incoming", "defer"]);
      await d.qmp.execute("migrate-incoming", { uri: `exec:cat '${lastState}'` });
      await pollUntil(d.qmp, "query-status", (s) => s.status !== "inmigrate");
      await d.qmp.execute("cont");
      rest.direct.push(performance.now() - t1);
      await d.close();
      console.log(
        `restore ${i + 1}: cove ${rest.cove[i].toFixed(0)} ms, qemu -incoming ${
          rest.direct[i].toFixed(0)
        } ms`,
      );
    }
    await stopVm(bundle, { force: true });
    await removeVmSnapshots(store, name, [...Array(RUNS).keys()].map((i) => `b${i}`));

    const m = (xs: number[]) => median(xs);
    console.log("");
    console.log(
      `save (median):     cove ${m(cove.save).toFixed(0)} ms, direct ${
        m(dir.save).toFixed(0)
      } ms, ratio ${(m(cove.save) / m(dir.save)).toFixed(2)} (goal <= 1.10)`,
    );
    console.log(
      `paused (median):   cove ${m(cove.paused).toFixed(0)} ms, direct ${
        m(dir.paused).toFixed(0)
      } ms, ratio ${(m(cove.paused) / m(dir.paused)).toFixed(2)} (goal <= 1.10)`,
    );
    const over = median(cove.paused.map((p, i) => p - cove.state[i]));
    console.log(
      `paused - state write (median): ${over.toFixed(0)} ms (goal <= 100 ms; state write ${
        m(cove.state).toFixed(0)
      } ms)`,
    );
    console.log(
      `restore (median):  cove ${m(rest.cove).toFixed(0)} ms, qemu -incoming ${
        m(rest.direct).toFixed(0)
      } ms, ratio ${(m(rest.cove) / m(rest.direct)).toFixed(2)} (goal <= 1.10)`,
    );
    const lo = (xs: number[]) => Math.min(...xs).toFixed(0);
    console.log(
      `best runs:         save cove ${lo(cove.save)} / direct ${lo(dir.save)} ms, paused cove ${
        lo(cove.paused)
      } / direct ${lo(dir.paused)} ms, restore cove ${lo(rest.cove)} / qemu ${lo(rest.direct)} ms`,
    );
    console.log(`one 'cove snapshot save' through the CLI process: ${cliMs.toFixed(0)} ms`);
  } finally {
    const b = store.bundle(name);
    if (await b.isRunning().catch(() => false)) await stopVm(b, { force: true }).catch(() => {});
    await Deno.remove(home, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await main();
