/**
 * Benchmark: cove's cost per command, against bare `deno eval 0` in the
 * same run (issue 16's targets): `cove --version` and `cove help` at most
 * 2x; `cove complete -- ''` and `cove complete -- get ''` (what TAB presses
 * run; the second lists VM names) at most 2.5x with 100 VMs; `cove list`
 * and `cove list --format json` at most 3x with 100 VMs (stopped, a few
 * running), growing by at most 0.3 ms per VM from 100 to 1,000 VMs; `cove
 * get NAME` at most 2.5x.
 *
 * Each command is a process of its own, started the way users start cove
 * from source (`deno run -A cli/main.ts`, with the project's deno.json), in
 * a temporary COVE_HOME. The VMs are written straight through the library
 * (a bundle each: spec and its summary, machine identity, a sparse disk),
 * not by a thousand `cove create` processes; `--running N` of them (default
 * 3) are held by processes that take the bundle lock the way a supervisor
 * does (tests/unit/fixtures/hold_lock.ts), so they list as running (starting:
 * no control socket answers). The store holds each size of `--sizes`
 * (default 100,1000) in turn; at each size the commands run alternately
 * with the baseline, after one warm-up each, so a busy machine slows them
 * alike; the medians and ratios are printed, with whether each target is
 * met. `--binary PATH` times a compiled cove too; `--compare DIR` times
 * another source tree of cove (e.g. an older commit, unpacked with `git
 * archive`) in the same run.
 *
 * Usage: `deno run -A bench/cli/main.ts [--runs N] [--sizes 100,1000] [--running N]
 *   [--binary PATH] [--compare DIR]`
 * @module
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

function arg(name: string, def: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : def;
}
const runs = Number(arg("runs", "9"));
const sizes = arg("sizes", "100,1000").split(",").map(Number);
const running = Number(arg("running", "3"));
const binary = arg("binary", "");
const compare = arg("compare", "");
if (
  !Number.isInteger(runs) || runs < 1 || !sizes.every((n) => Number.isInteger(n) && n >= 0) ||
  !Number.isInteger(running) || running < 0
) {
  console.error(
    "usage: bench/cli/main.ts [--runs N>=1] [--sizes N,N...] [--running N] [--binary PATH] [--compare DIR]",
  );
  Deno.exit(2);
}
sizes.sort((a, b) => a - b);

/** The per-VM growth of `cove list` the issue allows, from 100 to 1,000 VMs. */
const GROWTH_MS_PER_VM = 0.3;

interface Case {
  label: string;
  cmd: string;
  args: string[];
  /** The largest ratio to the baseline the issue allows, if it sets one. */
  target?: number;
  /** Only with the store of the smallest size (it does not depend on VMs). */
  once?: boolean;
}

const deno = Deno.execPath();
const sourceArgs = (tree: string) => [
  "run",
  "-A",
  "--quiet",
  "--config",
  join(tree, "deno.json"),
  join(tree, "cli", "main.ts"),
];
const fromSource = sourceArgs(root);
/** A VM that exists at every size (the first one written). */
const probeVm = vmName(0);

/** [label, args, target at 100 VMs, independent of the number of VMs] */
const commands: [string, string[], number | undefined, boolean][] = [
  ["--version", ["--version"], 2, true],
  ["help", ["help"], 2, true],
  ["complete -- ''", ["complete", "--", ""], 2.5, true],
  ["complete -- get ''", ["complete", "--", "get", ""], 2.5, false],
  ["list", ["list"], 3, false],
  ["list --format json", ["list", "--format", "json"], 3, false],
  [`get ${probeVm}`, ["get", probeVm], 2.5, false],
];

const cases: Case[] = [{ label: "deno eval 0 (baseline)", cmd: deno, args: ["eval", "0"] }];
cases.push({
  label: "commander alone (a floor)",
  cmd: deno,
  args: [...fromSource.slice(0, -1), join(root, "bench", "cli", "commander_floor.ts")],
  once: true,
});
for (const [label, args, target, once] of commands) {
  cases.push({ label: `cove ${label}`, cmd: deno, args: [...fromSource, ...args], target, once });
}
if (compare) {
  const other = sourceArgs(compare);
  for (const [label, args, , once] of commands) {
    cases.push({ label: `compared ${label}`, cmd: deno, args: [...other, ...args], once });
  }
}
if (binary) {
  for (const [label, args, target, once] of commands) {
    cases.push({ label: `binary ${label}`, cmd: binary, args, target, once });
  }
}

function vmName(i: number): string {
  return `vm${String(i).padStart(4, "0")}`;
}

const home = await Deno.makeTempDir({ prefix: "cove-bench-cli-" });
const env = { COVE_HOME: home, NO_COLOR: "1" };

