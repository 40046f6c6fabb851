/**
 * Benchmark: `cove pull` / `cove push` against skopeo on the same image,
 * side by side, on a loopback docker-registry (Debian's distribution
 * registry). The VM disk is 2 GiB, half random data and half zeros (in
 * alternating 64 MiB runs). skopeo only moves the compressed blobs; cove
 * also compresses (push) or decompresses and writes a sparse disk (pull).
 *
 * - push: `cove push` into a fresh registry vs `skopeo copy dir: docker://`
 *   of the same image (its blobs, as skopeo pulled them) into another fresh one;
 * - pull: `cove pull` (empty cache) vs `skopeo copy docker:// dir:`.
 *
 * Each side runs `--rounds` times (default 2); the best time counts. Prints
 * times, ratios (cove / skopeo; the target is at most 1.0) and cove's peak
 * RSS (VmHWM, polled from /proc). Run: `deno run -A bench/oci/main.ts [--size 2GiB]`.
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { formatSize, parseSize } from "../../core/units.ts";
import { startRegistry, type TestRegistry } from "../../tests/helpers/oci_registry.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CLI = join(ROOT, "cli", "main.ts");

function arg(name: string, dflt: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 && Deno.args[i + 1] ? Deno.args[i + 1] : dflt;
}

const SIZE = parseSize(arg("size", "2GiB"));
const ROUNDS = Number(arg("rounds", "2"));
const SEGMENT = 64 * 1024 * 1024;

interface Run {
  seconds: number;
  peakRss?: number;
}

/** Runs a command, timing it and polling its peak RSS. */
async function run(bin: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  const t0 = performance.now();
  const child = new Deno.Command(bin, { args, env, stdout: "piped", stderr: "piped" }).spawn();
  let peak = 0;
  const poll = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${child.pid}/status`));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch { /* exited */ }
  }, 25);
  const out = await child.output();
  clearInterval(poll);
  const seconds = (performance.now() - t0) / 1000;
  if (!out.success) {
    throw new Error(`${bin} ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return { seconds, peakRss: peak || undefined };
}

/** Writes the disk: alternating 64 MiB runs of random bytes and holes. */
async function writeDisk(path: string, size: number): Promise<void> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const buf = new Uint8Array(SEGMENT);
  try {
    for (let off = 0, i = 0; off < size; off += SEGMENT, i++) {
      if (i % 2 === 1) continue; // zeros: a hole
      const n = Math.min(SEGMENT, size - off);
      for (let p = 0; p < n; p += 65536) {
        crypto.getRandomValues(buf.subarray(p, Math.min(p + 65536, n)));
      }
      await f.seek(off, Deno.SeekMode.Start);
      let w = 0;
      while (w < n) w += await f.write(buf.subarray(w, n));
    }
    await f.truncate(size);
  } finally {
    f.close();
  }
}

function cove(home: string, args: string[]): Promise<Run> {
  return run(Deno.execPath(), ["run", "-A", "--quiet", CLI, ...args], {
    COVE_HOME: home,
    DOCKER_CONFIG: join(home, "no-docker"),
  });
}

/** skopeo with its own HOME, so its blob-location cache never lets it skip uploads by mounting. */
async function skopeo(work: string, args: string[]): Promise<Run> {
  const home = await Deno.makeTempDir({ dir: work, prefix: "skopeo-home-" });
  return run("skopeo", args, {
    HOME: home,
    XDG_DATA_HOME: join(home, ".local"),
    XDG_CONFIG_HOME: join(home, ".config"),
  });
}

function fmt(r: Run): string {
  return `${r.seconds.toFixed(2)}s`;
}

function fmtRss(r: Run): string {
  return r.peakRss ? ` (${formatSize(r.peakRss)})` : "";
}

function best(runs: Run[]): Run {
  return runs.reduce((a, b) => (b.seconds < a.seconds ? b : a));
}

