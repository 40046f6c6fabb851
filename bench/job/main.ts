/**
 * Job benchmark: the time from launching `cove job run --from BASE -- echo
 * first` to the first byte of the job's output, against doing the same by
 * hand for the same guest: `cove clone BASE NEW`, `cove start NEW`, then
 * `cove ssh NEW --wait ... -- echo first` (each side boots a fresh clone,
 * so cloud-init runs on both), alternating, in one run. Prints both medians
 * and their ratio (goal: at most 1.05), and the job record's phase times.
 *
 * The guest is the Debian cloud guest of the tests
 * (tests/fixtures/debian_cloud_guest.ts; needs root and debootstrap the
 * first time). Run: `deno run -A bench/job/main.ts [--runs N]` (Linux; QEMU
 * under TCG unless COVE_QEMU_ACCEL says otherwise).
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createFlags, ensureDebianCloudGuest } from "../../tests/fixtures/debian_cloud_guest.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CLI = join(ROOT, "cli", "main.ts");
const runsArg = Deno.args.indexOf("--runs");
const RUNS = runsArg >= 0 ? Number(Deno.args[runsArg + 1]) : 1;
const ACCEL = Deno.env.get("COVE_QEMU_ACCEL") || "tcg";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function spawn(home: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, ...args],
    env: { COVE_HOME: home, COVE_QEMU_ACCEL: ACCEL, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function run(home: string, args: string[]): Promise<string> {
  const out = await spawn(home, args).output();
  if (!out.success) {
    throw new Error(`cove ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** Milliseconds from `t0` until the child's first stdout byte; then waits for its end. */
async function firstByte(
  child: Deno.ChildProcess,
  t0: number,
): Promise<{ ms: number; out: string }> {
  let ms = -1;
  let out = "";
  const dec = new TextDecoder();
  for await (const c of child.stdout) {
    if (ms < 0) ms = performance.now() - t0;
    out += dec.decode(c, { stream: true });
  }
  const err = await new Response(child.stderr).text();
  const st = await child.status;
  if (!st.success || ms < 0) throw new Error(`exit ${st.code}: ${err}`);
  return { ms, out };
}

const g = await ensureDebianCloudGuest();
const home = await Deno.makeTempDir({ prefix: "cove-bench-job-" });
try {
  const config = join(home, "vm.yaml");
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      engine: "qemu",
      cpus: 1,
      memory: "1GiB",
      disks: [{ path: "disk.img", size: "4GiB" }],
      networks: [{ mode: "user" }],
    }),
  );
  await run(home, [
    "create",
    "base",
    "--config",
    config,
    ...createFlags(g),
  ]);
  const job: number[] = [];
  const hand: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    let t0 = performance.now();
    const j = await firstByte(
      spawn(home, ["job", "run", "--from", "base", "--format", "json", "--", "echo", "first"]),
      t0,
    );
    job.push(j.ms);
    const rec = JSON.parse(j.out.trim().split("\n").at(-1)!);
    console.log(
      `job run ${i + 1}: first byte after ${Math.round(j.ms)} ms; phases ${
        JSON.stringify(rec.times)
      }`,
    );

    const name = `hand-${i}`;
    t0 = performance.now();
    await run(home, ["clone", "base", name]);
    await run(home, ["start", name, "--no-graphics"]);
    const h = await firstByte(
      spawn(home, ["ssh", name, "--wait", "20m", "--", "echo", "first"]),
      t0,
    );
    hand.push(h.ms);
    console.log(`by hand ${i + 1}: first byte after ${Math.round(h.ms)} ms`);
    await run(home, ["delete", name, "--force"]);
  }
  const a = median(job);
  const b = median(hand);
  console.log(
    `median time to the job's first byte: cove job run ${
      Math.round(a)
    } ms, clone + start + ssh by hand ${Math.round(b)} ms; ratio ${
      (a / b).toFixed(3)
    } (goal <= 1.05), ${RUNS} run(s), accel ${ACCEL}`,
  );
} finally {
  await Deno.remove(home, { recursive: true }).catch(() => {});
}
