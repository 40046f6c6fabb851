/**
 * cove as a library: everything here goes through mod.ts alone (plus the
 * test helpers), as a program embedding cove would. Also the CLI's
 * `cove create --from oci://` against a real registry on loopback, which
 * must honour the spec flags and the registry flags.
 */
import { join } from "node:path";
import * as cove from "../../mod.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove as runCove, withTempDir } from "../helpers/cli.ts";
import { startRegistry } from "../helpers/oci_registry.ts";
import { linuxTest } from "../helpers/guard.ts";

const MiB = 2 ** 20;

async function rejection(p: Promise<unknown>): Promise<cove.CoveError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof cove.CoveError) return e;
    throw e;
  }
  throw new Error("expected a CoveError");
}

Deno.test("library: create, get, clone and delete through mod.ts alone", () =>
  withTempDir(async (home) => {
    const store = new cove.Store(home);
    const b = await cove.createVm(store, "dev", { cpus: 3, memory: "1GiB", diskSize: "1GiB" });
    assertEquals(b.name, "dev");
    const d = await cove.getVm(store, "dev");
    assertEquals(d.spec.cpus, 3);
    assertEquals(d.memory, 1024 * MiB);
    assertEquals(d.disk, 1024 * MiB);
    assertEquals(d.state, "stopped");

    const c = await cove.cloneVm(store, "dev", "dev2");
    assertEquals(c.name, "dev2");
    const d2 = await cove.getVm(store, "dev2");
    assertEquals(d2.spec.cpus, 3);
    assert(d2.machine?.uuid && d2.machine.uuid !== d.machine?.uuid, "a clone has a new identity");
    const mac = (x: cove.VmDetails) => x.spec.networks.map((n) => n.mac).join(",");
    assert(mac(d2) !== mac(d), "a clone has a new MAC address");

    await cove.deleteVm(store, "dev");
    assertEquals((await store.list()).map((v) => v.name), ["dev2"]);
    const gone = await rejection(cove.getVm(store, "dev"));
    assertEquals([gone.code, gone.exit], ["vm.not_found", cove.ExitCode.NotFound]);
    await cove.deleteVm(store, "dev2");
    assertEquals(await store.list(), []);
  }));

Deno.test("library: a malformed registry reference to clone says what is wrong with it, not that it is a bad VM name", () =>
  withTempDir(async (home) => {
    const e = await rejection(
      cove.cloneVm(new cove.Store(home), "ghcr.io/Me/vm:bad tag", "x"),
    );
    assertEquals(e.code, "oci.bad_reference");
    assertEquals(e.exit, cove.ExitCode.Usage);
  }));

Deno.test("library: concurrent creates of one name: one wins, the others get vm.exists (exit 2) and leave no staging", () =>
  withTempDir(async (home) => {
    const store = new cove.Store(home);
    await store.ensure();
    const n = 6;
    // Every create waits in its populate step until all have staged, so they publish together.
    let staged = 0;
    const all = Promise.withResolvers<void>();
    const results = await Promise.allSettled(
      Array.from({ length: n }, () =>
        cove.createVm(store, "same", {
          diskSize: "1MiB",
          fromSource: async (_staging, spec) => {
            if (++staged === n) all.resolve();
            await all.promise;
            return spec;
          },
        })),
    );
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    assertEquals(won.length, 1);
    for (const r of lost) {
      assert(r.reason instanceof cove.CoveError, String(r.reason));
      assertEquals([r.reason.code, r.reason.exit], ["vm.exists", 2], r.reason.message);
    }
    const tmp = await Array.fromAsync(Deno.readDir(join(home, "tmp"))).catch(() => []);
    assertEquals(tmp.map((e) => e.name), [], "the losers' staging directories are gone");
    assertEquals((await store.list()).map((v) => v.name), ["same"]);
  }));

Deno.test("library: a create that loses the race at its final rename gets vm.exists (exit 2), not internal, and its staging is removed", () =>
  withTempDir(async (home) => {
    const store = new cove.Store(home);
    // The other create's rename lands between this create's last check and its own rename:
    // simulated by wrapping Deno.rename (the one step the race needs, made deterministic).
    const rename = Deno.rename;
    const target = join(home, "vms", "raced");
    Deno.rename = async (from: string | URL, to: string | URL) => {
      if (String(to) === target) {
        await Deno.mkdir(target, { recursive: true });
        await Deno.writeTextFile(join(target, "cove.yaml"), "os: linux\n");
      }
      return await rename(from, to);
    };
    let e: cove.CoveError;
    try {
      e = await rejection(cove.createVm(store, "raced", { diskSize: "1MiB" }));
    } finally {
      Deno.rename = rename;
    }
    assertEquals([e.code, e.exit], ["vm.exists", 2], e.message);
    const tmp = await Array.fromAsync(Deno.readDir(join(home, "tmp")));
    assertEquals(tmp.map((x) => x.name), [], "the loser's staging directory is gone");
  }));

linuxTest({
  needs: "runs Debian's docker-registry, the test registry (make setup installs it)",
  name:
    "cli: create --from oci:// takes --insecure and --concurrency and honours --cpus, --memory, --disk-size and --config",
  fn: async () => {
    const reg = await startRegistry();
    try {
      await withTempDir(async (home) => {
        const store = new cove.Store(home);
        await store.create("src", {
          spec: await cove.parseSpec(
            "os: linux\narch: x86_64\ncpus: 1\nmemory: 1GiB\ndisks: [{ path: disk.img }]\n",
          ),
          populate: async (staging, spec) => {
            await Deno.writeFile(staging.resolve("disk.img"), new Uint8Array(MiB).fill(7));
            return spec;
          },
        });
        const ref = `${reg.host}/test/vm:1`;
        const env = { DOCKER_CONFIG: join(home, "no-docker") };
        const push = await runCove(home, ["push", "src", ref, "--insecure"], { env });
        assertEquals(push.code, 0, push.stderr);

        const config = join(home, "extra.yaml");
        await Deno.writeTextFile(config, "memory: 3GiB\nprovision:\n  hostname: from-config\n");
        const r = await runCove(home, [
          "create",
          "made",
          "--from",
          `oci://${ref}`,
          "--insecure",
          "--concurrency",
          "2",
          "--cpus",
          "3",
          "--config",
          config,
          "--disk-size",
          "2MiB",
          "--format",
          "json",
        ], { env });
        assertEquals(r.code, 0, r.stderr);
        const d = JSON.parse(r.stdout) as cove.VmDetails;
        assertEquals(d.spec.cpus, 3, "--cpus wins over the image");
        assertEquals(d.memory, 3 * 1024 * MiB, "--config wins over the image");
        assertEquals(d.spec.provision?.hostname, "from-config");
        assertEquals(d.disk, 2 * MiB, "--disk-size grows the image's disk");
        assertEquals(d.spec.os, "linux");

        const m = await runCove(home, [
          "create",
          "more",
          "--from",
          `oci://${ref}`,
          "--insecure",
          "--memory",
          "1536MiB",
        ], { env });
        assertEquals(m.code, 0, m.stderr);
        assertEquals((await cove.getVm(store, "more")).memory, 1536 * MiB);

        const bad = await runCove(home, [
          "create",
          "bad",
          "--from",
          `oci://${ref}`,
          "--concurrency",
          "x",
        ], { env });
        assertEquals(bad.code, 2);
        assertMatch(bad.stderr, /--concurrency: 'x' is not a whole number \(use 1 to 64\)/);
      });
    } finally {
      await reg.stop();
    }
  },
});
