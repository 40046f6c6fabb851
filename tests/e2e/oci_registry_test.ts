/**
 * VM images through a real OCI registry (Debian's docker-registry on
 * loopback): round trips in Tart's format, skopeo interop, auth (htpasswd,
 * Bearer tokens, cove login, Docker config), resumable pulls after kill -9,
 * and faults, each of which must be one clear line with nothing partial left.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertCoveError, assertEquals, assertMatch } from "../helpers/assert.ts";
import { allocatedBytes, cove, ROOT, withTempDir } from "../helpers/cli.ts";
import { prng, startProxy, startRegistry, startTokenFront } from "../helpers/oci_registry.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Store } from "../../core/store/store.ts";
import { pruneCaches } from "../../core/images/cache.ts";
import { createFromOci, ociCache, pullImage, pushVm } from "../../core/oci/mod.ts";
import { RegistryClient } from "../../core/oci/registry.ts";
import type { CredentialLookup } from "../../core/oci/auth.ts";
import {
  ANN_DISK_SIZE,
  ANN_UNCOMPRESSED_DIGEST,
  ANN_UNCOMPRESSED_SIZE,
  DOCKER_MANIFEST,
  OCI_CONFIG,
  OCI_MANIFEST,
  TART_CONFIG,
  TART_DISK_V1,
  TART_DISK_V2,
  TART_NVRAM,
} from "../../core/oci/tart.ts";
import { encodeAppleLz4 } from "../../core/oci/lz4apple.ts";
import { linuxTest } from "../helpers/guard.ts";

/** Why these tests run on Linux only. */
const LINUX_REGISTRY = "runs Debian's docker-registry (the CNCF distribution registry) on loopback";

const MiB = 2 ** 20;
const NO_CREDS: CredentialLookup = () => Promise.resolve(undefined);
const FAST = { retries: 2, backoffMs: 20, timeoutMs: 10_000 };

function sha(b: Uint8Array): string {
  return `sha256:${createHash("sha256").update(b).digest("hex")}`;
}

/** 6 MiB + 12345 bytes: random, zeros, repeated patterns, random again. 7 chunks of 1 MiB. */
function mixedDisk(): Uint8Array<ArrayBuffer> {
  const disk = new Uint8Array(6 * MiB + 12345);
  disk.set(prng(1.5 * MiB, 1), 0); // random
  // 1.5 .. 3.5 MiB: zeros
  const pat = new TextEncoder().encode("cove-pattern-");
  for (let i = 3.5 * MiB; i < 4.5 * MiB; i++) disk[i] = pat[i % pat.length]; // repeated
  for (let i = 4.5 * MiB; i < 5 * MiB; i++) disk[i] = (i >> 9) & 0xff; // slow ramp
  disk.set(prng(200_000, 2), 5 * MiB + 100); // random again, crossing a chunk edge
  return disk;
}

async function makeVm(
  home: string,
  name: string,
  disk: Uint8Array,
  efi?: Uint8Array,
): Promise<void> {
  const store = new Store(home);
  await store.create(name, {
    spec: parseSpec(
      "os: linux\narch: x86_64\ncpus: 3\nmemory: 1GiB\ndisks: [{ path: disk.img }]\n",
    ),
    populate: async (staging, spec) => {
      await Deno.writeFile(staging.resolve("disk.img"), disk);
      if (efi) await Deno.writeFile(staging.resolve("efi-vars.fd"), efi);
      return spec;
    },
  });
}

async function sameFile(path: string, want: Uint8Array): Promise<boolean> {
  const got = await Deno.readFile(path);
  return got.length === want.length && sha(got) === sha(want);
}

/** Asserts one line on stderr, exit code, and no secret; returns the line. */
function oneLine(
  r: { code: number; stderr: string; stdout: string },
  exit: number,
  re: RegExp,
  secret?: string,
): string {
  const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("cove:"));
  assertEquals(lines.length, 1, `expected one error line, got: ${r.stderr}`);
  assertMatch(lines[0], re);
  assertEquals(r.code, exit, r.stderr);
  assert(!/\n\s+at /.test(r.stderr), `a stack trace was printed: ${r.stderr}`);
  if (secret) assert(!(r.stderr + r.stdout).includes(secret), "a secret was printed");
  return lines[0];
}

