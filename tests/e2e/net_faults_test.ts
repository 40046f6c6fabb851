/**
 * Network faults through the CLI, against real servers on loopback: a real
 * registry behind a fault-injecting proxy that stalls (no answer, or
 * headers and part of a body, then nothing), and a fault-injecting HTTP
 * server for `cove create --from http://…`. Every wait is bounded by the
 * stall timeout (COVE_STALL_TIMEOUT, 1 s here), retried within the policy
 * (COVE_RETRIES, 1 here), and ends in one line with exit 6 that says the
 * work can be resumed.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { linuxTest } from "../helpers/guard.ts";
import { freePort, prng, startProxy, startRegistry } from "../helpers/oci_registry.ts";
import { pseudoRandomBytes, startLoopbackServer } from "../helpers/loopback_http.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { Store } from "../../core/store/store.ts";
import { pullImage, pushVm } from "../../core/oci/mod.ts";
import type { PullProgress } from "../../core/oci/pull.ts";
import type { CredentialLookup } from "../../core/oci/auth.ts";
import { BlobCache } from "../../core/images/cache.ts";

const MiB = 2 ** 20;
const NO_CREDS: CredentialLookup = () => Promise.resolve(undefined);
/** Fast stall timeout and one retry, so every failure takes a few seconds. */
const FAULT_ENV = { COVE_STALL_TIMEOUT: "1s", COVE_RETRIES: "1" };

function env(home: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    DOCKER_CONFIG: join(home, "no-docker"),
    PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
    ...FAULT_ENV,
    ...extra,
  };
}

/** Exactly one `cove:` line on stderr, matching `re`, with exit `exit` and no stack. */
function oneLine(r: { code: number; stderr: string }, exit: number, re: RegExp): string {
  const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("cove:"));
  assertEquals(lines.length, 1, `expected one error line, got: ${r.stderr}`);
  assertMatch(lines[0], re);
  assertEquals(r.code, exit, r.stderr);
  assert(!/\n\s+at /.test(r.stderr), `a stack trace was printed: ${r.stderr}`);
  return lines[0];
}

async function makeVm(home: string, name: string, disk: Uint8Array): Promise<void> {
  await new Store(home).create(name, {
    spec: parseSpec(
      "os: linux\narch: x86_64\ncpus: 1\nmemory: 1GiB\ndisks: [{ path: disk.img }]\n",
    ),
    populate: async (staging, spec) => {
      await Deno.writeFile(staging.resolve("disk.img"), disk);
      return spec;
    },
  });
}

