import { assert, assertCoveError, assertEquals, assertRejects } from "../helpers/assert.ts";
import { createHash } from "node:crypto";
import {
  BlobCache,
  type CacheEntry,
  type CacheProvider,
  listCaches,
  pruneCaches,
} from "../../core/images/cache.ts";
import { parseDuration } from "../../core/units.ts";
import { download, type DownloadEvent, parseChecksum } from "../../core/images/download.ts";
import { CoveError } from "../../core/errors.ts";
import { pseudoRandomBytes, startLoopbackServer } from "../helpers/loopback_http.ts";
import { linuxTest } from "../helpers/guard.ts";

const SIZE = 3 * 1024 * 1024 + 123;

function sha(algo: "sha256" | "sha512", b: Uint8Array): string {
  return createHash(algo).update(b).digest("hex");
}

async function withEnv(
  fn: (
    ctx: {
      cache: BlobCache;
      srv: ReturnType<typeof startLoopbackServer>;
      body: Uint8Array<ArrayBuffer>;
    },
  ) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "cove-dl-" });
  const srv = startLoopbackServer();
  const body = pseudoRandomBytes(SIZE, 7);
  try {
    await fn({ cache: new BlobCache(`${dir}/cache`), srv, body });
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) if (!e.name.endsWith(".lock")) out.push(e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out;
}

Deno.test("download streams a file into the cache, verifies sha256, and a second call is a cache hit", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    srv.files.set("/disk.img", { body });
    const events: DownloadEvent[] = [];
    const checksum = parseChecksum(`sha256:${sha("sha256", body)}`);
    const got = await download(`${srv.base}/disk.img`, {
      cache,
      checksum,
      onProgress: (e) => events.push(e),
    });
    assertEquals(got.cached, false);
    assertEquals(got.size, SIZE);
    assertEquals(got.digest, `sha256:${checksum.hex}`);
    assertEquals(sha("sha256", await Deno.readFile(got.path)), checksum.hex);
    assertEquals(events[0].type, "start");
    assertEquals(events.at(-1)?.type, "done");
    const n = srv.seen.length;
    const again = await download(`${srv.base}/disk.img`, { cache, checksum });
    assertEquals(again.cached, true);
    assertEquals(srv.seen.length, n, "a verified cache hit must not touch the network");
    // Found by URL too, without a checksum.
    assertEquals((await download(`${srv.base}/disk.img`, { cache })).cached, true);
    assertEquals(await files(cache.partialDir), []);
  });
});

Deno.test("a connection dropped halfway fails with one line, keeps the partial, and the next try resumes with Range", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    srv.files.set("/drop.img", { body, dropAfter: 1_500_000, dropTimes: 1, etag: '"v1"' });
    const url = `${srv.base}/drop.img`;
    const err = await assertCoveError(() => download(url, { cache, retries: 0 }));
    assertEquals(err.code, "download.interrupted");
    assert(!err.message.includes("\n"));
    const partial = await cache.partialPaths(url);
    const kept = (await Deno.stat(partial.data)).size;
    assert(kept > 0 && kept < SIZE, `partial holds ${kept} bytes`);
    assertEquals((await cache.list()).filter((e) => !e.partial), [], "no complete cache entry");

    const got = await download(url, {
      cache,
      checksum: { algo: "sha256", hex: sha("sha256", body) },
    });
    assertEquals(got.size, SIZE);
    const last = srv.seen.at(-1)!;
    assertEquals(last.range, `bytes=${kept}-`);
    assertEquals(last.ifRange, '"v1"');
    assertEquals(await files(cache.partialDir), []);
  });
});

Deno.test("download retries by itself and resumes after a drop", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    srv.files.set("/flaky.img", { body, dropAfter: 1_000_000, dropTimes: 2 });
    const events: DownloadEvent[] = [];
    const got = await download(`${srv.base}/flaky.img`, {
      cache,
      checksum: { algo: "sha512", hex: sha("sha512", body) },
      onProgress: (e) => events.push(e),
    });
    assertEquals(got.digest, `sha256:${sha("sha256", body)}`);
    assertEquals(events.filter((e) => e.type === "retry").length, 2);
    assert(srv.seen.slice(1).every((r) => r.range !== null), "retries ask for a range");
    // The sha512 was recorded as an alias: a lookup by it is a hit.
    const n = srv.seen.length;
    const again = await download(`${srv.base}/other-name.img`, {
      cache,
      checksum: { algo: "sha512", hex: sha("sha512", body) },
    });
    assertEquals(again.cached, true);
    assertEquals(srv.seen.length, n);
  });
});

