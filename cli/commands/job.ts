/**
 * Jobs: `cove job run` (one job in a fresh VM), `cove job slots`, and the
 * GitLab Runner custom executor `cove ci gitlab config|prepare|run|cleanup`.
 * Parsing and printing only; the work is in the library (mod.ts), loaded
 * when a command runs.
 *
 * `cove job run` exits with the job's exit code, or with cove's own
 * 200-208 when the infrastructure failed (README, "Jobs"). The GitLab
 * stages exit with the runner's BUILD_FAILURE_EXIT_CODE or
 * SYSTEM_FAILURE_EXIT_CODE.
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { FORMAT_HELP, log, out, outJson, parseFormat } from "../output.ts";

const collect = (v: string, prev: string[]) => [...prev, v];

/** Aborts on SIGINT, SIGTERM and SIGHUP (and keeps them from killing cove at once). */
function interruptSignal(): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const fns: [Deno.Signal, () => void][] = [];
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as Deno.Signal[]) {
    const fn = () => {
      log(`cove: received ${sig}; stopping the job and removing its VM`);
      ac.abort();
    };
    try {
      Deno.addSignalListener(sig, fn);
      fns.push([sig, fn]);
    } catch { /* not on this OS */ }
  }
  return {
    signal: ac.signal,
    dispose() {
      for (const [s, f] of fns) Deno.removeSignalListener(s, f);
    },
  };
}

function writeAll(f: { writeSync(b: Uint8Array): number }, b: Uint8Array): void {
  let off = 0;
  while (off < b.length) off += f.writeSync(b.subarray(off));
}