Deno.test("a registry that stops sending fails pull and push after the stall timeout with one resumable line", async (t) => {
  const reg = await startRegistry();
  const proxy = startProxy(reg.host);
  try {
    await withTempDir(async (home) => {
      // 4 disk layers of 1 MiB, random so they do not compress away.
      await makeVm(home, "src", prng(4 * MiB, 7));
      const opts = { home, insecure: true, credentials: NO_CREDS, retries: 1, backoffMs: 20 };
      await pushVm(new Store(home), "src", [`${reg.host}/test/vm:1`], { ...opts, chunkSize: MiB });
      const manifest = await (await fetch(`http://${reg.host}/v2/test/vm/manifests/1`, {
        headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
      })).json();
      const lastDisk: string = manifest.layers.at(-2).digest;
      const ref = `${proxy.host}/test/vm:1`;
      const e = env(home, { COVE_INSECURE_REGISTRIES: proxy.host });

      await t.step(
        "a layer body that stops mid-way: exit 6, one line, and the pull resumes",
        async () => {
          proxy.stall = (m, p) =>
            m === "GET" && p.endsWith(lastDisk) ? { at: "body", after: 5000 } : undefined;
          const before = proxy.seen.length;
          const r = await cove(home, ["pull", "--concurrency", "1", ref], { env: e });
          oneLine(
            r,
            6,
            /^cove: registry '127\.0\.0\.1:\d+' sent no data for 1s while downloading disk layer 4 .*the pull can be resumed: run the same command again/,
          );
          const tries = proxy.seen.slice(before).filter((s) => s.path.endsWith(lastDisk));
          assertEquals(tries.length, 2, "one attempt and one retry");
          assertEquals(tries[1].range, "bytes=5000-", "the retry resumed where the stall left off");
          proxy.stall = () => undefined;
          const mark = proxy.seen.length;
          const ok = await cove(home, ["pull", "--concurrency", "1", ref], { env: e });
          assertEquals(ok.code, 0, ok.stderr);
          const blobGets = proxy.seen.slice(mark).filter((s) => /\/blobs\/sha256:/.test(s.path));
          // Only the config and the stalled layer: the finished layers were kept.
          assertEquals(blobGets.map((s) => s.path.endsWith(lastDisk)), [false, true]);
        },
      );

      await t.step("a manifest GET with no answer: exit 6 and one line", async () => {
        proxy.stall = (m, p) =>
          m === "GET" && p.includes("/manifests/") ? { at: "headers" } : undefined;
        const r = await cove(home, ["pull", `${proxy.host}/test/vm:2`], { env: e });
        oneLine(
          r,
          6,
          /^cove: registry '127\.0\.0\.1:\d+' sent no data for 1s while fetching the manifest \(the pull can be resumed/,
        );
      });

      await t.step("a manifest body that stops: exit 6 and one line", async () => {
        proxy.stall = (m, p) =>
          m === "GET" && p.includes("/manifests/") ? { at: "body", after: 10 } : undefined;
        const r = await cove(home, ["pull", `${proxy.host}/test/vm:1`], { env: e });
        oneLine(
          r,
          6,
          /^cove: registry '127\.0\.0\.1:\d+' sent no data for 1s while fetching the manifest \(the pull can be resumed/,
        );
      });

      await t.step("push's manifest PUT with no answer: exit 6 and one line", async () => {
        proxy.stall = (m, p) =>
          m === "PUT" && p.includes("/manifests/") ? { at: "headers" } : undefined;
        const r = await cove(home, [
          "push",
          "src",
          `${proxy.host}/test/vm:3`,
          "--chunk-size",
          "1MiB",
        ], {
          env: e,
        });
        oneLine(
          r,
          6,
          /^cove: registry '127\.0\.0\.1:\d+' sent no data for 1s while pushing the manifest for '3' \(the push can be resumed: run the same command again\)/,
        );
      });

      await t.step(
        "progress says the pull is waiting while a layer stalls, and a retry cures it",
        async () => {
          let stalls = 1;
          proxy.stall = (m, p) =>
            m === "GET" && p.endsWith(lastDisk) && stalls-- > 0
              ? { at: "body", after: 1000 }
              : undefined;
          const seen: PullProgress[] = [];
          await Deno.remove(join(home, "cache", "oci"), { recursive: true });
          const img = await pullImage(ref, {
            ...opts,
            timeoutMs: 1000,
            concurrency: 1,
            onProgress: (p) => seen.push(p),
          });
          assert(!img.cached);
          assert(seen.some((p) => p.stalled > 0), "no progress event showed the stall");
          assertEquals(seen.at(-1)!.stalled, 0);
        },
      );
    });
  } finally {
    proxy.stall = () => undefined;
    await proxy.stop();
    await reg.stop();
  }
});

Deno.test("an http source that stalls fails create after the stall timeout with one line, and resumes", async (t) => {
  const srv = startLoopbackServer();
  const body = pseudoRandomBytes(3 * MiB, 11);
  // An MBR signature, so the downloaded file is a disk image cove accepts.
  body[510] = 0x55;
  body[511] = 0xaa;
  try {
    await withTempDir(async (home) => {
      const e = env(home);

      await t.step("no answer at all", async () => {
        srv.files.set("/quiet.img", { body, noAnswer: true });
        const r = await cove(home, ["create", "a", "--from", `${srv.base}/quiet.img`], { env: e });
        oneLine(
          r,
          6,
          /^cove: download of http:\/\/127\.0\.0\.1:\d+\/quiet\.img stalled: no data from 127\.0\.0\.1:\d+ for 1s \(the download can be resumed: run the same command again\)/,
        );
      });

      await t.step("headers, then nothing", async () => {
        srv.files.set("/headers.img", { body, stallAfter: 0 });
        const r = await cove(home, ["create", "a", "--from", `${srv.base}/headers.img`], {
          env: e,
        });
        oneLine(
          r,
          6,
          /^cove: download of http:\/\/127\.0\.0\.1:\d+\/headers\.img stalled: no data .* for 1s/,
        );
      });

      await t.step(
        "mid-body: the partial is kept, progress shows the stall, and the next run resumes",
        async () => {
          srv.files.set("/mid.img", { body, stallAfter: MiB });
          const r = await cove(home, [
            "create",
            "a",
            "--from",
            `${srv.base}/mid.img`,
            "--format",
            "json",
          ], { env: e });
          // With --format json, progress and the error are JSON lines on stderr.
          assertEquals(r.code, 6, r.stderr);
          const lines = r.stderr.trimEnd().split("\n").map((l) => JSON.parse(l));
          const err = lines.at(-1).error;
          assertEquals([err.code, err.exit], ["download.timeout", 6]);
          assertMatch(
            err.message,
            /^download of http:\/\/127\.0\.0\.1:\d+\/mid\.img stalled: no data from .* for 1s at 1MiB of 3MiB$/,
          );
          assertMatch(err.hint, /the download can be resumed: run the same command again/);
          const events = r.stderr.split("\n").filter((l) => l.startsWith("{")).map((l) =>
            JSON.parse(l).progress
          );
          assert(events.some((ev) => ev?.type === "stalled"), `no stalled event: ${r.stderr}`);
          const partial = (await new BlobCache(join(home, "cache")).list()).filter((x) =>
            x.partial
          );
          assertEquals(partial.length, 1, "the partial download was not kept");
          srv.files.set("/mid.img", { body });
          const mark = srv.seen.length;
          const ok = await cove(home, ["create", "a", "--from", `${srv.base}/mid.img`], { env: e });
          assertEquals(ok.code, 0, ok.stderr);
          assertEquals(srv.seen.slice(mark).map((s) => s.range), [`bytes=${MiB}-`]);
        },
      );
    });
  } finally {
    await srv.close();
  }
});

Deno.test("one cause, one line: nothing listening, or a port the runtime blocks, for push and pull", async (t) => {
  await withTempDir(async (home) => {
    await makeVm(home, "src", new Uint8Array(MiB));
    const e = env(home, { COVE_RETRIES: "2" });
    const closed = `127.0.0.1:${freePort()}`;

    await t.step("push to a port where nothing listens prints one line", async () => {
      const r = await cove(home, ["push", "src", `${closed}/a/b:1`, "--insecure"], { env: e });
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
      oneLine(
        r,
        6,
        /^cove: cannot connect to registry '127\.0\.0\.1:\d+': connection refused \(check the host and port/,
      );
    });

    await t.step(
      "a blocked port says so at once, with no retries and no hint about pulls",
      async () => {
        for (
          const args of [["push", "src", "127.0.0.1:6000/a/b:1"], ["pull", "127.0.0.1:6000/a/b:1"]]
        ) {
          const r = await cove(home, [...args, "--insecure"], { env: e });
          assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
          const line = oneLine(
            r,
            6,
            /^cove: cannot connect to registry '127\.0\.0\.1:6000': requests to port 6000 are blocked .*\(serve the registry on another port\)$/,
          );
          assert(!/pull/.test(line), line);
        }
      },
    );

    await t.step(
      "an http source on an unknown host names the cause, not 'fetch failed'",
      async () => {
        const r = await cove(home, ["create", "x", "--from", "http://no-such-host.invalid/x.img"], {
          env: e,
        });
        oneLine(r, 6, /^cove: cannot reach no-such-host\.invalid: unknown host \(check the URL/);
      },
    );

    await t.step("--debug logs one line per retry, then the cause once", async () => {
      const r = await cove(home, ["push", "src", `${closed}/a/b:1`, "--insecure", "--debug"], {
        env: e,
      });
      assertEquals(r.code, 6, r.stderr);
      const retries = r.stderr.split("\n").filter((l) => /retrying in/.test(l));
      assertEquals(retries.length, 2, r.stderr);
      assertMatch(retries[0], /connection refused while .*retrying in .* \(1\/2\)$/);
      const causes = r.stderr.split("\n").filter((l) =>
        l.startsWith("cove: cannot connect") && !/retrying/.test(l)
      );
      assertEquals(causes.length, 1, r.stderr);
    });
  });
});

Deno.test("clone REF@sha256:DIGEST comes from the cache when the registry is down", async () => {
  const reg = await startRegistry();
  const proxy = startProxy(reg.host);
  try {
    await withTempDir(async (home) => {
      await makeVm(home, "src", prng(2 * MiB, 3));
      const pushed = await pushVm(new Store(home), "src", [`${reg.host}/test/vm:1`], {
        home,
        insecure: true,
        credentials: NO_CREDS,
        chunkSize: MiB,
      });
      const e = env(home, { COVE_INSECURE_REGISTRIES: proxy.host });
      const byDigest = `${proxy.host}/test/vm@${pushed.digest}`;
      let r = await cove(home, ["clone", byDigest, "one"], { env: e });
      assertEquals(r.code, 0, r.stderr);
      await proxy.stop(); // the registry is now unreachable
      r = await cove(home, ["clone", byDigest, "two"], { env: e });
      assertEquals(r.code, 0, r.stderr);
      assert(await new Store(home).exists("two"));
      // A tag still needs the registry: it names no content.
      r = await cove(home, ["clone", `${proxy.host}/test/vm:1`, "three"], { env: e });
      oneLine(r, 6, /^cove: cannot connect to registry .* connection refused/);
    });
  } finally {
    await proxy.stop().catch(() => {});
    await reg.stop();
  }
});

linuxTest({
  needs: "mounts a small tmpfs to fill (mount -t tmpfs, as root)",
  root: true,
  name: "a pull that fills the disk says what it kept and how to remove it (Linux, root: tmpfs)",
  fn: async () => {
    const reg = await startRegistry();
    const mnt = await Deno.makeTempDir({ prefix: "cove-full-" });
    const mount = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=3m", "tmpfs", mnt],
      stderr: "piped",
    }).output();
    assert(mount.success, new TextDecoder().decode(mount.stderr));
    try {
      await withTempDir(async (src) => {
        await makeVm(src, "src", prng(6 * MiB, 5));
        await pushVm(new Store(src), "src", [`${reg.host}/test/big:1`], {
          home: src,
          insecure: true,
          credentials: NO_CREDS,
          chunkSize: MiB,
        });
      });
      const home = join(mnt, "home");
      const e = env(home, { COVE_INSECURE_REGISTRIES: reg.host });
      const r = await cove(home, ["pull", `${reg.host}/test/big:1`], { env: e });
      const line = oneLine(
        r,
        1,
        /^cove: the disk is full: pulling 127\.0\.0\.1:\d+\/test\/big:1 stopped \(the partial pull \(\d.*\) was kept to resume: free some space and run the same command again, or remove it with 'cove image prune'\)$/,
      );
      assert(!/nothing partial was kept/.test(line), line);
      const prune = await cove(home, ["image", "prune"], { env: e });
      assertEquals(prune.code, 0, prune.stderr);
      assertMatch(prune.stdout, /partial/);
      const left = await Array.fromAsync(Deno.readDir(join(home, "cache", "oci", "staging")))
        .catch(() => []);
      // Only the (empty) lock file of the pull may stay.
      assertEquals(left.filter((x) => x.isDirectory).map((x) => x.name), [], prune.stdout);
    } finally {
      await new Deno.Command("umount", { args: [mnt] }).output();
      await Deno.remove(mnt, { recursive: true }).catch(() => {});
      await reg.stop();
    }
  },
});

/** A qcow2 header whose L1 table lies outside the file: it probes as qcow2, and fails to convert. */
function brokenQcow2(): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(4096);
  const dv = new DataView(b.buffer);
  b.set([0x51, 0x46, 0x49, 0xfb]);
  dv.setUint32(4, 3); // version
  dv.setUint32(20, 16); // cluster bits
  dv.setBigUint64(24, 1n << 20n); // virtual size
  dv.setUint32(36, 1); // L1 entries
  dv.setBigUint64(40, 1n << 30n); // L1 offset, far past the end
  dv.setBigUint64(48, 65536n);
  dv.setUint32(56, 1);
  dv.setUint32(100, 104); // header length
  return b;
}

Deno.test("a download that fails validation is not kept, errors name the URL, and a changed file is fetched again", async (t) => {
  const srv = startLoopbackServer();
  const good = pseudoRandomBytes(MiB, 5);
  good[510] = 0x55;
  good[511] = 0xaa;
  try {
    await withTempDir(async (home) => {
      const e = env(home);
      const url = `${srv.base}/disk.qcow2`;

      await t.step(
        "a broken image fails with the URL in its line, and leaves the cache",
        async () => {
          srv.files.set("/disk.qcow2", { body: brokenQcow2(), etag: '"broken"' });
          const r = await cove(home, ["create", "a", "--from", url], { env: e });
          const line = oneLine(
            r,
            1,
            /^cove: http:\/\/127\.0\.0\.1:\d+\/disk\.qcow2 is not a valid qcow2 image: the L1 table/,
          );
          assert(!/[0-9a-f]{64}/.test(line), `the cache hash was shown: ${line}`);
          const cached = (await new BlobCache(join(home, "cache")).list()).filter((x) =>
            !x.partial
          );
          assertEquals(cached, [], "the failed download stayed in the cache");
        },
      );

      await t.step(
        "once the server is fixed, the same URL is downloaded again and works",
        async () => {
          srv.files.set("/disk.qcow2", { body: good, etag: '"good-1"' });
          const mark = srv.seen.length;
          const r = await cove(home, ["create", "a", "--from", url], { env: e });
          assertEquals(r.code, 0, r.stderr);
          assertEquals(srv.seen.slice(mark).length, 1, "no request reached the server");
        },
      );

      await t.step(
        "a cached URL is revalidated by ETag: unchanged is a 304, changed is fetched anew",
        async () => {
          let mark = srv.seen.length;
          let r = await cove(home, ["create", "b", "--from", url], { env: e });
          assertEquals(r.code, 0, r.stderr);
          assertEquals(srv.seen.slice(mark).map((s) => s.ifNoneMatch), ['"good-1"']);
          const changed = good.slice();
          changed[1000] ^= 0xff;
          srv.files.set("/disk.qcow2", { body: changed, etag: '"good-2"' });
          mark = srv.seen.length;
          r = await cove(home, ["create", "c", "--from", url], { env: e });
          assertEquals(r.code, 0, r.stderr);
          assertEquals(srv.seen.slice(mark).map((s) => s.ifNoneMatch), ['"good-1"', null]);
          // The disk is grown sparse to the default size: read only its start.
          const f = await Deno.open(join(home, "vms", "c", "disk.img"));
          const head = new Uint8Array(2048);
          await f.read(head);
          f.close();
          assertEquals(head[1000], changed[1000], "the VM got the old file");
        },
      );
    });
  } finally {
    await srv.close();
  }
});