Deno.test("a changed file (If-Range mismatch) restarts from zero instead of splicing", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    const url = `${srv.base}/changing.img`;
    srv.files.set("/changing.img", { body, dropAfter: 2_000_000, dropTimes: 1, etag: '"old"' });
    await assertCoveError(() => download(url, { cache, retries: 0 }));
    const fresh = pseudoRandomBytes(SIZE, 99);
    srv.files.set("/changing.img", { body: fresh, etag: '"new"' });
    const got = await download(url, {
      cache,
      checksum: { algo: "sha256", hex: sha("sha256", fresh) },
    });
    assertEquals(got.size, SIZE);
    assertEquals(srv.seen.at(-1)!.ifRange, '"old"');
  });
});

Deno.test("a server that validates by Last-Modified only: an unchanged file is a 304 and a cache hit, a changed one is fetched anew", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    const url = `${srv.base}/dated.img`;
    const may = "Fri, 01 May 2026 10:00:00 GMT";
    srv.files.set("/dated.img", { body, noEtag: true, lastModified: may });
    const first = await download(url, { cache });
    assertEquals(first.cached, false);
    const again = await download(url, { cache });
    assertEquals(again.cached, true);
    assertEquals(srv.seen.at(-1)!.ifModifiedSince, may);
    assertEquals(srv.seen.at(-1)!.ifNoneMatch, null);
    const fresh = pseudoRandomBytes(SIZE, 42);
    srv.files.set("/dated.img", {
      body: fresh,
      noEtag: true,
      lastModified: "Mon, 01 Jun 2026 10:00:00 GMT",
    });
    const changed = await download(url, { cache });
    assertEquals(changed.cached, false);
    assertEquals(changed.digest, `sha256:${sha("sha256", fresh)}`);
  });
});

Deno.test("a checksum mismatch gives one line and leaves no cache entry and no partial", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    srv.files.set("/bad.img", { body });
    const wrong = sha("sha256", new Uint8Array([1, 2, 3]));
    const err = await assertRejects(
      () => download(`${srv.base}/bad.img`, { cache, checksum: { algo: "sha256", hex: wrong } }),
      CoveError,
    );
    assertEquals(err.code, "download.checksum");
    assert(err.message.startsWith(`checksum mismatch for ${srv.base}/bad.img`));
    assertEquals(await cache.list(), []);
    assertEquals(await files(cache.blobsDir), []);
    assertEquals(await files(cache.partialDir), []);
  });
});

Deno.test("a 404 is a not-found error and leaves nothing", async () => {
  await withEnv(async ({ cache, srv }) => {
    const err = await assertRejects(
      () => download(`${srv.base}/missing.img`, { cache }),
      CoveError,
    );
    assertEquals(err.code, "download.not_found");
    assertEquals(err.exit, 3);
    assertEquals(await cache.list(), []);
    srv.files.set("/broken", { body: new Uint8Array(), status: 503 });
    const e2 = await assertRejects(
      () => download(`${srv.base}/broken`, { cache, retries: 0 }),
      CoveError,
    );
    assertEquals(e2.code, "download.server");
  });
});

Deno.test("a stalled server times out with one line and the partial stays resumable", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    srv.files.set("/stall.img", { body, stallAfter: 500_000 });
    const url = `${srv.base}/stall.img`;
    const err = await assertRejects(
      () => download(url, { cache, retries: 0, idleTimeoutMs: 300 }),
      CoveError,
    );
    assertEquals(err.code, "download.timeout");
    assert(err.message.includes("stalled"));
    srv.files.set("/stall.img", { body });
    const got = await download(url, { cache, idleTimeoutMs: 5000 });
    assertEquals(got.size, SIZE);
    assert(srv.seen.at(-1)!.range?.startsWith("bytes="), "resumed with a range");
  });
});

Deno.test("an unreachable host is a network error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Bind and close a port so nothing listens on it.
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    const err = await assertRejects(
      () => download(`http://127.0.0.1:${port}/x.img`, { cache: new BlobCache(dir), retries: 0 }),
      CoveError,
    );
    assertEquals(err.code, "download.unreachable");
    assertEquals(err.exit, 6);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the check hook refuses a web page before its body is stored", async () => {
  await withEnv(async ({ cache, srv }) => {
    srv.files.set("/index.html", {
      body: new TextEncoder().encode("<html></html>"),
      contentType: "text/html",
    });
    const err = await assertRejects(
      () =>
        download(`${srv.base}/index.html`, {
          cache,
          check: (res) => {
            if (res.headers.get("Content-Type")?.startsWith("text/html")) {
              throw new CoveError("source.not_image", "a web page, not a disk image");
            }
          },
        }),
      CoveError,
    );
    assertEquals(err.code, "source.not_image");
    assertEquals(await cache.list(), []);
  });
});

