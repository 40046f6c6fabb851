/**
 * Benchmark: cove's native qcow2 -> raw converter against
 * `qemu-img convert -O raw`, side by side on the same image.
 *
 * The image (built once, cached under tests/.cache/bench-qcow2/) is 3 GiB
 * virtual with about 1 GiB of guest data: 512 MiB of random (incompressible,
 * stored as plain clusters), 512 MiB of text (stored as compressed clusters),
 * zeroed ranges (zero clusters), pattern writes over compressed ranges and
 * unallocated gaps. Each tool runs as its own process under /usr/bin/time,
 * alternately, after one warm-up each and after a `sync` so neither pays for
 * the other's dirty pages; the output is checked byte for byte and for
 * allocated blocks.
 *
 * Usage: `deno run -A bench/qcow2/main.ts [--runs N] [--compression zlib|zstd] [--cluster-size N]`
 * @module
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const MiB = 1 << 20;
const GiB = 1 << 30;
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const cacheDir = join(root, "tests", ".cache", "bench-qcow2");

function arg(name: string, def: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : def;
}
const runs = Number(arg("runs", "5"));
const compression = arg("compression", "zlib");
const clusterSize = Number(arg("cluster-size", "65536"));

async function run(cmd: string, args: string[], quiet = true): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  if (!quiet) console.error(text);
  return text;
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}

/** A small xorshift PRNG: fast, deterministic filler for the text segments. */
function xorshift(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

const WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " +
  "incididunt ut labore et dolore magna aliqua kernel module driver block device cluster " +
  "image virtual machine network bridge console serial firmware partition table boot")
  .split(" ").map((w) => new TextEncoder().encode(w + " "));

function fillText(buf: Uint8Array, rnd: () => number): void {
  let p = 0;
  while (p < buf.length) {
    const w = WORDS[rnd() % WORDS.length];
    const n = Math.min(w.length, buf.length - p);
    buf.set(w.subarray(0, n), p);
    p += n;
    if ((rnd() & 15) === 0 && p < buf.length) buf[p++] = 10;
  }
}

function fillRandom(buf: Uint8Array): void {
  for (let p = 0; p < buf.length; p += 65536) crypto.getRandomValues(buf.subarray(p, p + 65536));
}

/** Builds the benchmark image if it is not cached yet; returns its path. */
async function buildImage(): Promise<string> {
  await Deno.mkdir(cacheDir, { recursive: true });
  const img = join(cacheDir, `bench-v2-${compression}-${clusterSize}.qcow2`);
  if (await exists(img)) return img;
  console.error(`building ${img} (once; cached)...`);
  const raw = join(cacheDir, "bench-src.raw");
  const f = await Deno.open(raw, { write: true, create: true, truncate: true });
  await f.truncate(3 * GiB);
  const piece = 16 * MiB;
  const buf = new Uint8Array(8 * MiB);
  const rnd = xorshift(42);
  // 192 slots of 16 MiB: 8 MiB random, 8 MiB text, nothing; repeated.
  for (let i = 0; i < 192; i++) {
    if (i % 3 === 2) continue;
    if (i % 3 === 0) fillRandom(buf);
    else fillText(buf, rnd);
    await f.seek(i * piece, Deno.SeekMode.Start);
    let off = 0;
    while (off < buf.length) off += await f.write(buf.subarray(off));
  }
  f.close();
  const tmp = `${img}.tmp`;
  await run("qemu-img", [
    "convert",
    "-c",
    "-f",
    "raw",
    "-O",
    "qcow2",
    "-o",
    `cluster_size=${clusterSize},compression_type=${compression}`,
    raw,
    tmp,
  ]);
  await Deno.remove(raw);
  // Zero clusters inside data, plain clusters over compressed ones, and discards.
  const io: string[] = [];
  for (let i = 0; i < 192; i += 7) {
    const base = i * piece;
    io.push("-c", `write -z ${base + 1 * MiB} ${2 * MiB}`);
    io.push("-c", `write -P ${(i % 250) + 1} ${base + 16 * MiB + 4 * MiB} ${1 * MiB}`);
    io.push("-c", `discard ${base + 5 * MiB} ${1 * MiB}`);
  }
  await run("qemu-io", [...io, "-f", "qcow2", tmp]);
  await Deno.rename(tmp, img);
  return img;
}

