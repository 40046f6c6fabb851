/**
 * End to end, under TCG: `cove ci gitlab` driven by {@link RunnerStandIn},
 * a stand-in for GitLab Runner (no runner runs here). It calls the stages
 * as GitLab's custom executor documentation gives them: config, then
 * prepare, then run with a script file and the stage's name for each
 * stage of the job (after a failing step, only after_script and the
 * on-failure uploads), then cleanup, always (also after a failed prepare);
 * job variables prefixed `CUSTOM_ENV_`, and BUILD_FAILURE_EXIT_CODE /
 * SYSTEM_FAILURE_EXIT_CODE in every stage's environment.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { CLI, cove } from "../helpers/cli.ts";
import { createFlags, ensureDebianCloudGuest } from "../fixtures/debian_cloud_guest.ts";
import { linuxTest } from "../helpers/guard.ts";

const ENV = { COVE_QEMU_ACCEL: "tcg" };
const BUILD_FAILURE = 41;
const SYSTEM_FAILURE = 42;

/** The stages GitLab Runner runs through run_exec, in order (custom executor docs). */
const RUN_STAGES = [
  "prepare_script",
  "get_sources",
  "restore_cache",
  "download_artifacts",
  "step_script",
  "after_script",
  "archive_cache",
  "upload_artifacts_on_success",
  "cleanup_file_variables",
];
const ON_FAILURE = [
  "after_script",
  "archive_cache_on_failure",
  "upload_artifacts_on_failure",
  "cleanup_file_variables",
];

interface StageCall {
  stage: string;
  code: number;
  stdout: string;
  stderr: string;
}

/** A stand-in for GitLab Runner's custom executor: calls cove's stages as the runner does. */
class RunnerStandIn {
  calls: StageCall[] = [];
  constructor(readonly home: string, readonly jobVars: Record<string, string>) {}

  env(): Record<string, string> {
    const e: Record<string, string> = {
      COVE_HOME: this.home,
      NO_COLOR: "1",
      ...ENV,
      BUILD_FAILURE_EXIT_CODE: String(BUILD_FAILURE),
      SYSTEM_FAILURE_EXIT_CODE: String(SYSTEM_FAILURE),
    };
    for (const [k, v] of Object.entries(this.jobVars)) e[`CUSTOM_ENV_${k}`] = v;
    return e;
  }