async function main(): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "cove-bench-oci-" });
  const regs: TestRegistry[] = [];
  const fresh = async () => {
    const r = await startRegistry();
    regs.push(r);
    return r;
  };
  try {
    const home = join(work, "home");
    await Deno.mkdir(home);
    console.log(
      `bench/oci: ${
        formatSize(SIZE)
      } disk, half random, half zeros (64 MiB runs), loopback docker-registry, ${ROUNDS} rounds`,
    );

    // The VM to push: created through the CLI, then its disk filled.
    await cove(home, ["create", "src", "--os", "linux", "--disk-size", formatSize(SIZE)]);
    const disk = join(home, "vms", "src", "disk.img");
    await writeDisk(disk, SIZE);

    const covePush: Run[] = [];
    const skopeoPush: Run[] = [];
    const covePull: Run[] = [];
    const skopeoPull: Run[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      // push: cove into a fresh registry.
      const r1 = await fresh();
      const ref = `${r1.host}/bench/vm:1`;
      covePush.push(await cove(home, ["push", "src", ref, "--insecure"]));

      // pull: skopeo docker:// -> dir: and cove pull (empty cache), same image.
      const dir = join(work, `skopeo-dir-${round}`);
      skopeoPull.push(
        await skopeo(work, ["copy", "--src-tls-verify=false", `docker://${ref}`, `dir:${dir}`]),
      );
      const pullHome = join(work, `pull-home-${round}`);
      await Deno.mkdir(pullHome);
      covePull.push(await cove(pullHome, ["pull", "--insecure", ref]));

      // push: skopeo dir: -> docker:// into another fresh registry.
      const r2 = await fresh();
      skopeoPush.push(
        await skopeo(work, [
          "copy",
          "--dest-tls-verify=false",
          `dir:${dir}`,
          `docker://${r2.host}/bench/vm:1`,
        ]),
      );

      // Check the pulled disk once: same bytes, still sparse.
      if (round === 1) {
        const pulled =
          (await Array.fromAsync(Deno.readDir(join(pullHome, "cache", "oci", "images"))))[0].name;
        const p = join(pullHome, "cache", "oci", "images", pulled, "disk.img");
        const st = await Deno.stat(p);
        const cmp = await new Deno.Command("cmp", { args: [disk, p] }).output();
        console.log(
          `pulled disk: ${cmp.success ? "identical" : "DIFFERENT"}, ${formatSize(st.size)} with ${
            formatSize((st.blocks ?? 0) * 512)
          } allocated`,
        );
      }
      for (const r of regs.splice(0)) await r.stop();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(pullHome, { recursive: true });
      console.log(
        `round ${round}: push cove ${fmt(covePush.at(-1)!)}${fmtRss(covePush.at(-1)!)} skopeo ${
          fmt(skopeoPush.at(-1)!)
        }; ` +
          `pull cove ${fmt(covePull.at(-1)!)}${fmtRss(covePull.at(-1)!)} skopeo ${
            fmt(skopeoPull.at(-1)!)
          }`,
      );
    }
    const [cp, sp, cl, sl] = [best(covePush), best(skopeoPush), best(covePull), best(skopeoPull)];
    const rss = (rs: Run[]) => formatSize(Math.max(...rs.map((r) => r.peakRss ?? 0)));
    console.log("");
    console.log(
      `pull  cove ${fmt(cl)}  skopeo copy docker:// dir: ${fmt(sl)}  ratio ${
        (cl.seconds / sl.seconds).toFixed(2)
      }  cove peak RSS ${rss(covePull)}`,
    );
    console.log(
      `push  cove ${fmt(cp)}  skopeo copy dir: docker:// ${fmt(sp)}  ratio ${
        (cp.seconds / sp.seconds).toFixed(2)
      }  cove peak RSS ${rss(covePush)}`,
    );
    console.log("(ratio = cove / skopeo, best of each; target <= 1.0)");
  } finally {
    for (const r of regs) await r.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

await main();
