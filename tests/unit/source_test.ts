import {
  assert,
  assertCoveError,
  assertEquals,
  assertMatch,
  assertRejects,
} from "../helpers/assert.ts";
import { createHash } from "node:crypto";
import { BlobCache } from "../../core/images/cache.ts";
import {
  catalogChecksum,
  findInChecksumFile,
  knownNames,
  loadCatalog,
  resolveAlias,
} from "../../core/images/catalog.ts";
import { materializeSource, prepareSource, resolveSource } from "../../core/images/source.ts";
import { SEED_DISK } from "../../core/provision/seed.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { SpecSchema, type VmSpec } from "../../core/spec/schema.ts";
import { Bundle } from "../../core/store/bundle.ts";
import { CoveError } from "../../core/errors.ts";
import { startLoopbackServer } from "../helpers/loopback_http.ts";

const HOST = { os: "linux" as const, arch: "x86_64" as const, cpus: 2, memory: 8 * 2 ** 30 };

function baseSpec(arch: "x86_64" | "arm64" = "x86_64"): VmSpec {
  return applyDefaults(
    SpecSchema.parse({ arch, networks: [{ mode: "user", mac: "52:54:00:12:34:56" }] }),
    HOST,
    "dev",
  );
}

async function tool(bin: string, args: string[]): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(bin, { args, stdout: "piped", stderr: "piped" }).output();
  } catch {
    throw new Error(`${bin} is missing: install it (see .ci/apt-packages.txt)`);
  }
  if (!out.success) {
    throw new Error(`${bin} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** A 6 MiB raw disk with an MBR signature and some data, and its qcow2 twin (made by qemu-img). */
async function makeImages(dir: string): Promise<{ raw: string; qcow2: string; iso: string }> {
  const raw = `${dir}/src.raw`;
  const img = new Uint8Array(6 * 1024 * 1024);
  img[510] = 0x55;
  img[511] = 0xaa;
  for (let i = 0; i < 4096; i++) img[1024 * 1024 + i] = (i * 7) & 0xff;
  img.fill(0x5a, 5 * 1024 * 1024, 5 * 1024 * 1024 + 10000);
  await Deno.writeFile(raw, img);
  const qcow2 = `${dir}/src.qcow2`;
  await tool("qemu-img", ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  const iso = `${dir}/src.iso`;
  const isoDir = `${dir}/isodir`;
  await Deno.mkdir(isoDir);
  await Deno.writeTextFile(`${isoDir}/readme.txt`, "installer\n");
  await tool("genisoimage", ["-quiet", "-o", iso, "-V", "INSTALL", "-J", "-r", isoDir]);
  return { raw, qcow2, iso };
}

/** Compares files by digest: a failing deep-equality of megabytes would build a huge diff. */
async function fileSha(path: string): Promise<string> {
  return sha("sha256", await Deno.readFile(path));
}

function sha(algo: string, b: Uint8Array): string {
  return createHash(algo).update(b).digest("hex");
}

async function withTemp(fn: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cove-src-" });
  const saved = ["COVE_HOME", "COVE_CATALOG_BASE", "COVE_CATALOG"].map((k) =>
    [k, Deno.env.get(k)] as const
  );
  Deno.env.set("COVE_HOME", `${dir}/home`);
  try {
    await fn(dir);
  } finally {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("catalog: every image has x86_64 and arm64 and a checksum source; aliases point at images", () => {
  const cat = loadCatalog();
  for (const name of ["debian:12", "debian:13", "ubuntu:24.04", "ubuntu:22.04"]) {
    assert(name in cat.images, name);
  }
  assert(Object.keys(cat.images).some((n) => /^fedora:\d+$/.test(n)));
  for (const [name, img] of Object.entries(cat.images)) {
    for (const arch of ["x86_64", "arm64"] as const) {
      const a = img.arch[arch];
      assert(a, `${name} ${arch}`);
      assert(a.checksum || a.checksumUrl, `${name} ${arch} checksum`);
      assert(resolveAlias(name, arch, cat).url.startsWith("https://"), `${name} ${arch} url`);
    }
  }
  for (const target of Object.values(cat.aliases)) assert(target in cat.images, target);
});

Deno.test("an unknown alias is one line listing the known images", () => {
  const err = assertCoveError(() => resolveAlias("debian:11", "x86_64"));
  assertEquals(err.code, "catalog.unknown");
  assert(!err.message.includes("\n"));
  for (const n of knownNames()) assert(err.message.includes(n), n);
  assertMatch(err.message, /^unknown image 'debian:11'; known images: debian:12, debian:13, /);
});

Deno.test("COVE_CATALOG_BASE rewrites every mirror, and short aliases resolve", async () => {
  await withTemp(() => {
    Deno.env.set("COVE_CATALOG_BASE", "http://127.0.0.1:9/m/");
    const img = resolveAlias("debian", "arm64");
    assertEquals(img.name, "debian:13");
    assertEquals(
      img.url,
      "http://127.0.0.1:9/m/debian/trixie/latest/debian-13-genericcloud-arm64.qcow2",
    );
    assertEquals(img.checksumUrl, "http://127.0.0.1:9/m/debian/trixie/latest/SHA512SUMS");
  });
});

Deno.test("checksum files are read in GNU and BSD (Fedora, PGP-signed) styles", () => {
  const h256 = "a".repeat(64);
  const h512 = "b".repeat(128);
  assertEquals(
    findInChecksumFile(
      `${h512}  debian-12-genericcloud-amd64.qcow2\n${"c".repeat(128)}  other.qcow2\n`,
      "debian-12-genericcloud-amd64.qcow2",
    ),
    { algo: "sha512", hex: h512 },
  );
  assertEquals(
    findInChecksumFile(
      `${h256} *ubuntu-24.04-server-cloudimg-amd64.img\n`,
      "ubuntu-24.04-server-cloudimg-amd64.img",
    ),
    { algo: "sha256", hex: h256 },
  );
  const fedora =
    `-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2: 123 bytes\nSHA256 (Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2) = ${h256.toUpperCase()}\n-----BEGIN PGP SIGNATURE-----\nxyz\n`;
  assertEquals(findInChecksumFile(fedora, "Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2"), {
    algo: "sha256",
    hex: h256,
  });
  assertEquals(findInChecksumFile(fedora, "missing.qcow2"), undefined);
});

Deno.test("--from debian:12 downloads through a rewritten catalog, verifies SHA512SUMS, converts qcow2 and attaches a seed", async () => {
  await withTemp(async (dir) => {
    const { raw, qcow2 } = await makeImages(dir);
    const srv = startLoopbackServer();
    try {
      const q = await Deno.readFile(qcow2);
      srv.files.set("/debian/bookworm/latest/debian-12-genericcloud-amd64.qcow2", { body: q });
      srv.files.set("/debian/bookworm/latest/SHA512SUMS", {
        body: new TextEncoder().encode(
          `${"0".repeat(128)}  debian-12-genericcloud-arm64.qcow2\n${
            sha("sha512", q)
          }  debian-12-genericcloud-amd64.qcow2\n`,
        ),
      });
      Deno.env.set("COVE_CATALOG_BASE", srv.base);
      const staging = new Bundle("dev", `${dir}/staging`);
      await Deno.mkdir(staging.dir);
      const events: string[] = [];
      const populate = await prepareSource("debian:12", { onProgress: (e) => events.push(e.type) });
      const out = await populate(staging, baseSpec());
      assertEquals(out.os, "linux");
      assertEquals(out.disks[0].path, "disk.img");
      assertEquals(out.disks[0].format, "raw");
      assertEquals(
        out.disks[0].size,
        "16GiB",
        "the default size is kept when larger than the image",
      );
      assertEquals(await fileSha(staging.resolve("disk.img")), await fileSha(raw));
      assertEquals(out.disks.at(-1)!.path, SEED_DISK);
      assertEquals([out.disks.at(-1)!.media, out.disks.at(-1)!.readOnly], ["disk", true]);
      assert((await Deno.stat(staging.resolve(SEED_DISK))).size > 0);
      assert(events.includes("done") && events.includes("resolve"));
      assertEquals((await new BlobCache().list()).length, 1);

      // A second VM from the same alias reads only the checksum file.
      const staging2 = new Bundle("dev2", `${dir}/staging2`);
      await Deno.mkdir(staging2.dir);
      const n = srv.seen.length;
      await (await prepareSource("debian:12"))(staging2, baseSpec());
      assertEquals(srv.seen.slice(n).map((r) => r.path), ["/debian/bookworm/latest/SHA512SUMS"]);
    } finally {
      await srv.close();
    }
  });
});

Deno.test("a catalog image whose checksum does not match leaves no cache entry and no disk", async () => {
  await withTemp(async (dir) => {
    const { qcow2 } = await makeImages(dir);
    const srv = startLoopbackServer();
    try {
      srv.files.set("/ubuntu/24.04/release/ubuntu-24.04-server-cloudimg-arm64.img", {
        body: await Deno.readFile(qcow2),
      });
      srv.files.set("/ubuntu/24.04/release/SHA256SUMS", {
        body: new TextEncoder().encode(
          `${"1".repeat(64)} *ubuntu-24.04-server-cloudimg-arm64.img\n`,
        ),
      });
      Deno.env.set("COVE_CATALOG_BASE", srv.base);
      const staging = new Bundle("dev", `${dir}/staging`);
      await Deno.mkdir(staging.dir);
      const populate = await prepareSource("ubuntu:24.04");
      const err = await assertCoveError(() => populate(staging, baseSpec("arm64")));
      assertEquals(err.code, "download.checksum");
      assertEquals(await new BlobCache().list(), []);
      assertEquals(await Array.fromAsync(Deno.readDir(staging.dir)), []);
      // A checksum file that does not list the image is one line too.
      srv.files.set("/ubuntu/24.04/release/SHA256SUMS", { body: new TextEncoder().encode("") });
      const e2 = await assertRejects(
        () => catalogChecksum(resolveAlias("ubuntu:24.04", "arm64")),
        CoveError,
      );
      assertEquals(e2.code, "catalog.checksum_missing");
    } finally {
      await srv.close();
    }
  });
});

Deno.test("a URL that is not a disk image gets one line and leaves no cache entry", async () => {
  await withTemp(async (dir) => {
    const srv = startLoopbackServer();
    try {
      srv.files.set("/page", {
        body: new TextEncoder().encode("<!doctype html><p>hi</p>"),
        contentType: "text/html; charset=utf-8",
      });
      srv.files.set("/notes.img", {
        body: new TextEncoder().encode("just some text, long enough to sniff as text\n".repeat(20)),
      });
      const staging = new Bundle("dev", `${dir}/staging`);
      await Deno.mkdir(staging.dir);
      const e1 = await assertRejects(
        async () => (await prepareSource(`${srv.base}/page`))(staging, baseSpec()),
        CoveError,
      );
      assertEquals(e1.code, "source.not_image");
      assertMatch(e1.message, /is a web page \(text\/html\), not a disk image$/);
      const e2 = await assertRejects(
        async () => (await prepareSource(`${srv.base}/notes.img`))(staging, baseSpec()),
        CoveError,
      );
      assertEquals(e2.code, "source.not_image");
      assertMatch(e2.message, /notes\.img is not a disk image \(text/);
      assertEquals(await new BlobCache().list(), []);
    } finally {
      await srv.close();
    }
  });
});

Deno.test("local sources: raw is cloned, qcow2 converted, an ISO attached as a cdrom with a blank root disk", async () => {
  await withTemp(async (dir) => {
    const { raw, qcow2, iso } = await makeImages(dir);
    for (const [src, kind] of [[raw, "raw"], [qcow2, "qcow2"]] as const) {
      const r = await resolveSource(src);
      assertEquals(r.kind, kind);
      const staging = new Bundle("dev", `${dir}/staging-${kind}`);
      await Deno.mkdir(staging.dir);
      const out = await materializeSource(r, staging, baseSpec(), { cloudInit: false });
      assertEquals(await fileSha(staging.resolve("disk.img")), await fileSha(raw));
      assertEquals(out.disks.length, 1, "no seed when cloud-init is off");
    }
    const r = await resolveSource(iso);
    assertEquals(r.kind, "iso");
    const staging = new Bundle("dev", `${dir}/staging-iso`);
    await Deno.mkdir(staging.dir);
    const out = await materializeSource(r, staging, baseSpec());
    assertEquals(out.disks.map((d) => [d.path, d.media, d.readOnly]), [
      ["disk.img", "disk", false],
      [iso, "cdrom", true],
    ]);
  });
});

Deno.test("bad --from values fail before anything is staged, each with one line", async () => {
  await withTemp(async (dir) => {
    const missing = await assertCoveError(() => resolveSource(`${dir}/nope.img`));
    assertEquals(missing.code, "source.not_found");
    const alias = await assertCoveError(() => resolveSource("centos:7"));
    assertEquals(alias.code, "catalog.unknown");
    await Deno.writeFile(
      `${dir}/x.xz`,
      new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
    );
    const xz = await assertCoveError(() => resolveSource(`${dir}/x.xz`));
    assertEquals(xz.code, "source.not_image");
    assertMatch(xz.line(), /xz-compressed data.*decompress it first/);
    const ftp = await assertCoveError(() => resolveSource("ftp://example/x.img"));
    assertEquals(ftp.code, "source.scheme");
    const oci = await resolveSource("oci://ghcr.io/cove/debian:12");
    assertEquals(oci.kind, "oci");
    const staging = new Bundle("dev", dir);
    const routed = await assertRejects(
      () => materializeSource(oci, staging, baseSpec()),
      CoveError,
    );
    assertEquals(routed.code, "source.elsewhere");
    assertEquals((await resolveSource("ipsw:latest")).kind, "ipsw");
  });
});
