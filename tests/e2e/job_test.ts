/**
 * End to end, under TCG: `cove job run` with the Debian cloud guest
 * (tests/fixtures/debian_cloud_guest.ts). One base VM, never booted
 * itself; each job boots its own ephemeral clone. Two jobs run side by
 * side (a passing one with --env, an artifact and --format json, and a
 * failing one), then two that are killed mid-job (SIGTERM, SIGKILL).
 * Afterwards nothing is left in `cove list`.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, cove } from "../helpers/cli.ts";
import { createFlags, ensureDebianCloudGuest } from "../fixtures/debian_cloud_guest.ts";
import { linuxTest } from "../helpers/guard.ts";

const ENV = { COVE_QEMU_ACCEL: "tcg" };
const JOB_TIMEOUT_MS = 1_200_000;

/** A running `cove job run` whose output the test reads as it comes. */
interface Spawned {
  child: Deno.ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves when stdout contains `text`. */
  waitFor: (text: string) => Promise<void>;
  done: Promise<{ code: number; signal: Deno.Signal | null }>;
}

function spawnCove(home: string, args: string[], env: Record<string, string> = {}): Spawned {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, ...args],
    env: { COVE_HOME: home, NO_COLOR: "1", ...ENV, ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  let err = "";
  const waiters: { text: string; resolve: () => void }[] = [];
  const dec = new TextDecoder();
  const readOut = (async () => {
    for await (const c of child.stdout) {
      out += dec.decode(c, { stream: true });
      for (const w of waiters.filter((w) => out.includes(w.text))) w.resolve();
    }
  })();
  const readErr = (async () => {
    for await (const c of child.stderr) err += dec.decode(c, { stream: true });
  })();
  const timer = setTimeout(() => child.kill("SIGKILL"), JOB_TIMEOUT_MS);
  const done = (async () => {
    const s = await child.status;
    await Promise.all([readOut, readErr]);
    clearTimeout(timer);
    for (const w of waiters) w.resolve();
    return { code: s.code, signal: s.signal };
  })();
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    waitFor: (text) =>
      new Promise((resolve) => {
        if (out.includes(text)) resolve();
        else waiters.push({ text, resolve });
      }),
    done,
  };
}

async function vmNames(home: string): Promise<string[]> {
  const r = await cove(home, ["list", "--format", "json"], { env: ENV });
  assertEquals(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { name: string }[]).map((v) => v.name);
}

async function bundleDirs(home: string): Promise<string[]> {
  try {
    return (await Array.fromAsync(Deno.readDir(join(home, "vms")))).map((e) => e.name).sort();
  } catch {
    return [];
  }
}

