/** OCI pieces that need no registry: references, Tart's manifest and config, auth parsing. */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { assert, assertCoveError, assertEquals, assertMatch } from "../helpers/assert.ts";
import { withTempDir } from "../helpers/cli.ts";
import { CoveError } from "../../core/errors.ts";
import {
  formatReference,
  looksLikeReference,
  normalizeRegistry,
  parseReference,
} from "../../core/oci/reference.ts";
import {
  ANN_DISK_SIZE,
  ANN_UNCOMPRESSED_DIGEST,
  ANN_UNCOMPRESSED_SIZE,
  buildManifest,
  DOCKER_MANIFEST,
  OCI_CONFIG,
  OCI_MANIFEST,
  parseTartConfig,
  parseTartManifest,
  specFromTart,
  TART_CONFIG,
  TART_DISK_V1,
  TART_DISK_V2,
  TART_NVRAM,
  tartFromSpec,
} from "../../core/oci/tart.ts";
import { dockerCredentials, parseChallenge, redact } from "../../core/oci/auth.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import type { HostInfo } from "../../core/host.ts";

const te = new TextEncoder();
const D = (c: string) => `sha256:${c.repeat(64)}`;

function code(fn: () => unknown): string {
  const e = assertCoveError(fn);
  return `${e.code}: ${e.message}`;
}

Deno.test("reference parsing fills Docker Hub defaults and keeps hosts with ports", () => {
  assertEquals(parseReference("debian"), {
    registry: "docker.io",
    repository: "library/debian",
    tag: "latest",
    digest: undefined,
  });
  assertEquals(
    parseReference("ghcr.io/cirruslabs/macos-sequoia-base:latest").repository,
    "cirruslabs/macos-sequoia-base",
  );
  const r = parseReference("oci://localhost:5000/a/b/c:v1.2");
  assertEquals([r.registry, r.repository, r.tag], ["localhost:5000", "a/b/c", "v1.2"]);
  const d = parseReference(`127.0.0.1:5000/vm@${D("a")}`);
  assertEquals([d.registry, d.tag, d.digest], ["127.0.0.1:5000", undefined, D("a")]);
  assertEquals(formatReference(parseReference(`me/vm:1@${D("b")}`)), `docker.io/me/vm:1@${D("b")}`);
});

Deno.test("reference parsing rejects bad names with one usage line", () => {
  assertMatch(
    code(() => parseReference("ghcr.io/Me/VM:1")),
    /^oci\.bad_reference: .*'Me' is not a valid repository/,
  );
  assertMatch(code(() => parseReference("https://ghcr.io/me/vm")), /leave out the URL scheme/);
  assertMatch(code(() => parseReference("ghcr.io/me/vm@sha256:abc")), /not a sha256 digest/);
  assertMatch(code(() => parseReference("ghcr.io/me/vm:")), /not a valid tag/);
});

Deno.test("looksLikeReference tells registry references from VM names and paths", () => {
  assert(looksLikeReference("ghcr.io/cirruslabs/ubuntu:latest"));
  assert(looksLikeReference("oci://localhost:5000/vm"));
  assert(!looksLikeReference("dev"));
  assert(!looksLikeReference("./disk.img"));
  assert(!looksLikeReference("/tmp/disk.img"));
  // No VM name has a '/': a malformed reference is still a reference, and says what is wrong.
  assert(looksLikeReference("ghcr.io/Me/VM:bad tag"));
});

Deno.test("normalizeRegistry accepts URLs and Docker Hub aliases", () => {
  assertEquals(normalizeRegistry("https://GHCR.io/"), "ghcr.io");
  assertEquals(normalizeRegistry("index.docker.io"), "docker.io");
  assertEquals(normalizeRegistry("localhost:5000"), "localhost:5000");
});

function tartManifest(
  layers: {
    mediaType: string;
    size?: number;
    digest?: string;
    annotations?: Record<string, string>;
  }[],
  extra: Record<string, unknown> = {},
) {
  return te.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, size: 10, digest: D("c") },
    layers: layers.map((l, i) => ({ size: 1, digest: D(String(i % 10)), ...l })),
    ...extra,
  }));
}

Deno.test("a Tart manifest gives disk layers with offsets from their annotations", () => {
  const img = parseTartManifest(
    "r",
    tartManifest([
      { mediaType: TART_CONFIG },
      {
        mediaType: TART_DISK_V2,
        annotations: { [ANN_UNCOMPRESSED_SIZE]: "100", [ANN_UNCOMPRESSED_DIGEST]: D("d") },
      },
      { mediaType: TART_DISK_V2, annotations: { [ANN_UNCOMPRESSED_SIZE]: "50" } },
      { mediaType: TART_NVRAM },
    ], { annotations: { [ANN_DISK_SIZE]: "150" } }),
  );
  assertEquals(img.disks.map((d) => [d.offset, d.uncompressedSize]), [[0, 100], [100, 50]]);
  assertEquals(img.diskSize, 150);
  assertEquals(img.disks[0].uncompressedDigest, D("d"));
});

