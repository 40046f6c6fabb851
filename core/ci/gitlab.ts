/**
 * A GitLab Runner custom executor (`cove ci gitlab config|prepare|run|cleanup`),
 * following GitLab's documented contract: the runner calls the config
 * stage (whose stdout is JSON: builds_dir, cache_dir, driver), then
 * prepare, then run once per script stage with the script's path and the
 * stage's name, and finally cleanup, always. Job variables reach the driver
 * prefixed `CUSTOM_ENV_`; a failing build exits `BUILD_FAILURE_EXIT_CODE`,
 * a failing system `SYSTEM_FAILURE_EXIT_CODE`.
 *
 * The job's VM is named `gitlab-$CUSTOM_ENV_CI_JOB_ID`, so every stage (and
 * a retried one) finds the VM that prepare made. It is a copy-on-write
 * clone of the job's `image:` (`CUSTOM_ENV_CI_JOB_IMAGE`, a local VM or a
 * registry reference) or of the default image, run by a detached
 * supervisor and marked ephemeral: if that supervisor dies, the next
 * writing cove command reaps it.
 * @module
 */
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import type { Store } from "../store/store.ts";
import { looksLikeReference } from "../oci/reference.ts";
import { VERSION } from "../version.ts";
import { openChannel } from "../job/channel.ts";
import { cloneWhenFree, DEFAULT_READY_TIMEOUT_MS } from "../job/run.ts";

/** Where builds and the cache live inside the job VM. */
export const GITLAB_BUILDS_DIR = "/var/tmp/cove-gitlab/builds";
export const GITLAB_CACHE_DIR = "/var/tmp/cove-gitlab/cache";
/** Where the run stage puts each stage's script in the guest. */
const SCRIPT_DIR = "/var/tmp/cove-gitlab/scripts";

/** The variables a stage reads (the driver's environment). */
export type StageEnv = Record<string, string | undefined>;

/** The exit codes the runner gave (1 when it gave none, which a real runner never does). */
export function failureCodes(env: StageEnv): { build: number; system: number } {
  const read = (k: string) => {
    const n = Number(env[k]);
    return Number.isInteger(n) && n >= 0 && n <= 255 && env[k] !== "" ? n : 1;
  };
  return { build: read("BUILD_FAILURE_EXIT_CODE"), system: read("SYSTEM_FAILURE_EXIT_CODE") };
}

/** The job VM's name from `CUSTOM_ENV_CI_JOB_ID`. */
export function gitlabVmName(env: StageEnv): string {
  const id = env.CUSTOM_ENV_CI_JOB_ID;
  if (!id || !/^[0-9]{1,19}$/.test(id)) {
    throw new CoveError(
      "ci.env",
      id ? `CUSTOM_ENV_CI_JOB_ID '${id}' is not a job id` : "CUSTOM_ENV_CI_JOB_ID is not set",
      { hint: "run this as a GitLab Runner custom executor stage", exit: ExitCode.JobSystem },
    );
  }
  return `gitlab-${id}`;
}

/** The config stage's JSON. */
export function gitlabConfig(): Record<string, unknown> {
  let hostname = "localhost";
  try {
    hostname = Deno.hostname();
  } catch { /* not allowed */ }
  return {
    builds_dir: GITLAB_BUILDS_DIR,
    cache_dir: GITLAB_CACHE_DIR,
    builds_dir_is_shared: false,
    hostname,
    driver: { name: "cove", version: VERSION },
  };
}

/** Options of {@link gitlabPrepare}. */
export interface PrepareOptions {
  /** The image when the job names none (`--default-image`, or COVE_GITLAB_IMAGE). */
  defaultImage?: string;
  /** How long the VM may take to answer ssh (ms). */
  readyTimeoutMs?: number;
  /** How long its supervisor may take to start it (ms). */
  startTimeoutMs?: number;
  onProgress?: (line: string) => void;
}

/** Stops and deletes the job's VM, if there is one. */
async function removeVm(store: Store, name: string): Promise<boolean> {
  if (!(await store.exists(name))) return false;
  const b = store.bundle(name);
  if (await b.isRunning()) {
    const { stopVm } = await import("../supervisor/client.ts");
    await stopVm(b, { force: true, timeoutSeconds: 10 }).catch(() => {});
  }
  await store.delete(name);
  return true;
}

/**
 * The prepare stage: makes and starts the job's VM and waits until it
 * answers ssh. A VM already running under the job's name (a retried
 * stage) is used as it is. On failure the VM is removed.
 */
