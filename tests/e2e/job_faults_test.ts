/**
 * `cove job run` faults, under TCG with the tiny busybox guest
 * (tests/fixtures/tinyguest.ts), which boots in seconds and has no sshd:
 * a VM that cannot boot (its kernel is garbage) exits 202, a VM that never
 * answers ssh exits 203 (also when it comes from a registry reference,
 * pulled once into the cache), a job whose slot never frees exits 205;
 * each is one line, and no job VM is left behind. `--keep-on-failure`
 * keeps it.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove } from "../helpers/cli.ts";
import { ensureTinyGuest, tinyGuestCreateArgs } from "../fixtures/tinyguest.ts";
import { linuxTest } from "../helpers/guard.ts";
import { startRegistry } from "../helpers/oci_registry.ts";

const ENV = { COVE_QEMU_ACCEL: "tcg" };

async function names(home: string): Promise<string[]> {
  const r = await cove(home, ["list", "-q"], { env: ENV });
  return r.stdout.trim().split("\n").filter((l) => l);
}

linuxTest({
  needs: "boots the tiny guest under QEMU and runs Debian's docker-registry",
  name:
    "cove job run: a VM that cannot boot exits 202, one that never answers ssh exits 203, a full host exits 205 after --queue-timeout; nothing is left behind",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const g = await ensureTinyGuest();
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-jobfault-" });
    try {
      const c = await cove(home, tinyGuestCreateArgs("tiny", g), { env: ENV, timeoutMs: 120_000 });
      assertEquals(c.code, 0, c.stderr);
      const b = await cove(home, tinyGuestCreateArgs("broken", g), {
        env: ENV,
        timeoutMs: 120_000,
      });
      assertEquals(b.code, 0, b.stderr);
      const spec = await Deno.readTextFile(join(home, "vms", "broken", "cove.yaml"));
      const kernel = spec.match(/kernel: (\S+)/)![1];
      await Deno.writeFile(join(home, "vms", "broken", kernel), new Uint8Array(4096).fill(0x5a));

      await t.step("a VM that cannot boot: exit 202, one line, nothing left", async () => {
        const r = await cove(home, ["job", "run", "--from", "broken", "--", "true"], {
          env: ENV,
          timeoutMs: 120_000,
        });
        assertEquals(r.code, 202, r.stderr);
        const lines = r.stderr.trim().split("\n");
        assertEquals(lines.length, 1, r.stderr);
        assertMatch(lines[0], /^cove: the job's VM 'job-[0-9a-f]{8}' did not boot: /);
        assertEquals(await names(home), ["broken", "tiny"]);
      });

      await t.step(
        "a VM without sshd: exit 203 after --ready-timeout, with the record; nothing left",
        async () => {
          const r = await cove(home, [
            "job",
            "run",
            "--from",
            "tiny",
            "--name",
            "job-nossh",
            "--ready-timeout",
            "5s",
            "--format",
            "json",
            "--",
            "true",
          ], { env: ENV, timeoutMs: 180_000 });
          assertEquals(r.code, 203, r.stderr);
          const rec = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
          assertEquals(rec.failure.code, "job.ready");
          assertEquals(rec.jobExitCode, null);
          assertEquals(rec.exitCode, 203);
          assertEquals(typeof rec.times.boot, "number");
          assertEquals(JSON.parse(r.stderr.trim()).error.code, "job.ready");
          assertEquals(await names(home), ["broken", "tiny"]);
        },
      );

      await t.step(
        "a job from a registry reference: pulled into the cache once, run in a clone of it; its failure (203 here: no sshd) leaves no VM",
        async () => {
          const reg = await startRegistry();
          try {
            const ref = `${reg.host}/cove/tiny:1`;
            const push = await cove(home, ["push", "tiny", ref, "--insecure"], {
              env: ENV,
              timeoutMs: 180_000,
            });
            assertEquals(push.code, 0, push.stderr);
            // The tiny guest boots a kernel file, which the image does not carry: push says so.
            assertMatch(
              push.stderr,
              /'tiny' boots a kernel file \(boot\.loader: kernel\), which a Tart image does not carry/,
            );
            const env = { ...ENV, COVE_INSECURE_REGISTRIES: reg.host };
            const args = ["job", "run", "--from", ref, "--ready-timeout", "5s", "--", "true"];
            const r = await cove(home, args, { env, timeoutMs: 180_000 });
            assertEquals(r.code, 203, r.stderr);
            const lines = r.stderr.trim().split("\n");
            assertEquals(lines[0], `cove: pulled ${ref} into the cache`);
            assertMatch(
              lines.at(-1)!,
              /^cove: the job's VM 'job-[0-9a-f]{8}' did not answer ssh within 5s/,
            );
            assertEquals(await names(home), ["broken", "tiny"]);
            // The second job takes the cached image: no second pull.
            const again = await cove(home, args, { env, timeoutMs: 180_000 });
            assertEquals(again.code, 203, again.stderr);
            assert(!again.stderr.includes("pulled"), again.stderr);
            const refs = await cove(home, ["image", "ls", "--format", "json"], { env });
            assertMatch(refs.stdout, new RegExp(ref.replaceAll(".", "\\.")));
          } finally {
            await reg.stop();
          }
        },
      );

      await t.step("--keep-on-failure keeps the failed job's VM, stopped", async () => {
        const r = await cove(home, [
          "job",
          "run",
          "--from",
          "tiny",
          "--name",
          "job-kept",
          "--ready-timeout",
          "2s",
          "--keep-on-failure",
          "--",
          "true",
        ], { env: ENV, timeoutMs: 180_000 });
        assertEquals(r.code, 203, r.stderr);
        assertMatch(r.stderr, /kept the failed job's VM 'job-kept'/);
        // A writing command does not reap it: it is no longer ephemeral.
        await cove(home, ["job", "run", "--from", "no-such", "--", "true"], { env: ENV });
        assertEquals(await names(home), ["broken", "job-kept", "tiny"]);
        const d = await cove(home, ["delete", "job-kept"], { env: ENV });
        assertEquals(d.code, 0, d.stderr);
      });

      await t.step("no slot frees within --queue-timeout: exit 205, nothing made", async () => {
        // Hold the only slot with a job that waits for an ssh that never comes.
        const holder = new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            "--quiet",
            join(import.meta.dirname!, "..", "..", "cli", "main.ts"),
            "job",
            "run",
            "--from",
            "tiny",
            "--name",
            "job-holder",
            "--ready-timeout",
            "60s",
            "--",
            "true",
          ],
          env: { COVE_HOME: home, ...ENV, COVE_JOB_SLOTS: "1" },
          stdout: "null",
          stderr: "null",
        }).spawn();
        // Wait until the holder has its slot.
        for (let i = 0; i < 200; i++) {
          const s = await cove(home, ["job", "slots", "--format", "json"], {
            env: { ...ENV, COVE_JOB_SLOTS: "1" },
          });
          if (JSON.parse(s.stdout)[0].used === 1) break;
          await new Promise((res) => setTimeout(res, 100));
        }
        const q = await cove(home, [
          "job",
          "run",
          "--from",
          "tiny",
          "--queue-timeout",
          "1s",
          "--",
          "true",
        ], {
          env: { ...ENV, COVE_JOB_SLOTS: "1" },
          timeoutMs: 60_000,
        });
        assertEquals(q.code, 205, q.stderr);
        assertMatch(q.stderr, /waiting for a job slot: place 1 in the queue/);
        assertMatch(q.stderr, /cove: no job slot freed within 1s/);
        holder.kill("SIGTERM");
        assertEquals((await holder.status).code, 207);
        assertEquals(await names(home), ["broken", "tiny"]);
      });
    } finally {
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
