/** Packaging: the Homebrew formula, the release workflow, and `make build` failing clearly offline. */
import { dirname, join } from "node:path";
import { parse } from "yaml";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { ROOT, withTempDir } from "../helpers/cli.ts";
import { VERSION } from "../../core/version.ts";

const TARGETS = ["aarch64-apple-darwin", "x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const r = await new Deno.Command(cmd, { args, cwd: ROOT, env, stdout: "piped", stderr: "piped" })
    .output();
  const d = new TextDecoder();
  return { code: r.code, stdout: d.decode(r.stdout), stderr: d.decode(r.stderr) };
}

Deno.test("release: the rendered Homebrew formula is valid Ruby with per-arch urls, sha256s and the entitlement check", () =>
  withTempDir(async (dir) => {
    for (const t of TARGETS) {
      await Deno.writeTextFile(join(dir, `cove-${VERSION}-${t}`), `binary for ${t}\n`);
    }
    const out = join(dir, "cove.rb");
    const r = await run("scripts/release.sh", ["https://example.invalid/releases/v1", out], {
      DIST_DIR: dir,
    });
    assertEquals(r.code, 0, r.stderr);
    const rb = await Deno.readTextFile(out);
    const ruby = await run("ruby", ["-c", out]);
    assertEquals(ruby.stdout.trim(), "Syntax OK", ruby.stderr);
    assertMatch(rb, new RegExp(`version "${VERSION.replaceAll(".", "\\.")}"`));
    for (const t of TARGETS) {
      assertMatch(
        rb,
        new RegExp(`url "https://example\\.invalid/releases/v1/cove-${VERSION}-${t}"`),
      );
    }
    assertEquals(rb.match(/sha256 "[0-9a-f]{64}"/g)?.length, 3);
    assertMatch(rb, /depends_on macos: :ventura/);
    assertMatch(rb, /depends_on arch: :arm64/);
    assertMatch(rb, /generate_completions_from_executable\(bin\/"cove", "completions"\)/);
    assertMatch(rb, /test do[\s\S]*cove version[\s\S]*"doctor", "--format", "json"/);
    assertMatch(rb, /codesign -d --entitlements -[\s\S]*com\.apple\.security\.virtualization/);
    assert(!/@[A-Z0-9_]+@/.test(rb), "no placeholder left");
  }));

Deno.test("release: the formula is refused when an asset is missing", () =>
  withTempDir(async (dir) => {
    const r = await run("scripts/release.sh", ["https://x.invalid", join(dir, "f.rb")], {
      DIST_DIR: dir,
    });
    assertEquals(r.code, 1);
    assertMatch(
      r.stderr,
      /^release: .*cove-.*-aarch64-apple-darwin is missing; run 'make build' first/,
    );
  }));

Deno.test("release: the workflow parses and runs every release step on macOS arm64", async () => {
  const wf = parse(await Deno.readTextFile(join(ROOT, ".github/workflows/release.yml"))) as {
    jobs: Record<string, { "runs-on": string; steps: { name: string; run?: string }[] }>;
  };
  const job = wf.jobs.release;
  assertEquals(job["runs-on"], "macos-14");
  const names = job.steps.map((s) => s.name.toLowerCase());
  for (const step of ["swift shim", "compile", "sign", "verify", "notarize", "upload", "tap"]) {
    assert(names.some((n) => n.includes(step)), `a step named '${step}'`);
  }
  const script = job.steps.map((s) => s.run ?? "").join("\n");
  for (
    const cmd of [
      "make shim",
      "make build",
      "scripts/sign.sh",
      "make verify",
      "notarytool submit",
      "scripts/release.sh",
    ]
  ) {
    assert(script.includes(cmd), cmd);
  }
});

Deno.test("release: make build type-checks, then fails with one clear line when the runtime cannot be downloaded", () =>
  withTempDir(async (dist) => {
    // The download is made to fail on every machine (a proxy on a closed loopback port), so this
    // always takes the offline branch; the output goes to a temporary DIST_DIR, not the tree.
    const closed = "http://127.0.0.1:9";
    const r = await run("scripts/build.sh", [], {
      TARGETS: "x86_64-unknown-linux-gnu",
      DIST_DIR: dist,
      HTTPS_PROXY: closed,
      HTTP_PROXY: closed,
      // The deno running this test, for when .tools/ has no pinned copy.
      PATH: `${dirname(Deno.execPath())}:${Deno.env.get("PATH") ?? ""}`,
      HOME: Deno.env.get("HOME") ?? "",
    });
    assertEquals(r.code, 1, r.stderr);
    const last = r.stderr.trimEnd().split("\n").pop()!;
    assertMatch(
      last,
      /^build: deno compile could not download the Deno runtime for x86_64-unknown-linux-gnu .*type-check and include list passed/,
    );
    assertMatch(r.stderr, /build: type-checking/);
    assertMatch(r.stderr, new RegExp(`build: compiling ${dist}/cove-`));
    assertEquals(await Array.fromAsync(Deno.readDir(dist)), [], "nothing half-built is left");
  }));