/** Registers `job` and `ci`. */
export function register(program: Command): void {
  const job = program.command("job").description("run CI jobs, each in a fresh VM");

  job.command("run")
    .description(
      "run CMD in a fresh ephemeral clone of REF and remove it afterwards (cove job run --from REF -- CMD...)",
    )
    .requiredOption("--from <ref>", "a VM from 'cove list', or a registry reference")
    .option("--name <name>", "the job VM's name (default job-XXXXXXXX)")
    .option("--cpus <n>", "CPUs of the job VM")
    .option("--memory <size>", "memory of the job VM, e.g. 4GiB")
    .option("--env <K=V>", "set a variable for CMD (repeatable)", collect, [] as string[])
    .option(
      "--artifact <guest:host>",
      "copy GUEST_PATH back into HOST_DIR after CMD (repeatable)",
      collect,
      [] as string[],
    )
    .option("--timeout <duration>", "how long CMD may run, e.g. 30m")
    .option("--queue-timeout <duration>", "how long to wait for a free host slot, e.g. 10m")
    .option("--ready-timeout <duration>", "how long the VM may take to answer ssh", "20m")
    .option("--keep-on-failure", "keep a failed job's VM (stopped) for inspection")
    .option(
      "--format <format>",
      `${FORMAT_HELP} (a final record)`,
      parseFormat,
      "text" as const,
    )
    .argument("<command...>", "the job's command (after --)")
    .action(async (command, opts) => {
      const cove = await import("../../mod.ts");
      const cpus = opts.cpus !== undefined ? cove.parseFlag("--cpus", opts.cpus) : undefined;
      if (opts.memory !== undefined) cove.parseFlag("--memory", opts.memory);
      const timeoutMs = opts.timeout !== undefined
        ? cove.parseFlag("--timeout", opts.timeout)
        : undefined;
      const queueTimeoutMs = opts.queueTimeout !== undefined
        ? cove.parseFlag("--queue-timeout", opts.queueTimeout)
        : undefined;
      const readyTimeoutMs = cove.parseFlag("--ready-timeout", opts.readyTimeout);
      const { env, artifacts } = await cove.parseJobArgs(opts.env, opts.artifact);
      const intr = interruptSignal();
      let rec;
      try {
        rec = await cove.runJob(new cove.Store(), {
          from: opts.from,
          name: opts.name,
          cpus,
          memory: opts.memory,
          env,
          artifacts,
          command,
          timeoutMs,
          queueTimeoutMs,
          readyTimeoutMs,
          keepOnFailure: !!opts.keepOnFailure,
          signal: intr.signal,
          onStdout: (b) => writeAll(Deno.stdout, b),
          onStderr: (b) => writeAll(Deno.stderr, b),
          onProgress: (l) => log(l.startsWith("cove") ? l : `cove: ${l}`),
        });
      } finally {
        intr.dispose();
      }
      if (rec.failure) {
        const f = rec.failure;
        if (opts.format === "json") log(JSON.stringify({ error: f }));
        else log(`cove: ${f.message}${f.hint ? ` (${f.hint})` : ""}`);
      }
      // The record is the last line of stdout, after the job's own output.
      if (opts.format === "json") out(JSON.stringify(rec));
      Deno.exit(rec.exitCode);
    });

  job.command("slots")
    .description("show free and used job slots of this host (COVE_JOB_SLOTS)")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (opts) => {
      const cove = await import("../../mod.ts");
      const pools = await cove.jobSlots(new cove.Store());
      if (opts.format === "json") {
        outJson(pools);
        return;
      }
      for (const p of pools) {
        out(`${p.kind}: ${p.free} free, ${p.used} used of ${p.total}; ${p.waiting} waiting`);
        for (const h of p.holders) {
          out(`  slot ${h.slot}: ${h.vm ?? "?"} (pid ${h.pid ?? "?"}, since ${h.since ?? "?"})`);
        }
      }
    });

  const ci = program.command("ci").description("CI system integrations");
  const gitlab = ci.command("gitlab").description(
    "a GitLab Runner custom executor: config, prepare, run SCRIPT STAGE, cleanup",
  );

  /** Runs a stage; a failure is one line and the runner's SYSTEM_FAILURE_EXIT_CODE. */
  const stage = async (
    fn: (g: Awaited<ReturnType<typeof import("../../mod.ts").gitlabExecutor>>) => Promise<number>,
  ) => {
    const cove = await import("../../mod.ts");
    const g = await cove.gitlabExecutor();
    const env = Deno.env.toObject();
    const codes = g.failureCodes(env);
    try {
      Deno.exit(await fn(g));
    } catch (e) {
      const ce = cove.toCoveError(e);
      log(`cove: ${ce.line()}`);
      Deno.exit(codes.system);
    }
  };

  gitlab.command("config")
    .description("print the driver's JSON config (builds_dir, cache_dir, driver)")
    .action(() =>
      stage(async (g) => {
        outJson(g.gitlabConfig());
        return await Promise.resolve(0);
      })
    );

  gitlab.command("prepare")
    .description("make and start the job's VM (from CUSTOM_ENV_CI_JOB_IMAGE or --default-image)")
    .option("--default-image <ref>", "the VM or reference for jobs that name no image")
    .option("--ready-timeout <duration>", "how long the VM may take to answer ssh", "20m")
    .action((opts) =>
      stage(async (g) => {
        const cove = await import("../../mod.ts");
        const readyTimeoutMs = cove.parseFlag("--ready-timeout", opts.readyTimeout);
        const name = await g.gitlabPrepare(new cove.Store(), Deno.env.toObject(), {
          defaultImage: opts.defaultImage,
          readyTimeoutMs,
          onProgress: log,
        });
        log(`cove: VM ${name} is ready`);
        return 0;
      })
    );

  gitlab.command("run")
    .description("run a stage's script in the job's VM (called with SCRIPT STAGE)")
    .argument("<script>", "the stage's script, written by the runner")
    .argument("<stage>", "the stage's name")
    .action((script, stageName) =>
      stage(async (g) => {
        const cove = await import("../../mod.ts");
        const env = Deno.env.toObject();
        const code = await g.gitlabRun(new cove.Store(), env, script, stageName);
        return code === 0 ? 0 : g.failureCodes(env).build;
      })
    );

  gitlab.command("cleanup")
    .description("stop and delete the job's VM")
    .action(() =>
      stage(async (g) => {
        const cove = await import("../../mod.ts");
        await g.gitlabCleanup(new cove.Store(), Deno.env.toObject());
        return 0;
      })
    );
}
