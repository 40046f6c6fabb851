/**
 * The README's CI recipes (examples/ci/: Buildkite, Jenkins, Nomad) run for
 * real against `cove job run` under TCG, each with the environment its CI
 * system gives a step: the job's exit code comes back, its artifact is
 * copied, and a REF that does not exist gives cove's exit code 201. With
 * COVE_JOB_SLOTS=2 the three jobs share two slots: the third waits in the
 * queue, then runs. The CI
 * systems themselves do not run here; the environment variables stand in
 * for them.
 * @module
 */
import { join } from "node:path";
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, cove, ROOT } from "../helpers/cli.ts";
import { createFlags, ensureDebianCloudGuest } from "../fixtures/debian_cloud_guest.ts";
import { linuxTest } from "../helpers/guard.ts";

/** Two host slots for three jobs: the third waits in the queue, then runs. */
const ENV = { COVE_QEMU_ACCEL: "tcg", COVE_JOB_SLOTS: "2" };

/** A `cove` on PATH that runs this tree's CLI. */
async function coveOnPath(dir: string): Promise<string> {
  const bin = join(dir, "bin");
  await Deno.mkdir(bin, { recursive: true });
  await Deno.writeTextFile(
    join(bin, "cove"),
    `#!/bin/sh\nexec '${Deno.execPath()}' run -A --quiet '${CLI}' "$@"\n`,
    { mode: 0o755 },
  );
  return `${bin}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`;
}

interface Example {
  script: string;
  /** The environment its CI system gives the step. */
  env: (work: string) => Record<string, string>;
}

const EXAMPLES: Example[] = [
  {
    script: "buildkite-step.sh",
    env: (w) => ({
      BUILDKITE_JOB_ID: "bk1",
      BUILDKITE_BUILD_NUMBER: "17",
      BUILDKITE_BUILD_CHECKOUT_PATH: w,
    }),
  },
  {
    script: "jenkins-agent.sh",
    env: (w) => ({ BUILD_TAG: "jenkins-x-17", BUILD_NUMBER: "17", WORKSPACE: w }),
  },
  {
    script: "nomad-task.sh",
    env: (w) => ({ NOMAD_ALLOC_ID: "a1b2c3", NOMAD_META_cove_slots: "2", NOMAD_TASK_DIR: w }),
  },
];

async function runExample(
  ex: Example,
  home: string,
  path: string,
  work: string,
  image: string,
  cmd: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  await Deno.mkdir(work, { recursive: true });
  const out = await new Deno.Command(join(ROOT, "examples", "ci", ex.script), {
    args: cmd,
    env: {
      COVE_HOME: home,
      PATH: path,
      COVE_IMAGE: image,
      NOMAD_META_image: image,
      ...ENV,
      ...ex.env(work),
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

linuxTest({
  needs: "builds a Debian cloud guest with debootstrap and boots it under QEMU, as root",
  root: true,
  name:
    "the Buildkite, Jenkins and Nomad recipes run cove job run: the job's exit code and artifacts come back, with COVE_JOB_SLOTS=2 the third job waits then runs, and a missing REF is cove's 201",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const g = await ensureDebianCloudGuest();
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-ciex-" });
    const path = await coveOnPath(home);
    try {
      await t.step("a missing REF: each recipe exits 201 with cove's one line", async () => {
        for (const ex of EXAMPLES) {
          const r = await runExample(ex, home, path, join(home, "w0"), "no-such-vm", ["true"]);
          assertEquals(r.code, 201, `${ex.script}: ${r.stderr}`);
          assertMatch(r.stderr, /cove: no VM named 'no-such-vm'/);
        }
      });

      await t.step(
        "each recipe runs a job in a VM and gets its exit code and artifact back",
        async () => {
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
          const c = await cove(home, [
            "create",
            "ci-base",
            "--config",
            config,
            ...createFlags(g),
          ], { env: ENV, timeoutMs: 300_000 });
          assertEquals(c.code, 0, c.stderr);
          const job = [
            "sh",
            "-c",
            "mkdir -p /tmp/artifacts && hostname > /tmp/artifacts/host.txt && echo done; exit 5",
          ];
          const results = await Promise.all(
            EXAMPLES.map((ex, i) =>
              runExample(ex, home, path, join(home, `w${i + 1}`), "ci-base", job)
            ),
          );
          for (const [i, r] of results.entries()) {
            const ex = EXAMPLES[i];
            assertEquals(r.code, 5, `${ex.script}: ${r.stderr}`);
            assertEquals(r.stdout, "done\n", ex.script);
            const host = await Deno.readTextFile(
              join(home, `w${i + 1}`, "artifacts", "artifacts", "host.txt"),
            );
            assertMatch(host, /^(bk-bk1|jenkins-jenkins-x-17|nomad-a1b2c3)\n$/);
          }
          // Three jobs, two slots: exactly one waited in the queue (and then ran, above).
          const waited = results.filter((r) =>
            /waiting for a job slot: place 1 in the queue/.test(r.stderr)
          );
          assertEquals(waited.length, 1, results.map((r) => r.stderr).join("\n---\n"));
          const list = await cove(home, ["list", "-q"], { env: ENV });
          assertEquals(list.stdout.trim(), "ci-base");
        },
      );
    } finally {
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
