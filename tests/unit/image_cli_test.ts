import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { startLoopbackServer } from "../helpers/loopback_http.ts";

/** A small raw disk image with an MBR signature. */
function rawImage(): Uint8Array<ArrayBuffer> {
  const img = new Uint8Array(2 * 1024 * 1024);
  img[510] = 0x55;
  img[511] = 0xaa;
  img.fill(7, 4096, 8192);
  return img;
}

Deno.test("cove create --from URL reports JSON progress on stderr, and image ls/prune manage the cache", async () => {
  await withTempDir(async (home) => {
    const srv = startLoopbackServer();
    try {
      const body = rawImage();
      srv.files.set("/disk.img", { body });
      const r = await cove(home, [
        "create",
        "web",
        "--from",
        `${srv.base}/disk.img`,
        "--format",
        "json",
      ]);
      assertEquals(r.code, 0, r.stderr);
      const events = r.stderr.trim().split("\n").map((l) => JSON.parse(l).progress);
      assertEquals(events[0].type, "start");
      assertEquals(events.at(-1).type, "done");
      assertEquals(JSON.parse(r.stdout).name, "web");
      // The root disk starts with the image (and was grown sparse to the default size).
      const f = await Deno.open(`${home}/vms/web/disk.img`);
      const head = new Uint8Array(body.length);
      let got = 0;
      while (got < head.length) got += (await f.read(head.subarray(got))) ?? head.length;
      f.close();
      assert(head.every((b, i) => b === body[i]), "disk.img starts with the downloaded image");

      const ls = await cove(home, ["image", "ls", "--format", "json"]);
      assertEquals(ls.code, 0, ls.stderr);
      const entries = JSON.parse(ls.stdout);
      assertEquals(entries.length, 1);
      assertEquals(entries[0].kind, "download");
      assertEquals(entries[0].source, `${srv.base}/disk.img`);
      assertEquals(entries[0].size, body.length);
      const text = await cove(home, ["image", "ls"]);
      assertMatch(text.stdout, /^KIND\s+ID\s+SIZE\s+USED\s+SOURCE\ndownload\s+sha256:/);

      // A second VM from the same URL is a cache hit, revalidated with one conditional GET (304).
      const n = srv.seen.length;
      const again = await cove(home, ["create", "web2", "--from", `${srv.base}/disk.img`]);
      assertEquals(again.code, 0, again.stderr);
      assertEquals(srv.seen.slice(n).map((s) => s.ifNoneMatch), [`"${body.length}"`]);

      const keep = await cove(home, ["image", "prune", "--older-than", "30d"]);
      assertEquals(keep.code, 0, keep.stderr);
      assertEquals(keep.stdout, "");
      const prune = await cove(home, ["image", "prune", "--budget", "0B"]);
      assertEquals(prune.code, 0, prune.stderr);
      assertMatch(prune.stdout, /^removed download sha256:/);
      assertEquals(JSON.parse((await cove(home, ["image", "ls", "--format", "json"])).stdout), []);
      // The VMs keep their disks.
      assert((await Deno.stat(`${home}/vms/web/disk.img`)).size >= body.length);
    } finally {
      await srv.close();
    }
  });
});

Deno.test("cove create --from a bad source fails with one line and leaves no VM", async () => {
  await withTempDir(async (home) => {
    const srv = startLoopbackServer();
    try {
      const missing = await cove(home, ["create", "x", "--from", `${srv.base}/nope.qcow2`]);
      assertEquals(missing.code, 3);
      assertEquals(missing.stderr.trim().split("\n").length, 1);
      assertMatch(missing.stderr, /^cove: .*nope\.qcow2 was not found \(404/);
      const unknown = await cove(home, ["create", "x", "--from", "debian:7"]);
      assertEquals(unknown.code, 3);
      assertMatch(unknown.stderr, /^cove: unknown image 'debian:7'; known images: debian:12, /);
      const list = await cove(home, ["list", "--format", "json"]);
      assertEquals(JSON.parse(list.stdout), []);
    } finally {
      await srv.close();
    }
  });
});