linuxTest({
  needs: "builds a Debian cloud guest with debootstrap and boots it under QEMU, as root",
  root: true,
  name:
    "cove job run keeps the job's exit code, streams its output, copies artifacts back, sees --env, and leaves no VM behind even when killed",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const g = await ensureDebianCloudGuest();
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-job-" });
    const base = "jobbase";
    const config = join(home, "vm.yaml");
    await Deno.writeTextFile(
      config,
      JSON.stringify({
        engine: "qemu",
        cpus: 1,
        memory: "1GiB",
        disks: [{ path: "disk.img", size: "4GiB" }],
        networks: [{ mode: "user" }],
      }),
    );
    try {
      await t.step("a base VM is created (never booted itself)", async () => {
        const r = await cove(home, [
          "create",
          base,
          "--config",
          config,
          ...createFlags(g),
        ], { env: ENV, timeoutMs: 300_000 });
        assertEquals(r.code, 0, r.stderr);
      });

      await t.step(
        "a passing job (--env, --artifact, --format json) and a failing job keep their exit codes; a job past its --timeout is cove's 206",
        async () => {
          const art = join(home, "artifacts");
          const pass = spawnCove(home, [
            "job",
            "run",
            "--from",
            base,
            "--name",
            "job-pass",
            "--env",
            "GREETING=hello from the host",
            "--artifact",
            "/tmp/out:" + art,
            "--artifact",
            "/tmp/absent:" + art,
            "--format",
            "json",
            "--",
            "sh",
            "-c",
            'mkdir -p /tmp/out && echo "$GREETING" > /tmp/out/result.txt && echo "job says $GREETING"',
          ]);
          const fail = spawnCove(home, [
            "job",
            "run",
            "--from",
            base,
            "--name",
            "job-fail",
            "--",
            "sh",
            "-c",
            "echo failing; exit 7",
          ]);
          // A third job runs past its --timeout: cove's 206, and its VM goes too (it waits for a
          // slot while the other two run, when the host has two).
          const late = spawnCove(home, [
            "job",
            "run",
            "--from",
            base,
            "--name",
            "job-late",
            "--timeout",
            "10s",
            "--",
            "sh",
            "-c",
            "echo started late; sleep 600",
          ]);
          const [p, f, l] = await Promise.all([pass.done, fail.done, late.done]);
          assertEquals(p.code, 0, pass.stderr());
          const lines = pass.stdout().trim().split("\n");
          assertEquals(lines[0], "job says hello from the host");
          const rec = JSON.parse(lines.at(-1)!);
          assertEquals(rec.name, "job-pass");
          assertEquals(rec.exitCode, 0);
          assertEquals(rec.jobExitCode, 0);
          assertEquals(rec.failure, null);
          for (const k of ["clone", "boot", "ready", "job", "total"]) {
            assert(typeof rec.times[k] === "number", `times.${k}: ${JSON.stringify(rec.times)}`);
          }
          assertEquals(rec.artifacts.map((a: { status: string }) => a.status), [
            "copied",
            "missing",
          ]);
          assertEquals(
            await Deno.readTextFile(join(art, "out", "result.txt")),
            "hello from the host\n",
          );
          assertMatch(pass.stderr(), /warning: artifact \/tmp\/absent does not exist/);

          assertEquals(f.code, 7, fail.stderr());
          assertEquals(fail.stdout(), "failing\n");
          assertEquals(l.code, 206, late.stderr());
          assertEquals(late.stdout(), "started late\n");
          assertMatch(late.stderr(), /the job ran past --timeout 10s and was stopped/);
          assertEquals(await vmNames(home), [base]);
        },
      );

      await t.step(
        "SIGTERM and SIGKILL mid-job: output arrived live, and no job VM is left",
        async () => {
          const cmd = ["--", "sh", "-c", "echo started; sleep 900"];
          const term = spawnCove(home, [
            "job",
            "run",
            "--from",
            base,
            "--name",
            "job-term",
            ...cmd,
          ]);
          const kill = spawnCove(home, [
            "job",
            "run",
            "--from",
            base,
            "--name",
            "job-kill",
            ...cmd,
          ]);
          // Live: the first line is here while the job still runs (it sleeps for 15 minutes).
          await Promise.all([term.waitFor("started\n"), kill.waitFor("started\n")]);
          assertEquals(term.stdout(), "started\n", term.stderr());
          assertEquals(kill.stdout(), "started\n", kill.stderr());
          term.child.kill("SIGTERM");
          kill.child.kill("SIGKILL");
          const [tr, kr] = await Promise.all([term.done, kill.done]);
          assertEquals(tr.code, 207, term.stderr());
          assertMatch(term.stderr(), /interrupted/);
          assertEquals(kr.signal, "SIGKILL");
          // The killed job's bundle is hidden by list, and reaped by the next writing command.
          assertEquals(await vmNames(home), [base]);
          const next = await cove(home, ["job", "run", "--from", "no-such-vm", "--", "true"], {
            env: ENV,
          });
          assertEquals(next.code, 201, next.stderr);
          assertEquals(
            next.stderr.trim(),
            "cove: no VM named 'no-such-vm', and it is not a registry reference (give a VM from 'cove list' or a reference like ghcr.io/org/image:tag)",
          );
          // QEMU dies with its supervisor; give the kernel a moment to release the killed job's lock.
          let dirs = await bundleDirs(home);
          for (let i = 0; i < 20 && dirs.length > 1; i++) {
            await new Promise((r) => setTimeout(r, 500));
            await cove(home, ["job", "run", "--from", "no-such-vm", "--", "true"], { env: ENV });
            dirs = await bundleDirs(home);
          }
          assertEquals(dirs, [base]);
        },
      );
    } finally {
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