interface Sample {
  seconds: number;
  cpuSeconds: number;
  maxRssKiB: number;
}

async function timed(cmd: string, args: string[]): Promise<Sample> {
  await run("sync", []);
  const tf = await Deno.makeTempFile();
  try {
    await run("/usr/bin/time", ["-f", "%e %U %S %M", "-o", tf, cmd, ...args]);
    const [e, u, s, m] = (await Deno.readTextFile(tf)).trim().split(/\s+/).map(Number);
    return { seconds: e, cpuSeconds: u + s, maxRssKiB: m };
  } finally {
    await Deno.remove(tf);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const img = await buildImage();
const qemuOut = join(cacheDir, "out-qemu.raw");
const coveOut = join(cacheDir, "out-cove.raw");
const deno = Deno.execPath();
const coveArgs = ["run", "-A", "--quiet", join(root, "bench", "qcow2", "convert.ts"), img, coveOut];
const qemuArgs = ["convert", "-O", "raw", img, qemuOut];

const info = await run("qemu-img", ["info", img]);
console.log(`image: ${img}`);
console.log(
  info.split("\n").filter((l) => /virtual size|disk size|cluster_size|compression/.test(l)).join(
    "\n",
  ),
);

// Warm-up (page cache, Deno's module cache), not timed.
await Deno.remove(qemuOut).catch(() => {});
await Deno.remove(coveOut).catch(() => {});
await timed("qemu-img", qemuArgs);
await timed(deno, coveArgs);

// Correctness: identical bytes, no more allocated blocks.
const same = await new Deno.Command("cmp", { args: [qemuOut, coveOut] }).output();
const qb = (await Deno.stat(qemuOut)).blocks ?? 0;
const cb = (await Deno.stat(coveOut)).blocks ?? 0;
console.log(
  `output identical: ${
    same.success ? "yes" : "NO"
  }; allocated 512-byte blocks qemu-img ${qb}, cove ${cb}`,
);

const q: Sample[] = [];
const c: Sample[] = [];
const runQemu = async () => {
  await Deno.remove(qemuOut).catch(() => {});
  q.push(await timed("qemu-img", qemuArgs));
};
const runCove = async () => {
  await Deno.remove(coveOut).catch(() => {});
  c.push(await timed(deno, coveArgs));
};
for (let i = 0; i < runs; i++) {
  // Alternate who goes first, so neither always inherits the other's page cache state.
  if (i % 2 === 0) {
    await runQemu();
    await runCove();
  } else {
    await runCove();
    await runQemu();
  }
  const [qs, cs] = [q[i], c[i]];
  console.log(
    `run ${i + 1}: qemu-img ${qs.seconds.toFixed(2)}s (cpu ${qs.cpuSeconds.toFixed(2)}s)  ` +
      `cove ${cs.seconds.toFixed(2)}s (cpu ${cs.cpuSeconds.toFixed(2)}s)`,
  );
}
await Deno.remove(qemuOut).catch(() => {});
await Deno.remove(coveOut).catch(() => {});

const qm = median(q.map((s) => s.seconds));
const cm = median(c.map((s) => s.seconds));
const qcpu = median(q.map((s) => s.cpuSeconds));
const ccpu = median(c.map((s) => s.cpuSeconds));
console.log(`median wall: qemu-img ${qm.toFixed(2)}s, cove ${cm.toFixed(2)}s`);
console.log(`median cpu (user+sys): qemu-img ${qcpu.toFixed(2)}s, cove ${ccpu.toFixed(2)}s`);
console.log(`ratio cove/qemu-img (median wall): ${(cm / qm).toFixed(2)} (target <= 1.0)`);
console.log(
  `peak RSS: cove ${(Math.max(...c.map((s) => s.maxRssKiB)) / 1024).toFixed(0)} MiB, ` +
    `qemu-img ${(Math.max(...q.map((s) => s.maxRssKiB)) / 1024).toFixed(0)} MiB`,
);
if (!same.success || cb > qb) Deno.exit(1);