Deno.test("container images, indexes, disk.v1 and odd artifacts are refused clearly", () => {
  const docker = te.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: DOCKER_MANIFEST,
    config: {
      mediaType: "application/vnd.docker.container.image.v1+json",
      size: 1,
      digest: D("a"),
    },
    layers: [{
      mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
      size: 1,
      digest: D("b"),
    }],
  }));
  assertMatch(
    code(() => parseTartManifest("busybox", docker)),
    /^oci\.not_vm: 'busybox' is not a VM image: it is a Docker container image$/,
  );
  const oci = tartManifest([{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" }]);
  assertMatch(code(() => parseTartManifest("x", oci)), /container image/);
  const index = te.encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [],
    }),
  );
  assertMatch(code(() => parseTartManifest("x", index)), /image index/);
  const v1 = tartManifest([{ mediaType: TART_CONFIG }, { mediaType: TART_DISK_V1 }, {
    mediaType: TART_NVRAM,
  }]);
  assertMatch(
    code(() => parseTartManifest("old", v1)),
    /^oci\.unsupported: 'old' uses Tart's old disk format .* which is unsupported$/,
  );
  const noSize = tartManifest([{ mediaType: TART_CONFIG }, { mediaType: TART_DISK_V2 }]);
  assertMatch(code(() => parseTartManifest("x", noSize)), /uncompressed-size/);
  const wrongTotal = tartManifest(
    [{ mediaType: TART_CONFIG }, {
      mediaType: TART_DISK_V2,
      annotations: { [ANN_UNCOMPRESSED_SIZE]: "5" },
    }],
    { annotations: { [ANN_DISK_SIZE]: "6" } },
  );
  assertMatch(code(() => parseTartManifest("x", wrongTotal)), /add up to 5 bytes/);
});

Deno.test("cove's manifest has Tart's layer order, media types and annotations", () => {
  const bytes = buildManifest({
    ociConfig: { mediaType: OCI_CONFIG, size: 3, digest: D("a") },
    config: { mediaType: TART_CONFIG, size: 4, digest: D("b") },
    disks: [{
      mediaType: TART_DISK_V2,
      size: 5,
      digest: D("c"),
      annotations: { [ANN_UNCOMPRESSED_SIZE]: "9", [ANN_UNCOMPRESSED_DIGEST]: D("d") },
    }],
    nvram: { mediaType: TART_NVRAM, size: 6, digest: D("e") },
    diskSize: 9,
    uploadTime: new Date("2025-01-02T03:04:05.678Z"),
  });
  const m = JSON.parse(new TextDecoder().decode(bytes));
  assertEquals(m.mediaType, OCI_MANIFEST);
  assertEquals(m.config.mediaType, OCI_CONFIG);
  assertEquals(m.layers.map((l: { mediaType: string }) => l.mediaType), [
    TART_CONFIG,
    TART_DISK_V2,
    TART_NVRAM,
  ]);
  assertEquals(m.annotations, {
    [ANN_DISK_SIZE]: "9",
    "org.cirruslabs.tart.upload-time": "2025-01-02T03:04:05Z",
  });
  assertEquals(m.layers[1].annotations[ANN_UNCOMPRESSED_DIGEST], D("d"));
  // Round-trips through the validator.
  assertEquals(parseTartManifest("x", bytes).diskSize, 9);
});

const HOST: HostInfo = { os: "linux", arch: "x86_64", cpus: 8, memory: 16 * 2 ** 30 };