/** Nothing of a failed pull is left but (for network failures) a resumable partial entry. */
async function nothingPartial(home: string, vm?: string): Promise<void> {
  if (vm) assert(!(await new Store(home).exists(vm)), `VM ${vm} exists after a failure`);
  const entries = await ociCache(home).list();
  assertEquals(
    entries.filter((e) => !e.partial).length,
    0,
    "a complete image appeared after a failure",
  );
  const tmp = await Array.fromAsync(Deno.readDir(join(home, "tmp"))).catch(() => []);
  assertEquals(tmp.length, 0, "the store's tmp is not empty");
}

/** Env for CLI runs: no real HOME or Docker config leaks in. */
function cliEnv(home: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    DOCKER_CONFIG: join(home, "no-docker"),
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    ...extra,
  };
}

linuxTest(
  LINUX_REGISTRY,
  "oci round trip through a real registry in Tart's format (layer workers on)",
  async (t) => {
    // Small disks normally stay on the main thread; force the worker path here.
    Deno.env.set("COVE_OCI_WORKERS", "1");
    const reg = await startRegistry();
    try {
      await withTempDir(async (home) => {
        const disk = mixedDisk();
        const efi = prng(64 * 1024, 5);
        await makeVm(home, "src", disk, efi);
        const store = new Store(home);
        const ref = `${reg.host}/test/vm:1`;
        const opts = { home, insecure: true, credentials: NO_CREDS, ...FAST };

        await t.step("push cuts the disk into disk.v2 layers with Tart's annotations", async () => {
          const r = await pushVm(store, "src", [ref], { ...opts, chunkSize: MiB });
          assertEquals(r.layers, 7);
          assertEquals(r.skipped, 0);
          const res = await fetch(`http://${reg.host}/v2/test/vm/manifests/1`, {
            headers: { accept: OCI_MANIFEST },
          });
          const m = await res.json();
          assertEquals(m.mediaType, OCI_MANIFEST);
          assertEquals(m.config.mediaType, OCI_CONFIG);
          const types = m.layers.map((l: { mediaType: string }) => l.mediaType);
          assertEquals(types, [TART_CONFIG, ...Array(7).fill(TART_DISK_V2), TART_NVRAM]);
          assertEquals(m.annotations[ANN_DISK_SIZE], String(disk.length));
          for (let i = 0; i < 7; i++) {
            const chunk = disk.subarray(i * MiB, Math.min((i + 1) * MiB, disk.length));
            assertEquals(m.layers[1 + i].annotations[ANN_UNCOMPRESSED_SIZE], String(chunk.length));
            assertEquals(m.layers[1 + i].annotations[ANN_UNCOMPRESSED_DIGEST], sha(chunk));
          }
          assertEquals(
            `sha256:${
              createHash("sha256").update(
                new Uint8Array(
                  await (await fetch(`http://${reg.host}/v2/test/vm/manifests/1`, {
                    headers: { accept: OCI_MANIFEST },
                  })).arrayBuffer(),
                ),
              ).digest("hex")
            }`,
            r.digest,
          );
          // The zero chunk compresses to almost nothing.
          assert(m.layers[3].size < 20_000, `zero chunk is ${m.layers[3].size} bytes`);
        });

        await t.step("skopeo inspect accepts cove's manifest", async () => {
          const out = await new Deno.Command("skopeo", {
            args: ["inspect", "--tls-verify=false", `docker://${ref}`],
            stdout: "piped",
            stderr: "piped",
          }).output().catch((e) => {
            throw new Error(`skopeo is required for this test (apt-get install skopeo): ${e}`);
          });
          assert(out.success, new TextDecoder().decode(out.stderr));
          const j = JSON.parse(new TextDecoder().decode(out.stdout));
          assertEquals([j.Os, j.Architecture, j.Layers.length], ["linux", "amd64", 9]);
          assertEquals(j.Labels["org.cirruslabs.tart.disk.format"], "raw");
        });

        await t.step("pulling into a new VM is byte-identical and the disk has holes", async () => {
          const { bundle, image } = await createFromOci(store, "copy", ref, opts);
          assert(!image.cached);
          const path = join(bundle.dir, "disk.img");
          assert(await sameFile(path, disk), "pulled disk differs");
          assert(
            await sameFile(join(bundle.dir, "efi-vars.fd"), efi),
            "pulled EFI variables differ",
          );
          const used = await allocatedBytes(path);
          assert(
            used <= disk.length - 1.5 * MiB,
            `pulled disk is not sparse: ${used} of ${disk.length} bytes allocated`,
          );
          assert(
            (await allocatedBytes(image.diskPath)) <= disk.length - 1.5 * MiB,
            "cached disk is not sparse",
          );
          const yaml = await Deno.readTextFile(join(bundle.dir, "cove.yaml"));
          assertMatch(yaml, /os: linux/);
          assertMatch(yaml, /cpus: 3/);
          assertMatch(yaml, /memory: 1GiB/);
        });

        await t.step(
          "pushing again finds every blob on the registry and uploads nothing",
          async () => {
            const r = await pushVm(store, "src", [ref], { ...opts, chunkSize: MiB });
            assertEquals([r.skipped, r.uploaded], [7, 0]);
          },
        );

        await t.step(
          "a re-pushed tag's unchanged layers come from the cache, and a second pull fetches nothing",
          async () => {
            // A changed config makes a new manifest with the same disk layers.
            const b = await store.get("src");
            await b.writeSpec({ ...(await b.readParsedSpec()), cpus: 2 });
            const re = await pushVm(store, "src", [ref], { ...opts, chunkSize: MiB });
            assertEquals(re.skipped, 7);
            const img = await pullImage(ref, opts);
            assert(!img.cached);
            assertEquals([img.fetched, img.reusedLayers], [0, 7]);
            assert(await sameFile(img.diskPath, disk));
            const again = await pullImage(ref, opts);
            assert(again.cached);
            assertEquals(again.fetched, 0);
          },
        );

        await t.step(
          "one push to two repositories mounts blobs across them, chunked uploads work",
          async () => {
            const r = await pushVm(
              store,
              "src",
              [`${reg.host}/test/vm:2`, `${reg.host}/other/vm:1`],
              {
                ...opts,
                chunkSize: 2 * MiB,
                uploadChunkSize: 300_000,
              },
            );
            assertEquals(r.pushed.length, 2);
            const { bundle } = await createFromOci(store, "copy2", `${reg.host}/other/vm:1`, opts);
            assert(await sameFile(join(bundle.dir, "disk.img"), disk));
          },
        );

        await t.step("image ls lists cached images and prune removes them", async () => {
          const cache = ociCache(home);
          const entries = await cache.list();
          assertEquals(entries.length, 3);
          assert(
            entries.every((e) =>
              e.kind === "oci" && !e.partial && e.size > 0 && e.source.startsWith(reg.host)
            ),
          );
          const res = await pruneCaches([cache]);
          assertEquals(res.removed.length, 3);
          assertEquals((await cache.list()).length, 0);
        });

        await t.step("cove pull, create --from oci:// and push work from the CLI", async () => {
          const env = cliEnv(home, { COVE_INSECURE_REGISTRIES: reg.host });
          await pruneCaches([ociCache(home)]);
          let r = await cove(home, ["pull", "--insecure", "--concurrency", "2", ref], { env });
          assertEquals(r.code, 0, r.stderr);
          assertMatch(r.stdout, /^pulled 127\.0\.0\.1:\d+\/test\/vm@sha256:[0-9a-f]{64}\n$/);
          r = await cove(home, ["create", "cli-vm", "--from", `oci://${ref}`], { env });
          assertEquals(r.code, 0, r.stderr);
          assert(await sameFile(join(home, "vms", "cli-vm", "disk.img"), disk));
          r = await cove(home, [
            "push",
            "cli-vm",
            `${reg.host}/test/vm:cli`,
            "--insecure",
            "--chunk-size",
            "3MiB",
            "--format",
            "json",
          ], { env });
          assertEquals(r.code, 0, r.stderr);
          assertEquals(JSON.parse(r.stdout).layers, 3);
        });
      });
    } finally {
      Deno.env.delete("COVE_OCI_WORKERS");
      await reg.stop();
    }
  },
);