export async function gitlabPrepare(
  store: Store,
  env: StageEnv,
  opts: PrepareOptions = {},
): Promise<string> {
  const name = gitlabVmName(env);
  const progress = opts.onProgress ?? (() => {});
  await store.sweep().catch(() => {});
  const image = env.CUSTOM_ENV_CI_JOB_IMAGE || opts.defaultImage || env.COVE_GITLAB_IMAGE;
  if (!image) {
    throw new CoveError("ci.env", "the job names no image: and no default image is set", {
      hint: "give the job an image:, or add --default-image VM to prepare_args",
      exit: ExitCode.JobSystem,
    });
  }
  const b = store.bundle(name);
  if (!(await store.exists(name) && await b.isRunning())) {
    try {
      await removeVm(store, name); // a stopped leftover of an earlier attempt
      progress(`cove: making VM ${name} from ${image}`);
      if (await store.exists(image)) await cloneWhenFree(store, image, name, undefined, false);
      else if (looksLikeReference(image)) {
        const { createFromOci } = await import("../oci/create.ts");
        await createFromOci(store, name, image, {});
      } else {
        throw new CoveError(
          "job.source",
          `no VM named '${image}', and it is not a registry reference`,
          {
            hint: "give a VM from 'cove list' or a reference like ghcr.io/org/image:tag",
            exit: ExitCode.JobSource,
          },
        );
      }
      const { startDetached } = await import("../supervisor/start.ts");
      await startDetached(store, name, {
        graphics: false,
        timeoutMs: opts.startTimeoutMs ?? 300_000,
      });
      // Now that its supervisor holds it: ephemeral, so a dead supervisor's VM is reaped.
      await Deno.writeTextFile(b.ephemeralMark, `${image}\n`, { mode: 0o600 });
    } catch (e) {
      await removeVm(store, name).catch(() => {});
      const ce = toCoveError(e);
      if (ce.code === "job.source") throw ce;
      throw new CoveError("job.boot", `the job's VM '${name}' did not start: ${ce.message}`, {
        hint: ce.hint,
        exit: ExitCode.JobBoot,
      });
    }
  }
  progress(`cove: waiting for ${name} to answer ssh`);
  try {
    await openChannel(b, await b.readSpec()).waitReady(
      opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS,
    );
  } catch (e) {
    await removeVm(store, name).catch(() => {});
    throw new CoveError(
      "job.ready",
      `the job's VM '${name}' did not answer ssh: ${toCoveError(e).message}`,
      {
        exit: ExitCode.JobReady,
      },
    );
  }
  return name;
}

/**
 * The run stage: runs the script of `stage` in the job's VM with live
 * output. Returns the script's exit status; throws a CoveError when the
 * VM is not there (a stage out of order) or the connection failed.
 */
export async function gitlabRun(
  store: Store,
  env: StageEnv,
  scriptPath: string,
  stage: string,
): Promise<number> {
  const name = gitlabVmName(env);
  if (!/^[A-Za-z0-9_.-]+$/.test(stage)) {
    throw new CoveError("ci.env", `the stage name '${stage}' is not one GitLab gives`, {
      exit: ExitCode.JobSystem,
    });
  }
  let script: Uint8Array;
  try {
    script = await Deno.readFile(scriptPath);
  } catch (e) {
    throw new CoveError(
      "ci.env",
      `cannot read the stage's script '${scriptPath}': ${toCoveError(e).message}`,
      {
        exit: ExitCode.JobSystem,
      },
    );
  }
  const b = store.bundle(name);
  if (!(await store.exists(name)) || !(await b.isRunning())) {
    throw new CoveError(
      "ci.stage",
      `no running VM '${name}' for the ${stage} stage: prepare has not run`,
      {
        hint: "the runner calls prepare before run; check the [runners.custom] stanza",
        exit: ExitCode.JobSystem,
      },
    );
  }
  const ch = openChannel(b, await b.readSpec());
  const guestScript = `${SCRIPT_DIR}/${stage}.sh`;
  const up = await ch.exec(["sh", "-c", `mkdir -p ${SCRIPT_DIR} && cat > ${guestScript}`], {
    stdin: script,
  });
  if (up.code !== 0) {
    throw new CoveError("job.lost", `cannot copy the ${stage} script into VM '${name}'`, {
      exit: ExitCode.JobLost,
    });
  }
  const out = (b: Uint8Array) => Deno.stdout.writeSync(b);
  const err = (b: Uint8Array) => Deno.stderr.writeSync(b);
  const r = await ch.exec(["bash", guestScript], {
    onStdout: (c) => writeAllSync(out, c),
    onStderr: (c) => writeAllSync(err, c),
  });
  if (r.channelFailed && !(await b.isRunning())) {
    throw new CoveError("job.lost", `the job's VM '${name}' stopped during the ${stage} stage`, {
      exit: ExitCode.JobLost,
    });
  }
  return r.code;
}

function writeAllSync(w: (b: Uint8Array) => number, b: Uint8Array): void {
  let off = 0;
  while (off < b.length) off += w(b.subarray(off));
}

/** The cleanup stage: stops and deletes the job's VM. Returns whether there was one. */
export async function gitlabCleanup(store: Store, env: StageEnv): Promise<boolean> {
  const name = gitlabVmName(env);
  const had = await removeVm(store, name);
  await store.sweep().catch(() => {});
  return had;
}