  async exec(stage: string, args: string[]): Promise<StageCall> {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", CLI, "ci", "gitlab", ...args],
      env: this.env(),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const call = {
      stage,
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
    this.calls.push(call);
    return call;
  }

  /** One run_exec call: the runner writes the stage's script to a file and passes its path. */
  async run(stage: string, body: string): Promise<StageCall> {
    const path = await Deno.makeTempFile({ dir: this.home, prefix: `script-${stage}-` });
    const exports = Object.entries(this.jobVars).map(([k, v]) => `export ${k}='${v}'`).join("\n");
    await Deno.writeTextFile(path, `#!/usr/bin/env bash\nset -eo pipefail\n${exports}\n${body}\n`);
    return await this.exec(stage, ["run", path, stage]);
  }

  /**
   * A whole job: config, prepare, the run stages (a failed step_script
   * switches to the on-failure stages), and cleanup whatever happened.
   * Returns the job's outcome as the runner would record it.
   */
  async job(
    steps: Record<string, string>,
    prepareArgs: string[] = [],
  ): Promise<"success" | "build_failure" | "system_failure"> {
    const config = await this.exec("config", ["config"]);
    if (config.code !== 0) return "system_failure";
    let outcome: "success" | "build_failure" | "system_failure" = "success";
    try {
      const prep = await this.exec("prepare", ["prepare", ...prepareArgs]);
      if (prep.code !== 0) return prep.code === BUILD_FAILURE ? "build_failure" : "system_failure";
      let stages = RUN_STAGES;
      for (let i = 0; i < stages.length; i++) {
        const r = await this.run(stages[i], steps[stages[i]] ?? ":");
        if (r.code === 0) continue;
        if (r.code === SYSTEM_FAILURE) return (outcome = "system_failure");
        outcome = "build_failure";
        if (stages === RUN_STAGES) {
          stages = ON_FAILURE;
          i = -1;
        }
      }
      return outcome;
    } finally {
      await this.exec("cleanup", ["cleanup"]);
    }
  }

  call(stage: string): StageCall {
    const c = this.calls.find((c) => c.stage === stage);
    assert(c, `the runner called no ${stage} stage: ${this.calls.map((c) => c.stage).join(", ")}`);
    return c;
  }
}

async function vmNames(home: string): Promise<string[]> {
  const r = await cove(home, ["list", "--format", "json"], { env: ENV });
  assertEquals(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { name: string }[]).map((v) => v.name);
}

linuxTest({
  needs: "builds a Debian cloud guest with debootstrap and boots it under QEMU, as root",
  root: true,
  name:
    "cove ci gitlab, driven like GitLab Runner's custom executor: a passing job, a failing job (BUILD_FAILURE_EXIT_CODE), a VM that cannot start (SYSTEM_FAILURE_EXIT_CODE), cleanup after a failed prepare",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const g = await ensureDebianCloudGuest();
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-gitlab-" });
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
    const create = async (name: string) => {
      const r = await cove(home, [
        "create",
        name,
        "--config",
        config,
        ...createFlags(g),
      ], { env: ENV, timeoutMs: 300_000 });
      assertEquals(r.code, 0, r.stderr);
    };
    try {
      await t.step(
        "the images are created: a good one and one whose kernel is garbage",
        async () => {
          await create("ci-debian");
          await create("ci-broken");
          const vm = join(home, "vms", "ci-broken");
          const spec = await Deno.readTextFile(join(vm, "cove.yaml"));
          const kernel = spec.match(/kernel: (\S+)/)![1];
          await Deno.writeFile(join(vm, kernel), new Uint8Array(4096).fill(0x5a));
        },
      );

      await t.step(
        "stages out of order or without their variables fail with SYSTEM_FAILURE_EXIT_CODE",
        async () => {
          const early = new RunnerStandIn(home, { CI_JOB_ID: "90" });
          const r = await early.run("step_script", "echo never");
          assertEquals(r.code, SYSTEM_FAILURE, r.stderr);
          assertEquals(
            r.stderr.trim(),
            "cove: no running VM 'gitlab-90' for the step_script stage: prepare has not run (the runner calls prepare before run; check the [runners.custom] stanza)",
          );
          const noId = new RunnerStandIn(home, {});
          const p = await noId.exec("prepare", ["prepare", "--default-image", "ci-debian"]);
          assertEquals(p.code, SYSTEM_FAILURE);
          assertMatch(p.stderr.trim(), /^cove: CUSTOM_ENV_CI_JOB_ID is not set/);
          const cfg = await noId.exec("config", ["config"]);
          assertEquals(cfg.code, 0, cfg.stderr);
          const c = JSON.parse(cfg.stdout);
          assertEquals(c.builds_dir, "/var/tmp/cove-gitlab/builds");
          assertEquals(c.driver.name, "cove");
        },
      );

      await t.step("a passing job and a failing job, side by side", async () => {
        const pass = new RunnerStandIn(home, { CI_JOB_ID: "101", CI_JOB_IMAGE: "ci-debian" });
        const fail = new RunnerStandIn(home, { CI_JOB_ID: "102", CI_JOB_IMAGE: "ci-debian" });
        const [po, fo] = await Promise.all([
          pass.job({
            get_sources:
              `mkdir -p "${"/var/tmp/cove-gitlab/builds"}/p" && echo src > /var/tmp/cove-gitlab/builds/p/file`,
            step_script:
              'cat /var/tmp/cove-gitlab/builds/p/file; echo "job $CI_JOB_ID on $(hostname)"',
          }),
          fail.job({ step_script: "echo about to fail; exit 3", after_script: "echo after" }),
        ]);
        assertEquals(
          po,
          "success",
          JSON.stringify(pass.calls.map((c) => [c.stage, c.code, c.stderr])),
        );
        assertEquals(pass.call("step_script").stdout, "src\njob 101 on gitlab-101\n");
        assertEquals(pass.call("cleanup").code, 0);

        assertEquals(
          fo,
          "build_failure",
          JSON.stringify(fail.calls.map((c) => [c.stage, c.code, c.stderr])),
        );
        assertEquals(fail.call("step_script").code, BUILD_FAILURE);
        assertEquals(fail.call("step_script").stdout, "about to fail\n");
        assertEquals(fail.call("after_script").stdout, "after\n");
        assert(!fail.calls.some((c) => c.stage === "upload_artifacts_on_success"));
        assertEquals(await vmNames(home), ["ci-broken", "ci-debian"]);
      });

      await t.step(
        "a VM that cannot start fails prepare with SYSTEM_FAILURE_EXIT_CODE, and cleanup after it leaves nothing",
        async () => {
          const broken = new RunnerStandIn(home, { CI_JOB_ID: "103", CI_JOB_IMAGE: "ci-broken" });
          assertEquals(await broken.job({ step_script: "echo never" }), "system_failure");
          const prep = broken.call("prepare");
          assertEquals(prep.code, SYSTEM_FAILURE);
          assertMatch(prep.stderr, /cove: the job's VM 'gitlab-103' did not start/);
          assert(!broken.calls.some((c) => c.stage === "step_script"));
          assertEquals(broken.call("cleanup").code, 0);
          const missing = new RunnerStandIn(home, {
            CI_JOB_ID: "104",
            CI_JOB_IMAGE: "no-such-image",
          });
          assertEquals(await missing.job({}), "system_failure");
          assertMatch(missing.call("prepare").stderr, /no VM named 'no-such-image'/);
          assertEquals(await vmNames(home), ["ci-broken", "ci-debian"]);
        },
      );
    } finally {
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