/** Uploads raw blobs and a manifest, for images cove would never push. */
async function pushRaw(
  host: string,
  repo: string,
  tag: string,
  layers: {
    mediaType: string;
    bytes: Uint8Array<ArrayBuffer>;
    annotations?: Record<string, string>;
  }[],
  manifestType = OCI_MANIFEST,
  configType = OCI_CONFIG,
) {
  const client = new RegistryClient(host, repo, { insecure: true }, true);
  const config = new TextEncoder().encode(`{"architecture":"arm64","os":"linux"}`);
  for (const b of [config, ...layers.map((l) => l.bytes)]) {
    await client.uploadBytes(sha(b), b);
  }
  const manifest = {
    schemaVersion: 2,
    mediaType: manifestType,
    config: { mediaType: configType, size: config.length, digest: sha(config) },
    layers: layers.map((l) => ({
      mediaType: l.mediaType,
      size: l.bytes.length,
      digest: sha(l.bytes),
      annotations: l.annotations,
    })),
  };
  await client.putManifest(tag, new TextEncoder().encode(JSON.stringify(manifest)), manifestType);
}

linuxTest(
  { needs: `${LINUX_REGISTRY}, and mounts a small tmpfs (mount -t tmpfs)`, root: true },
  "oci faults are one clear line and leave nothing partial",
  async (t) => {
    const reg = await startRegistry();
    const proxy = startProxy(reg.host);
    try {
      await withTempDir(async (home) => {
        const disk = mixedDisk();
        await makeVm(home, "src", disk, prng(4096, 3));
        const store = new Store(home);
        const opts = { home, insecure: true, credentials: NO_CREDS, ...FAST };
        const pushed = await pushVm(store, "src", [`${reg.host}/test/vm:1`], {
          ...opts,
          chunkSize: MiB,
        });
        const viaProxy = `${proxy.host}/test/vm:1`;
        const manifest = await (await fetch(`http://${reg.host}/v2/test/vm/manifests/1`, {
          headers: { accept: OCI_MANIFEST },
        })).json();
        const firstDisk: string = manifest.layers[1].digest;
        const env = cliEnv(home);
        const config = new TextEncoder().encode(
          `{"version":1,"os":"linux","arch":"arm64","cpuCount":1,"memorySize":1073741824,"macAddress":"52:54:00:00:00:01"}`,
        );

        await t.step("an unknown host", async () => {
          const r = await cove(home, ["pull", "no-such-host.invalid/test/vm:1"], { env });
          oneLine(r, 6, /^cove: cannot reach registry 'no-such-host\.invalid': unknown host \(/);
          await nothingPartial(home);
        });

        await t.step("a tag that does not exist", async () => {
          const r = await cove(home, ["pull", "--insecure", `${reg.host}/test/vm:nope`], { env });
          oneLine(r, 3, /^cove: tag 'nope' does not exist in 127\.0\.0\.1:\d+\/test\/vm \(/);
          await nothingPartial(home);
        });

        await t.step("a container image", async () => {
          await pushRaw(
            reg.host,
            "library/busybox",
            "latest",
            [{
              mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
              bytes: new Uint8Array(100),
            }],
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
          );
          const r = await cove(home, [
            "create",
            "c1",
            "--from",
            `oci://${reg.host}/library/busybox:latest`,
          ], { env: { ...env, COVE_INSECURE_REGISTRIES: reg.host } });
          oneLine(
            r,
            2,
            /^cove: '127\.0\.0\.1:\d+\/library\/busybox:latest' is not a VM image: it is a Docker container image \(/,
          );
          await nothingPartial(home, "c1");
        });

        await t.step("Tart's old disk.v1 format", async () => {
          await pushRaw(reg.host, "test/old", "1", [
            { mediaType: TART_CONFIG, bytes: config },
            { mediaType: TART_DISK_V1, bytes: encodeAppleLz4(new Uint8Array(1000)) },
            { mediaType: TART_NVRAM, bytes: new Uint8Array(10) },
          ]);
          const r = await cove(home, ["pull", "--insecure", `${reg.host}/test/old:1`], { env });
          oneLine(
            r,
            2,
            /^cove: .* uses Tart's old disk format \(application\/vnd\.cirruslabs\.tart\.disk\.v1\), which is unsupported \(re-push/,
          );
          await nothingPartial(home);
        });

        await t.step("a layer whose digest does not match", async () => {
          proxy.fault = (path) => (path.endsWith(firstDisk) ? { flipAt: 5000 } : undefined);
          const e = await assertCoveError(() => createFromOci(store, "bad", viaProxy, opts));
          assertEquals(e.code, "oci.digest_mismatch");
          assertMatch(e.line(), /does not match its digest/);
          await nothingPartial(home, "bad");
          assertEquals(
            (await ociCache(home).list()).length,
            0,
            "a mismatching pull left a staging directory",
          );
        });

        await t.step("a truncated layer", async () => {
          proxy.fault = (path) => (path.endsWith(firstDisk) ? { truncateTo: 1000 } : undefined);
          const e = await assertCoveError(() => createFromOci(store, "bad", viaProxy, opts));
          assertEquals(e.code, "oci.truncated");
          assertMatch(e.message, /is truncated \(1000 of \d+ bytes\)/);
          await nothingPartial(home, "bad");
        });

        await t.step("corrupt LZ4 data with a valid digest", async () => {
          const plain = new Uint8Array(50_000).map((_, i) => i % 7);
          const bad = encodeAppleLz4(plain);
          assertEquals(new TextDecoder().decode(bad.subarray(0, 4)), "bv41");
          bad[4] = 0x10; // the block now claims to decode to fewer bytes than it does
          bad[5] = 0x00;
          await pushRaw(reg.host, "test/corrupt", "1", [
            { mediaType: TART_CONFIG, bytes: config },
            {
              mediaType: TART_DISK_V2,
              bytes: bad,
              annotations: {
                [ANN_UNCOMPRESSED_SIZE]: "50000",
                [ANN_UNCOMPRESSED_DIGEST]: sha(plain),
              },
            },
            { mediaType: TART_NVRAM, bytes: new Uint8Array(10) },
          ]);
          const r = await cove(home, ["pull", "--insecure", `${reg.host}/test/corrupt:1`], { env });
          oneLine(r, 6, /^cove: corrupt LZ4 data: /);
          await nothingPartial(home);
          assertEquals((await ociCache(home).list()).length, 0);
        });

        await t.step("a registry that keeps dropping connections", async () => {
          proxy.fault = (path) => (path.includes("/blobs/") ? { dropAfter: 3000 } : undefined);
          const e = await assertCoveError(() => createFromOci(store, "bad", viaProxy, opts));
          assertEquals(e.code, "oci.dropped");
          assertMatch(e.line(), /^registry '127\.0\.0\.1:\d+' dropped the connection \(.*resumes/);
          await nothingPartial(home, "bad");
          // What is kept is only the resumable partial pull, listed as such.
          assert((await ociCache(home).list()).every((x) => x.partial));
          proxy.fault = () => undefined;
          const { bundle } = await createFromOci(store, "good", viaProxy, opts);
          assert(await sameFile(join(bundle.dir, "disk.img"), disk));
          await pruneCaches([ociCache(home)]);
        });

        await t.step("one dropped connection resumes the layer with a Range request", async () => {
          let dropped = false;
          proxy.fault = (path) => {
            if (!dropped && path.endsWith(firstDisk)) {
              dropped = true;
              return { dropAfter: 100_000 };
            }
            return undefined;
          };
          proxy.seen.length = 0;
          const img = await pullImage(viaProxy, opts);
          assert(dropped);
          assert(
            proxy.seen.some((s) => s.path.endsWith(firstDisk) && s.range === "bytes=100000-"),
            JSON.stringify(proxy.seen),
          );
          assert(await sameFile(img.diskPath, disk));
          await pruneCaches([ociCache(home)]);
          proxy.fault = () => undefined;
        });

        await t.step("a full disk", async () => {
          const small = join(home, "small");
          await Deno.mkdir(small);
          const mount = await new Deno.Command("mount", {
            args: ["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", small], // a private COVE_HOME
            stderr: "piped",
          }).output();
          assert(
            mount.success,
            `mounting a small tmpfs (needs root) failed: ${new TextDecoder().decode(mount.stderr)}`,
          );
          try {
            const r = await cove(small, ["pull", "--insecure", `${reg.host}/test/vm:1`], {
              env: cliEnv(small),
            });
            // It says what it kept and how to remove it (it used to claim nothing was kept).
            oneLine(
              r,
              1,
              /^cove: the disk is full: pulling .* stopped \(the partial pull \(.*\) was kept to resume: free some space .*'cove image prune'\)$/,
            );
            await nothingPartial(small);
            // Freeing space and pulling again resumes: only a partial pull may stay, listed as such.
            assert(
              (await ociCache(small).list()).every((x) => x.partial),
              "a full-disk pull left something other than a resumable partial pull",
            );
          } finally {
            await new Deno.Command("umount", { args: [small] }).output();
          }
        });
        assert(pushed.digest.startsWith("sha256:"));
      });
    } finally {
      await proxy.stop();
      await reg.stop();
    }
  },
);

linuxTest(LINUX_REGISTRY, "oci pull resumes only missing chunks after kill -9", async () => {
  const reg = await startRegistry();
  const proxy = startProxy(reg.host);
  try {
    await withTempDir(async (home) => {
      const disk = prng(8 * MiB, 77); // 8 chunks of real data
      await makeVm(home, "src", disk);
      await pushVm(new Store(home), "src", [`${reg.host}/test/big:1`], {
        home,
        insecure: true,
        credentials: NO_CREDS,
        chunkSize: MiB,
      });
      const pullHome = join(home, "puller");
      await Deno.mkdir(pullHome);
      // Slow enough that the pull is still running when killed.
      proxy.fault = () => ({ rate: 1.5 * MiB });
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "--quiet",
          join(ROOT, "cli", "main.ts"),
          "pull",
          "--insecure",
          "--concurrency",
          "2",
          `${proxy.host}/test/big:1`,
        ],
        env: { ...cliEnv(pullHome), COVE_HOME: pullHome },
        stdout: "null",
        stderr: "null",
      }).spawn();
      const stagingRoot = join(pullHome, "cache", "oci", "staging");
      const deadline = Date.now() + 60_000;
      let done = 0;
      while (Date.now() < deadline) {
        const dirs = await Array.fromAsync(Deno.readDir(stagingRoot)).catch(() => []);
        if (dirs.length) {
          const layers = await Array.fromAsync(
            Deno.readDir(join(stagingRoot, dirs.find((d) => d.isDirectory)?.name ?? "x", "layers")),
          ).catch(() => []);
          done = layers.filter((l) => /^\d+\.done$/.test(l.name)).length;
          if (done >= 2) break;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      child.kill("SIGKILL");
      await child.status;
      assert(done >= 2, "the pull never finished two layers");
      assertEquals(
        (await ociCache(pullHome).list()).filter((e) => !e.partial).length,
        0,
        "an image appeared before the pull finished",
      );

      proxy.fault = () => undefined;
      const before = proxy.seen.length;
      const r = await cove(pullHome, [
        "pull",
        "--insecure",
        "--format",
        "json",
        `${proxy.host}/test/big:1`,
      ], { env: cliEnv(pullHome) });
      assertEquals(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout);
      assert(out.resumedLayers >= 2, `resumed ${out.resumedLayers} layers`);
      const diskGets = proxy.seen.slice(before).filter((s) =>
        s.method === "GET" && s.path.includes("/blobs/")
      ).length;
      // 8 disk layers + config + nvram = 10 blobs; the resume fetches fewer.
      assert(
        diskGets <= 10 - out.resumedLayers,
        `fetched ${diskGets} blobs after resuming ${out.resumedLayers} layers`,
      );
      assert(out.fetched < disk.length, `fetched ${out.fetched} bytes: everything`);
      assert(await sameFile(join(out.path, "disk.img"), disk), "resumed disk differs");
    });
  } finally {
    await proxy.stop();
    await reg.stop();
  }
});

linuxTest(
  LINUX_REGISTRY,
  "oci behind htpasswd: login hint, cove login, Docker config, logout, no secret printed",
  async (t) => {
    const password = "pw-Zx8!secret-771";
    const reg = await startRegistry({ user: "alice", password });
    try {
      await withTempDir(async (home) => {
        await makeVm(home, "src", mixedDisk(), prng(1024, 4));
        const store = new Store(home);
        const ref = `${reg.host}/team/vm:1`;
        const env = cliEnv(home);

        await t.step("push without credentials fails with a login hint", async () => {
          const e = await assertCoveError(() =>
            pushVm(store, "src", [ref], {
              home,
              insecure: true,
              credentials: NO_CREDS,
              chunkSize: 2 * MiB,
            })
          );
          assertEquals(e.code, "oci.unauthorized");
          assertMatch(
            e.line(),
            new RegExp(
              `requires authentication .*\\(log in with 'cove login ${
                reg.host.replace(/\./g, "\\.")
              }'\\)$`,
            ),
          );
          const r = await cove(home, ["pull", "--insecure", ref], { env });
          oneLine(r, 6, /requires authentication.*cove login/);
        });

        await t.step("login with a wrong password fails and prints no secret", async () => {
          const r = await cove(home, [
            "login",
            reg.host,
            "--insecure",
            "-u",
            "alice",
            "--password-stdin",
          ], { env, stdin: "wrong-pass-123\n" });
          oneLine(
            r,
            6,
            /^cove: login to '127\.0\.0\.1:\d+' failed: the username or password was refused/,
            "wrong-pass-123",
          );
          assert(
            !(await Deno.stat(join(home, "auth.json")).then(() => true, () => false)),
            "a failed login was stored",
          );
        });

        await t.step("cove login stores a 0600 file and push and pull then work", async () => {
          let r = await cove(home, [
            "login",
            reg.host,
            "--insecure",
            "--username",
            "alice",
            "--password-stdin",
          ], { env, stdin: password + "\n" });
          assertEquals(r.code, 0, r.stderr);
          assertEquals(r.stdout.trim(), `logged in to ${reg.host}`);
          assertEquals((await Deno.stat(join(home, "auth.json"))).mode! & 0o777, 0o600);
          r = await cove(home, ["push", "src", ref, "--insecure", "--chunk-size", "2MiB"], { env });
          assertEquals(r.code, 0, r.stderr);
          assert(!(r.stdout + r.stderr).includes(password));
          r = await cove(home, ["pull", "--insecure", ref], { env });
          assertEquals(r.code, 0, r.stderr);
          assert(!(r.stdout + r.stderr).includes(password));
        });

        await t.step("logout forgets the login", async () => {
          let r = await cove(home, ["logout", reg.host], { env });
          assertEquals([r.code, r.stdout.trim()], [0, `logged out of ${reg.host}`]);
          await pruneCaches([ociCache(home)]);
          r = await cove(home, ["pull", "--insecure", ref], { env });
          oneLine(r, 6, /requires authentication/);
        });

        await t.step("credentials from Docker's config.json are used", async () => {
          const dockerDir = join(home, "docker");
          await Deno.mkdir(dockerDir, { recursive: true });
          await Deno.writeTextFile(
            join(dockerDir, "config.json"),
            JSON.stringify({ auths: { [reg.host]: { auth: btoa(`alice:${password}`) } } }),
          );
          const r = await cove(home, ["pull", "--insecure", ref], {
            env: { ...env, DOCKER_CONFIG: dockerDir },
          });
          assertEquals(r.code, 0, r.stderr);
          assert(!(r.stdout + r.stderr).includes(password));
        });
      });
    } finally {
      await reg.stop();
    }
  },
);

linuxTest(
  LINUX_REGISTRY,
  "oci Bearer token challenges: realm, service and scope, with and without credentials",
  async () => {
    const reg = await startRegistry();
    const front = startTokenFront(reg.host, "bob", "tok-pass-42");
    try {
      await withTempDir(async (home) => {
        const disk = mixedDisk();
        await makeVm(home, "src", disk);
        const store = new Store(home);
        const ref = `${front.host}/team/vm:1`;
        const creds: CredentialLookup = () =>
          Promise.resolve({ username: "bob", secret: "tok-pass-42", source: "test" });
        const anon = await assertCoveError(() =>
          pushVm(store, "src", [ref], {
            home,
            insecure: true,
            credentials: NO_CREDS,
            chunkSize: 2 * MiB,
          })
        );
        assertEquals(anon.code, "oci.unauthorized");
        assert(!anon.line().includes("tok-pass-42"));
        await pushVm(store, "src", [ref], {
          home,
          insecure: true,
          credentials: creds,
          chunkSize: 2 * MiB,
        });
        const { bundle } = await createFromOci(store, "copy", ref, {
          insecure: true,
          credentials: creds,
        });
        assert(await sameFile(join(bundle.dir, "disk.img"), disk));
        const withCreds = front.tokenRequests.filter((r) => r.basic);
        assert(withCreds.length > 0);
        assert(withCreds.every((r) => r.service === "cove-test"));
        assert(
          withCreds.some((r) => r.scope.includes("repository:team/vm:pull,push")),
          JSON.stringify(front.tokenRequests),
        );
      });
    } finally {
      await front.stop();
      await reg.stop();
    }
  },
);

linuxTest(
  LINUX_REGISTRY,
  "a hand-made Tart image (as Tart would push it) pulls into a VM",
  async () => {
    const reg = await startRegistry();
    try {
      await withTempDir(async (home) => {
        // Two disk chunks compressed separately, config with a display, an NVRAM blob.
        const a = prng(300_000, 11);
        const b = new Uint8Array(200_000);
        const disk = new Uint8Array([...a, ...b]);
        const tartConfig = new TextEncoder().encode(JSON.stringify({
          version: 1,
          os: "linux",
          arch: "arm64",
          cpuCountMin: 2,
          cpuCount: 2,
          memorySizeMin: 4294967296,
          memorySize: 4294967296,
          macAddress: "7e:1f:00:00:00:02",
          display: { width: 1024, height: 768 },
          diskFormat: "raw",
        }));
        const nvram = prng(2048, 12);
        await pushRaw(reg.host, "tart/linux", "latest", [
          { mediaType: TART_CONFIG, bytes: tartConfig },
          {
            mediaType: TART_DISK_V2,
            bytes: encodeAppleLz4(a),
            annotations: {
              [ANN_UNCOMPRESSED_SIZE]: String(a.length),
              [ANN_UNCOMPRESSED_DIGEST]: sha(a),
            },
          },
          {
            mediaType: TART_DISK_V2,
            bytes: encodeAppleLz4(b),
            annotations: {
              [ANN_UNCOMPRESSED_SIZE]: String(b.length),
              [ANN_UNCOMPRESSED_DIGEST]: sha(b),
            },
          },
          { mediaType: TART_NVRAM, bytes: nvram },
        ]);
        const store = new Store(home);
        const { bundle } = await createFromOci(store, "t", `${reg.host}/tart/linux:latest`, {
          insecure: true,
          credentials: NO_CREDS,
        });
        assert(await sameFile(join(bundle.dir, "disk.img"), disk));
        assert(await sameFile(join(bundle.dir, "efi-vars.fd"), nvram));
        const spec = await bundle.readSpec();
        assertEquals([spec.os, spec.arch, spec.cpus, spec.memory, spec.display], [
          "linux",
          "arm64",
          2,
          "4GiB",
          { width: 1024, height: 768, ppi: 144 },
        ]);
      });
    } finally {
      await reg.stop();
    }
  },
);
