/**
 * The defect "`cove clone REF NEW --concurrency x` publishes a broken image":
 * `Number("x")` was NaN, the pool then ran no layer, and the cache
 * published a disk of holes that later pulls took as a hit. Now the flag is
 * validated, the pool refuses a bad size, and OciCache.publish refuses a
 * staging directory in which any layer lacks its done record. Against a
 * real registry (Debian's docker-registry) on loopback, through a counting
 * proxy.
 */
import { join } from "node:path";
import { assert, assertCoveError, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { prng, startProxy, startRegistry } from "../helpers/oci_registry.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Store } from "../../core/store/store.ts";
import { OciCache, ociCache, pullImage, pushVm } from "../../core/oci/mod.ts";
import type { CredentialLookup } from "../../core/oci/auth.ts";
import { linuxTest } from "../helpers/guard.ts";

/** Why these tests run on Linux only. */
const LINUX_REGISTRY = "runs Debian's docker-registry (the CNCF distribution registry) on loopback";

const MiB = 2 ** 20;
const NO_CREDS: CredentialLookup = () => Promise.resolve(undefined);
const FAST = { retries: 2, backoffMs: 20, timeoutMs: 10_000 };

/** Pushes a 3 MiB VM in 1 MiB layers to `ref`. */
async function pushed(home: string, ref: string): Promise<void> {
  const store = new Store(home);
  await store.create("src", {
    spec: parseSpec(
      "os: linux\narch: x86_64\ncpus: 1\nmemory: 1GiB\ndisks: [{ path: disk.img }]\n",
    ),
    populate: async (staging, spec) => {
      await Deno.writeFile(staging.resolve("disk.img"), prng(3 * MiB, 7));
      return spec;
    },
  });
  await pushVm(store, "src", [ref], {
    home,
    insecure: true,
    credentials: NO_CREDS,
    chunkSize: MiB,
    ...FAST,
  });
}

linuxTest(
  LINUX_REGISTRY,
  "cove clone REF NEW --concurrency x, -1, 1.5, 0 or 1000 is refused (exit 2) before any request, and caches nothing",
  async () => {
    const reg = await startRegistry();
    const proxy = startProxy(reg.host);
    try {
      await withTempDir(async (home) => {
        const ref = `${proxy.host}/test/conc:1`;
        await pushed(home, ref);
        const before = proxy.seen.length;
        for (const bad of ["x", "-1", "1.5", "0", "1000", ""]) {
          const r = await cove(home, ["clone", ref, "new", "--insecure", "--concurrency", bad]);
          assertEquals(r.code, 2, r.stderr);
          const lines = r.stderr.trimEnd().split("\n");
          assertEquals(lines.length, 1, r.stderr);
          assertMatch(lines[0], /^cove: --concurrency: .*\(use 1 to 64\)$/);
        }
        assertEquals(proxy.seen.length, before, "no request reached the registry");
        assertEquals(await ociCache(home).list(), [], "nothing was cached");
        assert(!(await new Store(home).exists("new")));
        // The same clone with a good value pulls a complete image.
        const ok = await cove(home, ["clone", ref, "new", "--insecure", "--concurrency", "2"]);
        assertEquals(ok.code, 0, ok.stderr);
        const entries = await ociCache(home).list();
        assertEquals(entries.filter((e) => !e.partial).length, 1);
      });
    } finally {
      await proxy.stop();
      await reg.stop();
    }
  },
);

linuxTest(
  LINUX_REGISTRY,
  "pullImage with a NaN or zero concurrency is refused and publishes nothing",
  async () => {
    const reg = await startRegistry();
    try {
      await withTempDir(async (home) => {
        const ref = `${reg.host}/test/nan:1`;
        await pushed(home, ref);
        for (const concurrency of [NaN, 0, 2.5]) {
          await assertCoveError(
            () =>
              pullImage(ref, { home, insecure: true, credentials: NO_CREDS, concurrency, ...FAST }),
            { code: "usage.number", exit: 2 },
          );
        }
        assertEquals(await ociCache(home).list(), []);
      });
    } finally {
      await reg.stop();
    }
  },
);

Deno.test("OciCache.publish refuses a staging directory where a layer lacks its done record, and keeps it to resume", () =>
  withTempDir(async (home) => {
    const cache = new OciCache(join(home, "cache"));
    await cache.ensure();
    const digest = `sha256:${"ab".repeat(32)}`;
    const staging = cache.staging(digest);
    await Deno.mkdir(join(staging, "layers"), { recursive: true });
    await Deno.writeFile(join(staging, "disk.img"), new Uint8Array(0));
    const layers = [
      { name: 0, digest: `sha256:${"00".repeat(32)}` },
      { name: 1, digest: `sha256:${"11".repeat(32)}` },
      { name: "nvram", digest: `sha256:${"22".repeat(32)}` },
    ];
    await Deno.writeTextFile(join(staging, "layers", "0.done"), layers[0].digest + "\n");
    // Layer 1's record names another digest: as good as missing.
    await Deno.writeTextFile(join(staging, "layers", "1.done"), layers[2].digest + "\n");
    const meta = { digest, refs: ["x/y:1"], created: 0, lastUsed: 0, diskSize: 0 };
    const e = await assertCoveError(() => cache.publish(digest, meta, layers), {
      code: "oci.incomplete_pull",
    });
    assertMatch(e.message, /2 of 3 layers were not pulled \(1, nvram\)/);
    assert(!(await cache.has(digest)), "nothing was published");
    assert(await Deno.stat(join(staging, "layers", "0.done")).then(() => true), "staging kept");

    await Deno.writeTextFile(join(staging, "layers", "1.done"), layers[1].digest + "\n");
    await Deno.writeTextFile(join(staging, "layers", "nvram.done"), layers[2].digest + "\n");
    await cache.publish(digest, meta, layers);
    assert(await cache.has(digest), "a complete staging directory is published");
  }));