Deno.test("Tart's macOS config translates to a cove spec and back", () => {
  const cfg = parseTartConfig(
    "r",
    te.encode(JSON.stringify({
      version: 1,
      os: "darwin",
      arch: "arm64",
      cpuCountMin: 4,
      cpuCount: 6,
      memorySizeMin: 8589934592,
      memorySize: 12884901888,
      macAddress: "AA:BB:CC:DD:EE:01",
      display: { width: 1920, height: 1080 },
      ecid: "ZWNpZA==",
      hardwareModel: "aHdtb2RlbA==",
      diskFormat: "raw",
    })),
  );
  const { spec, vzHardwareModel, vzMachineIdentifier } = specFromTart(cfg);
  assertEquals([spec.os, spec.arch, spec.cpus, spec.memory], ["macos", "arm64", 6, "12GiB"]);
  assertEquals(spec.networks?.[0].mac, "aa:bb:cc:dd:ee:01");
  assertEquals(spec.display, { width: 1920, height: 1080, ppi: 144 });
  assertEquals(spec.boot, { loader: "macos" });
  assertEquals([vzHardwareModel, vzMachineIdentifier], ["aHdtb2RlbA==", "ZWNpZA=="]);
  const back = tartFromSpec(applyDefaults(spec, { ...HOST, arch: "arm64" }, "m"), {
    vzHardwareModel,
    vzMachineIdentifier,
  });
  assertEquals(
    [
      back.os,
      back.arch,
      back.cpuCount,
      back.memorySize,
      back.macAddress,
      back.display,
      back.ecid,
      back.hardwareModel,
    ],
    [
      "darwin",
      "arm64",
      6,
      12884901888,
      "aa:bb:cc:dd:ee:01",
      { width: 1920, height: 1080, unit: "pt" },
      "ZWNpZA==",
      "aHdtb2RlbA==",
    ],
  );
  assert(back.cpuCountMin <= back.cpuCount && back.memorySizeMin <= back.memorySize);
});

Deno.test("Tart's Linux amd64 config becomes an EFI x86_64 spec, headless without a display", () => {
  const cfg = parseTartConfig(
    "r",
    te.encode(
      JSON.stringify({
        version: 1,
        os: "linux",
        arch: "amd64",
        cpuCount: 2,
        memorySize: 2147483648,
        macAddress: "52:54:00:00:00:01",
      }),
    ),
  );
  const { spec } = specFromTart(cfg);
  assertEquals([spec.os, spec.arch, spec.boot?.loader, spec.boot?.variableStore, spec.display], [
    "linux",
    "x86_64",
    "efi",
    "efi-vars.fd",
    "none",
  ]);
  const back = tartFromSpec(applyDefaults(spec, HOST, "l"), {});
  assertEquals([back.os, back.arch, back.display, back.ecid], [
    "linux",
    "amd64",
    undefined,
    undefined,
  ]);
  assertMatch(
    code(() => parseTartConfig("r", te.encode(`{"os":"windows","cpuCount":1,"memorySize":1}`))),
    /unknown os 'windows'/,
  );
  assertMatch(code(() => parseTartConfig("r", te.encode(`{"os":"linux"}`))), /no valid cpuCount/);
});

Deno.test("WWW-Authenticate challenges parse realm, service and a scope with commas", () => {
  const c = parseChallenge(
    `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"`,
  );
  assertEquals(c, {
    scheme: "bearer",
    params: {
      realm: "https://auth.example/token",
      service: "registry.example",
      scope: "repository:a/b:pull,push",
    },
  });
  assertEquals(parseChallenge(`Basic realm="x"`)?.scheme, "basic");
});

Deno.test("redact hides secrets and Authorization values", () => {
  assertEquals(redact("token s3cr3tpass here", ["s3cr3tpass"]), "token *** here");
  assertEquals(redact("Authorization: Bearer abcdefghijklmnop", []), "Authorization: Bearer ***");
});

Deno.test("Docker config credentials: inline auths, then credential helpers by stdin", async () => {
  await withTempDir(async (dir) => {
    const cfgDir = join(dir, "docker");
    await Deno.mkdir(cfgDir);
    const bin = join(dir, "bin");
    await Deno.mkdir(bin);
    // A credential helper that records its argv and stdin, and answers for one host.
    await Deno.writeTextFile(
      join(bin, "docker-credential-fake"),
      `#!/bin/sh\necho "$@" >> "${dir}/argv"\nread host\necho "$host" >> "${dir}/stdin"\nif [ "$host" = "helped.example" ]; then echo '{"ServerURL":"helped.example","Username":"hu","Secret":"hs-123"}'; else echo "credentials not found" ; exit 1; fi\n`,
    );
    await Deno.chmod(join(bin, "docker-credential-fake"), 0o755);
    await Deno.writeTextFile(
      join(cfgDir, "config.json"),
      JSON.stringify({
        auths: {
          "inline.example": { auth: btoa("iu:is-456") },
          "https://index.docker.io/v1/": { auth: btoa("hub:hubpw") },
        },
        credHelpers: { "helped.example": "fake" },
        credsStore: "fake",
      }),
    );
    const oldPath = Deno.env.get("PATH") ?? "";
    Deno.env.set("DOCKER_CONFIG", cfgDir);
    Deno.env.set("PATH", `${bin}:${oldPath}`);
    try {
      assertEquals(await dockerCredentials("inline.example"), {
        username: "iu",
        secret: "is-456",
        source: "docker config",
      });
      assertEquals(await dockerCredentials("docker.io"), {
        username: "hub",
        secret: "hubpw",
        source: "docker config",
      });
      assertEquals(await dockerCredentials("helped.example"), {
        username: "hu",
        secret: "hs-123",
        source: "docker-credential-fake",
      });
      assertEquals(await dockerCredentials("unknown.example"), undefined); // credsStore says not found
      assertEquals((await Deno.readTextFile(join(dir, "argv"))).trim().split("\n"), ["get", "get"]);
      assertEquals((await Deno.readTextFile(join(dir, "stdin"))).trim().split("\n"), [
        "helped.example",
        "unknown.example",
      ]);
    } finally {
      Deno.env.delete("DOCKER_CONFIG");
      Deno.env.set("PATH", oldPath);
    }
  });
});

