/**
 * Benchmark: cove's fixed cost per command, against bare `deno eval 0` in
 * the same run (issue 16's targets): `cove --version` and `cove help` at
 * most 2x, `cove complete -- ''` and `cove complete -- get ''` (what TAB
 * presses run; the second lists VM names) at most 2.5x.
 *
 * Each command is a process of its own, started the way users start cove
 * from source (`deno run -A cli/main.ts`, with the project's deno.json), in
 * a temporary COVE_HOME holding `--vms N` stopped VMs (default 100). The
 * commands run alternately with the baseline, after one warm-up each, so a
 * busy machine slows them alike; the medians and ratios are printed, with
 * whether each target is met. `--binary PATH` times a compiled cove too;
 * `--compare DIR` times another source tree of cove (e.g. an older commit,
 * unpacked with `git archive`) in the same run.
 *
 * Usage: `deno run -A bench/cli/main.ts [--runs N] [--vms N] [--binary PATH] [--compare DIR]`
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
const vms = Number(arg("vms", "100"));
const binary = arg("binary", "");
const compare = arg("compare", "");
if (!Number.isInteger(runs) || runs < 1 || !Number.isInteger(vms) || vms < 0) {
  console.error("usage: bench/cli/main.ts [--runs N>=1] [--vms N>=0] [--binary PATH]");
  Deno.exit(2);
}

interface Case {
  label: string;
  cmd: string;
  args: string[];
  /** The largest ratio to the baseline the issue allows, if it sets one. */
  target?: number;
}

const deno = Deno.execPath();
const fromSource = [
  "run",
  "-A",
  "--quiet",
  "--config",
  join(root, "deno.json"),
  join(root, "cli", "main.ts"),
];
const commands: [string, string[], number][] = [
  ["--version", ["--version"], 2],
  ["help", ["help"], 2],
  ["complete -- ''", ["complete", "--", ""], 2.5],
  ["complete -- get ''", ["complete", "--", "get", ""], 2.5],
];

const cases: Case[] = [{ label: "deno eval 0 (baseline)", cmd: deno, args: ["eval", "0"] }];
cases.push({
  label: "commander alone (a floor)",
  cmd: deno,
  args: [...fromSource.slice(0, -1), join(root, "bench", "cli", "commander_floor.ts")],
});
for (const [label, args, target] of commands) {
  cases.push({ label: `cove ${label}`, cmd: deno, args: [...fromSource, ...args], target });
}
if (compare) {
  const other = [
    "run",
    "-A",
    "--quiet",
    "--config",
    join(compare, "deno.json"),
    join(compare, "cli", "main.ts"),
  ];
  for (const [label, args] of commands) {
    cases.push({ label: `compared ${label}`, cmd: deno, args: [...other, ...args] });
  }
}
if (binary) {
  for (const [label, args, target] of commands) {
    cases.push({ label: `binary ${label}`, cmd: binary, args, target });
  }
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

try {
  if (vms > 0) {
    console.error(`creating ${vms} VMs in ${home} ...`);
    const { createVm, Store } = await import("../../mod.ts");
    const store = new Store(home);
    for (let i = 0; i < vms; i++) {
      await createVm(store, `vm${String(i).padStart(4, "0")}`, { diskSize: "1MiB" });
    }
  }
  for (const c of cases) await once(c); // warm-up: module cache, page cache
  const times = new Map<Case, number[]>(cases.map((c) => [c, []]));
  for (let r = 0; r < runs; r++) {
    for (const c of cases) times.get(c)!.push(await once(c));
  }
  const base = median(times.get(cases[0])!);
  console.log(
    `cove CLI fixed cost: ${runs} runs each, alternately, COVE_HOME with ${vms} VMs, ${Deno.build.os}/${Deno.build.arch}`,
  );
  console.log("");
  console.log(`${"command".padEnd(30)}  ${"median".padStart(9)}  ${"ratio".padStart(6)}  target`);
  let allMet = true;
  for (const c of cases) {
    const m = median(times.get(c)!);
    const ratio = m / base;
    let verdict = "";
    if (c.target !== undefined) {
      const met = ratio <= c.target;
      allMet &&= met;
      verdict = `<= ${c.target}x: ${met ? "met" : "NOT met"}`;
    }
    console.log(
      `${c.label.padEnd(30)}  ${(m / 1000).toFixed(3).padStart(7)} s  ${
        ratio.toFixed(2).padStart(5)
      }x  ${verdict}`,
    );
  }
  console.log("");
  if (compare) console.log(`"compared" rows: the tree in ${compare}`);
  console.log(allMet ? "all targets met" : "some targets are not met");
} finally {
  await Deno.remove(home, { recursive: true }).catch(() => {});
}