Deno.test("prune removes entries older than a duration, then least recently used ones over budget, across providers", async () => {
  const removed: string[] = [];
  const fake = (kind: string, entries: CacheEntry[]): CacheProvider => ({
    kind,
    list: () => Promise.resolve(entries.filter((e) => !removed.includes(e.id))),
    remove: (ids) => {
      removed.push(...ids);
      return Promise.resolve(
        entries.filter((e) => ids.includes(e.id)).reduce((s, e) => s + e.size, 0),
      );
    },
  });
  const day = 86_400_000;
  const now = 100 * day;
  const a = fake("download", [
    { kind: "download", id: "sha256:a", size: 100, lastUsed: now - 40 * day, source: "u1" },
    { kind: "download", id: "sha256:b", size: 300, lastUsed: now - 2 * day, source: "u2" },
  ]);
  const b = fake("oci", [
    { kind: "oci", id: "sha256:c", size: 200, lastUsed: now - 1 * day, source: "ghcr.io/x" },
    { kind: "oci", id: "sha256:d", size: 50, lastUsed: now - 10 * day, source: "ghcr.io/y" },
  ]);
  assertEquals((await listCaches([a, b])).map((e) => e.id), [
    "sha256:c",
    "sha256:b",
    "sha256:d",
    "sha256:a",
  ]);
  const dry = await pruneCaches([a, b], { olderThanMs: parseDuration("30d"), dryRun: true, now });
  assertEquals(dry.removed.map((e) => e.id), ["sha256:a"]);
  assertEquals(removed, []);
  const r = await pruneCaches([a, b], { olderThanMs: parseDuration("30d"), budget: 500, now });
  // a is too old; then d, the least recently used, goes to fit 550 bytes into 500.
  assertEquals(r.removed.map((e) => e.id).sort(), ["sha256:a", "sha256:d"]);
  assertEquals(r.freed, 150);
  assertEquals(r.keptSize, 500);
});

linuxTest(
  { needs: "mounts a 1 MiB tmpfs (mount -t tmpfs)", root: true },
  "a full disk gives one line and leaves no cache entry",
  async () => {
    const mnt = await Deno.makeTempDir({ prefix: "cove-full-" });
    const mount = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
    }).output();
    if (!mount.success) {
      await Deno.remove(mnt);
      throw new Error(
        `this test needs root to mount a 1 MiB tmpfs: ${
          new TextDecoder().decode(mount.stderr).trim()
        }`,
      );
    }
    const srv = startLoopbackServer();
    try {
      srv.files.set("/big.img", { body: pseudoRandomBytes(SIZE, 3) });
      const cache = new BlobCache(`${mnt}/cache`);
      const err = await assertRejects(
        () => download(`${srv.base}/big.img`, { cache, retries: 0 }),
        CoveError,
      );
      assertEquals(err.code, "io.no_space");
      assert(err.line().includes("the disk is full"));
      assertEquals((await cache.list()).filter((e) => !e.partial), []);
      assertEquals(await files(cache.blobsDir), []);
    } finally {
      await srv.close();
      await new Deno.Command("umount", { args: [mnt] }).output();
      await Deno.remove(mnt, { recursive: true });
    }
  },
);

Deno.test("a URL's token never reaches errors, progress, listings or index.json, yet the exact URL still hits the cache", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    srv.files.set("/signed.img", { body, dropAfter: 1_000_000, dropTimes: 1 });
    const url = `${srv.base}/signed.img?token=s3cr3t`;
    const err = await assertCoveError(() => download(url, { cache, retries: 0 }));
    assert(!err.message.includes("s3cr3t"), err.message);
    const partial = (await cache.list()).find((e) => e.partial);
    assert(partial && !partial.source.includes("s3cr3t"), partial?.source);
    const events: DownloadEvent[] = [];
    await download(url, { cache, onProgress: (e) => events.push(e) });
    assert(events.length > 0 && !JSON.stringify(events).includes("s3cr3t"));
    const listed = await cache.list();
    assertEquals(listed.length, 1);
    assertEquals(listed[0].source, `${srv.base}/signed.img?…`);
    const index = await Deno.readTextFile(`${cache.dir}/index.json`);
    assert(!index.includes("s3cr3t"), "index.json holds the token");
    assertEquals((await download(url, { cache })).cached, true);
    // Another token is another URL: not served from this entry by URL alone.
    const other = await download(`${srv.base}/signed.img?token=other`, { cache });
    assertEquals(other.digest, listed[0].id);
  });
});

Deno.test("prune skips a partial download whose downloader still holds its lock", async () => {
  await withEnv(async ({ cache, srv, body }) => {
    srv.files.set("/busy.img", { body, dropAfter: 1_000_000, dropTimes: 1 });
    const url = `${srv.base}/busy.img`;
    await assertCoveError(() => download(url, { cache, retries: 0 }));
    const paths = await cache.partialPaths(url);
    const id = (await cache.list()).find((e) => e.partial)!.id;
    const held = await Deno.open(`${paths.meta}.lock`, { read: true, write: true });
    try {
      await held.lock(true);
      assertEquals(await cache.remove([id]), 0);
      assert((await Deno.stat(paths.data)).size > 0, "a running download's data was deleted");
    } finally {
      held.close();
    }
    assert((await cache.remove([id])) > 0);
    assertEquals(await files(cache.partialDir), []);
  });
});