async function streamLayer(path: string, offset: number, length: number) {
  const { compressStream } = await import("../../core/oci/layer.ts");
  const { decodeAppleLz4 } = await import("../../core/oci/lz4apple.ts");
  const s = compressStream(path, offset, length);
  const compressed = new Uint8Array(await new Response(s.body).arrayBuffer());
  return { desc: await s.done, decoded: decodeAppleLz4(compressed), compressed };
}

function sha256(b: Uint8Array): string {
  return `sha256:${createHash("sha256").update(b).digest("hex")}`;
}

Deno.test("a pushed chunk's digests cover every byte, including a leading zero run and an all-zero chunk", async () => {
  await withTempDir(async (dir) => {
    const MiB = 2 ** 20;
    const disk = new Uint8Array(5 * MiB + 333);
    for (let i = 3 * MiB + 5; i < 4 * MiB; i++) disk[i] = (i * 7) & 0xff;
    const path = join(dir, "disk.img");
    await Deno.writeFile(path, disk);
    // Zeros, then data, then zeros.
    const a = await streamLayer(path, 0, disk.length);
    assertEquals(a.decoded, disk);
    assertEquals(a.desc.annotations?.[ANN_UNCOMPRESSED_DIGEST], sha256(disk));
    assertEquals(a.desc.digest, sha256(a.compressed));
    assertEquals(a.desc.annotations?.[ANN_UNCOMPRESSED_SIZE], String(disk.length));
    // An all-zero chunk with an odd length.
    const z = await streamLayer(path, 0, 2 * MiB + 7);
    assertEquals(
      z.desc.annotations?.[ANN_UNCOMPRESSED_DIGEST],
      sha256(new Uint8Array(2 * MiB + 7)),
    );
    assertEquals(z.decoded, new Uint8Array(2 * MiB + 7));
  });
});

Deno.test("the memoized digest of a 512 MiB zero chunk is right", async () => {
  const { zeroDigest } = await import("../../core/oci/layer.ts");
  const h = createHash("sha256");
  const zeros = new Uint8Array(4 * 2 ** 20);
  for (let i = 0; i < 128; i++) h.update(zeros);
  assertEquals(zeroDigest(512 * 2 ** 20), `sha256:${h.digest("hex")}`);
});

Deno.test("a failed pull deletes its staging only on integrity errors and keeps it for network, disk and worker failures", async () => {
  const { spoilsStaging } = await import("../../core/oci/pull.ts");
  for (
    const code of [
      "oci.digest_mismatch",
      "oci.bad_blob",
      "oci.lz4_corrupt",
      "oci.truncated",
      "oci.not_vm",
      "oci.unsupported",
    ]
  ) {
    assert(spoilsStaging(new CoveError(code, "x")), code);
  }
  for (
    const code of [
      "oci.unknown_host",
      "oci.tls",
      "oci.dropped",
      "oci.server",
      "io.no_space",
      "oci.worker_lost",
      "interrupted",
    ]
  ) {
    assert(!spoilsStaging(new CoveError(code, "x")), code);
  }
  assert(!spoilsStaging(new Deno.errors.NotFound("x")));
});

Deno.test("display URLs drop userinfo and query strings; only secret-bearing URLs are keyed by hash", async () => {
  const { displayUrl, urlKey } = await import("../../core/images/url.ts");
  assertEquals(
    displayUrl("https://bob:pw@example.com/a/disk.img?X-Amz-Signature=abc#f"),
    "https://example.com/a/disk.img?…",
  );
  assertEquals(displayUrl("https://example.com/a.img"), "https://example.com/a.img");
  assertEquals(displayUrl("ghcr.io/org/img:tag"), "ghcr.io/org/img:tag");
  assertEquals(urlKey("https://example.com/a.img"), "https://example.com/a.img");
  const k = urlKey("https://example.com/a.img?token=1");
  assert(k.startsWith("url-sha256:") && !k.includes("token"));
  assert(k !== urlKey("https://example.com/a.img?token=2"));
});