async function once(c: Case): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(c.cmd, {
    args: c.args,
    env,
    cwd: home,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t0;
  if (!out.success) {
    throw new Error(`${c.label} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return ms;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const { Bundle, Store, applyDefaults, detectHost, parseSpec, randomMac } = await import(
  "../../mod.ts"
);
const store = new Store(home);
await store.ensure();
const template = await parseSpec("disks: [{ path: disk.img, size: 1MiB }]\n");

/** Writes VMs `from` to `to - 1` as `cove create` leaves them, without its store-wide sweep. */
async function writeVms(from: number, to: number): Promise<void> {
  for (let i = from; i < to; i++) {
    const name = vmName(i);
    const dir = join(store.vmsDir, name);
    await Deno.mkdir(dir, { mode: 0o700 });
    const b = new Bundle(name, dir);
    const spec = applyDefaults(structuredClone(template), detectHost(), name);
    spec.networks = spec.networks.map((n) => ({ ...n, mac: randomMac() }));
    await b.writeMachine({ uuid: crypto.randomUUID(), created: new Date().toISOString() });
    const disk = await Deno.open(join(dir, spec.disks[0].path), {
      write: true,
      createNew: true,
      mode: 0o600,
    });
    await disk.truncate(1 << 20);
    disk.close();
    await b.writeSpec(spec);
  }
}

/** Holds the lock of VM `i` as its supervisor would, until killed. */
async function holdLock(i: number): Promise<Deno.ChildProcess> {
  const script = join(root, "tests", "unit", "fixtures", "hold_lock.ts");
  const child = new Deno.Command(deno, {
    args: ["run", "-A", "--quiet", script, store.bundle(vmName(i)).lockPath, "run"],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("locked")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`hold_lock exited: ${seen}`);
    seen += value;
  }
  reader.releaseLock();
  return child;
}

const holders: Deno.ChildProcess[] = [];
/** Median per case label, per size. */
const results = new Map<number, Map<string, number>>();
let allMet = true;
const verdicts: string[] = [];
try {
  let have = 0;
  for (const [k, size] of sizes.entries()) {
    console.error(`writing VMs ${have} to ${size - 1} in ${home} ...`);
    await writeVms(have, size);
    have = size;
    while (holders.length < Math.min(running, size)) holders.push(await holdLock(holders.length));
    const here = cases.filter((c) => k === 0 || !c.once);
    for (const c of here) await once(c); // warm-up: module cache, page cache
    const times = new Map<Case, number[]>(here.map((c) => [c, []]));
    for (let r = 0; r < runs; r++) {
      for (const c of here) times.get(c)!.push(await once(c));
    }
    const base = median(times.get(here[0])!);
    const medians = new Map<string, number>();
    console.log("");
    console.log(
      `${size} VMs (${
        Math.min(running, size)
      } running), ${runs} runs each, alternately, ${Deno.build.os}/${Deno.build.arch}, load average ${loadAverage()}`,
    );
    console.log(`${"command".padEnd(30)}  ${"median".padStart(9)}  ${"ratio".padStart(6)}  target`);
    for (const c of here) {
      const m = median(times.get(c)!);
      medians.set(c.label, m);
      const ratio = m / base;
      let verdict = "";
      // The ratio targets are set at 100 VMs; `get NAME` and what does not list hold at any size.
      if (c.target !== undefined && (size === 100 || c.once || / get vm/.test(c.label))) {
        const met = ratio <= c.target;
        allMet &&= met;
        verdict = `<= ${c.target}x: ${met ? "met" : "NOT met"}`;
        verdicts.push(`${c.label} (${size} VMs) ${verdict}`);
      }
      console.log(
        `${c.label.padEnd(30)}  ${(m / 1000).toFixed(3).padStart(7)} s  ${
          ratio.toFixed(2).padStart(5)
        }x  ${verdict}`,
      );
    }
    results.set(size, medians);
  }
  const lo = results.get(100), hi = results.get(1000);
  if (lo && hi) {
    console.log("");
    for (const label of ["cove list", "cove list --format json", "cove complete -- get ''"]) {
      // Each size's time beyond its own baseline, so a change of load between the sizes cancels out.
      const base = cases[0].label;
      const growth = ((hi.get(label)! - hi.get(base)!) - (lo.get(label)! - lo.get(base)!)) / 900;
      const isList = label.startsWith("cove list");
      const met = growth <= GROWTH_MS_PER_VM;
      if (isList) allMet &&= met;
      const verdict = isList ? `<= ${GROWTH_MS_PER_VM} ms/VM: ${met ? "met" : "NOT met"}` : "";
      if (isList) verdicts.push(`${label} growth ${verdict}`);
      console.log(
        `${label.padEnd(30)}  grows ${growth.toFixed(3)} ms per VM from 100 to 1,000  ${verdict}`,
      );
    }
  }
  console.log("");
  if (compare) console.log(`"compared" rows: the tree in ${compare}`);
  for (const v of verdicts) console.log(v);
  console.log(allMet ? "all targets met" : "some targets are not met");
} finally {
  for (const c of holders) {
    c.kill("SIGKILL");
    await c.status;
    await c.stdout.cancel().catch(() => {});
  }
  await Deno.remove(home, { recursive: true }).catch(() => {});
}

function loadAverage(): string {
  try {
    return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
  } catch {
    return "unknown";
  }
}
