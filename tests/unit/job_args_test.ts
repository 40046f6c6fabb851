/**
 * The job's inputs: `--env K=V`, `--artifact GUEST_PATH:HOST_DIR`, the
 * mapping of cove's failures to exit codes 200-208, and the GitLab
 * executor's variables (job id to VM name, the runner's failure codes, the
 * config stage's JSON).
 * @module
 */
import { assertEquals } from "../helpers/assert.ts";
import { jobFailureExit, parseArtifact, parseEnvPair } from "../../core/job/run.ts";
import { CoveError, ExitCode } from "../../core/errors.ts";
import { failureCodes, gitlabConfig, gitlabVmName } from "../../core/ci/gitlab.ts";

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof CoveError) return `${e.code} ${e.exit}`;
    throw e;
  }
  throw new Error("accepted");
}

Deno.test("job args: --env takes K=V with a variable name, and the value keeps every = and space", () => {
  assertEquals(parseEnvPair("A=1"), ["A", "1"]);
  assertEquals(parseEnvPair("_X=a=b c"), ["_X", "a=b c"]);
  assertEquals(parseEnvPair("EMPTY="), ["EMPTY", ""]);
  for (const bad of ["=1", "1A=2", "A-B=1", "NOEQUALS", "A B=1"]) {
    assertEquals(code(() => parseEnvPair(bad)), "job.env 2", bad);
  }
});

Deno.test("job args: --artifact takes an absolute guest path and a host directory", () => {
  assertEquals(parseArtifact("/tmp/out:./art"), { guest: "/tmp/out", host: "./art" });
  assertEquals(parseArtifact("/a/b:/host/c:d"), { guest: "/a/b", host: "/host/c:d" });
  for (const bad of ["tmp/out:art", "/tmp/out", "/tmp/out:", ":art", "/tmp/../etc:art"]) {
    assertEquals(code(() => parseArtifact(bad)), "job.artifact 2", bad);
  }
});

Deno.test("job exit codes: cove's 200-208 are kept, every other cove failure becomes 200", () => {
  const e = (exit: ExitCode) => new CoveError("x", "y", { exit });
  assertEquals(jobFailureExit(e(ExitCode.JobReady)), 203);
  assertEquals(jobFailureExit(e(ExitCode.JobLost)), 208);
  assertEquals(jobFailureExit(e(ExitCode.State)), 200);
  assertEquals(jobFailureExit(e(ExitCode.Usage)), 200);
});

Deno.test("gitlab: the VM name comes from CUSTOM_ENV_CI_JOB_ID; a missing or odd id is ci.env", () => {
  assertEquals(gitlabVmName({ CUSTOM_ENV_CI_JOB_ID: "12345" }), "gitlab-12345");
  assertEquals(code(() => gitlabVmName({})), "ci.env 200");
  assertEquals(code(() => gitlabVmName({ CUSTOM_ENV_CI_JOB_ID: "../x" })), "ci.env 200");
  assertEquals(code(() => gitlabVmName({ CUSTOM_ENV_CI_JOB_ID: "" })), "ci.env 200");
});

Deno.test("gitlab: the runner's failure codes are read from the environment, 1 when absent", () => {
  assertEquals(failureCodes({ BUILD_FAILURE_EXIT_CODE: "7", SYSTEM_FAILURE_EXIT_CODE: "8" }), {
    build: 7,
    system: 8,
  });
  assertEquals(failureCodes({}), { build: 1, system: 1 });
  assertEquals(failureCodes({ BUILD_FAILURE_EXIT_CODE: "x", SYSTEM_FAILURE_EXIT_CODE: "300" }), {
    build: 1,
    system: 1,
  });
});

Deno.test("gitlab: the config stage's JSON has builds_dir, cache_dir and the driver", () => {
  const c = gitlabConfig();
  assertEquals(c.builds_dir, "/var/tmp/cove-gitlab/builds");
  assertEquals(c.cache_dir, "/var/tmp/cove-gitlab/cache");
  assertEquals(c.builds_dir_is_shared, false);
  assertEquals((c.driver as { name: string }).name, "cove");
});
