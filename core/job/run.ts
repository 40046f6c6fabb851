/**
 * `cove job run`: one job in a fresh VM. The job's VM is an ephemeral
 * copy-on-write clone of a local VM (or a VM made from a registry
 * reference, pulled once into the cache), run headless by a supervisor in
 * this process (so the VM dies with the job, whatever kills it), reached
 * through a {@link GuestChannel} (ssh today), and stopped and deleted on
 * every way out. Its record says how long each phase took and how it ended.
 *
 * Exit codes: the job's own, or cove's 200-208 (ExitCode.Job*) when the
 * infrastructure failed; the record's `failure` says which.
 *
 * After a SIGKILL the VM (a QEMU child set to die with us) goes too; its
 * bundle keeps the ephemeral mark without a lock holder, and the next
 * command that writes (`cove job`, `cove create`, ...) reaps it.
 * @module
 */
import { CoveError, type ErrorJson, ExitCode, toCoveError } from "../errors.ts";
import { type Bundle, type BundleLock } from "../store/bundle.ts";
import { type Store, validateName } from "../store/store.ts";
import type { VmSpec } from "../spec/schema.ts";
import { looksLikeReference } from "../oci/reference.ts";
import type { RunResult, Supervisor } from "../supervisor/supervisor.ts";
import { formatDuration } from "../units.ts";
import { type GuestChannel, openChannel } from "./channel.ts";
import { acquireSlot, type SlotKind, type SlotLease } from "./slots.ts";

/** One `--artifact GUEST_PATH:HOST_DIR`. */
export interface JobArtifact {
  guest: string;
  host: string;
}

/** Options of {@link runJob}. */
export interface JobOptions {
  /** A local VM's name, or a registry reference. */
  from: string;
  /** The job VM's name; default `job-` and 8 random hex digits. */
  name?: string;
  cpus?: number;
  /** A size, e.g. `4GiB`. */
  memory?: string;
  env?: Record<string, string>;
  artifacts?: JobArtifact[];
  /** The command, as argv. */
  command: string[];
  /** Bytes for the command's stdin (a script for `bash -s`). */
  stdin?: Uint8Array;
  /** How long the command may run (ms). */
  timeoutMs?: number;
  /** How long to wait for a host slot (ms); default: as long as it takes. */
  queueTimeoutMs?: number;
  /** How long the VM may take to answer ssh once it runs (ms); default 20 minutes. */
  readyTimeoutMs?: number;
  /** Keep a failed job's VM (stopped) for inspection instead of deleting it. */
  keepOnFailure?: boolean;
  /** The job's live output. */
  onStdout?: (b: Uint8Array) => void;
  onStderr?: (b: Uint8Array) => void;
  /** cove's own progress lines (queue position, phases, warnings). */
  onProgress?: (line: string) => void;
  /** Aborting it interrupts the job (the CLI aborts on SIGINT, SIGTERM, SIGHUP). */
  signal?: AbortSignal;
  /** Where cove's ssh key lives; default $COVE_HOME. */
  sshHome?: string;
}

/** One artifact in the record. */
export interface ArtifactRecord extends JobArtifact {
  status: "copied" | "missing" | "skipped" | "failed";
  files?: number;
}

/** The final record of a job (`--format json`). */
export interface JobRecord {
  name: string;
  from: string;
  /** The process exit code: the job's, or cove's 200-208. */
  exitCode: number;
  /** The command's own exit status, when it ran to its end. */
  jobExitCode: number | null;
  /** Set when cove's side failed: the error, as `--format json` errors print it. */
  failure: ErrorJson | null;
  /** Milliseconds spent in each phase (null: not reached). */
  times: {
    queue: number | null;
    clone: number | null;
    boot: number | null;
    ready: number | null;
    job: number | null;
    total: number;
  };
  /** Milliseconds from the start to the first byte of the job's output (null: none). */
  firstOutput: number | null;
  slot: { kind: SlotKind; index: number } | null;
  artifacts: ArtifactRecord[];
  /** True when the VM was kept (--keep-on-failure). */
  kept: boolean;
}

/** The default time a job VM may take to answer ssh once it runs. */
export const DEFAULT_READY_TIMEOUT_MS = 20 * 60_000;

/** A job's VM name: `job-` and 8 random hex digits. */
export function jobVmName(): string {
  return `job-${crypto.randomUUID().slice(0, 8)}`;
}

/** Parses `K=V` (`--env`); the name must be a shell variable name. */
export function parseEnvPair(s: string): [string, string] {
  const i = s.indexOf("=");
  const k = i > 0 ? s.slice(0, i) : "";
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) {
    throw new CoveError("job.env", `--env: '${s}' is not K=V with a variable name K`, {
      hint: "write --env NAME=value (NAME: letters, digits and _, not starting with a digit)",
      exit: ExitCode.Usage,
    });
  }
  return [k, s.slice(i + 1)];
}

/** Parses `GUEST_PATH:HOST_DIR` (`--artifact`); the guest path must be absolute. */
export function parseArtifact(s: string): JobArtifact {
  const i = s.indexOf(":");
  const guest = i > 0 ? s.slice(0, i) : "";
  const host = i > 0 ? s.slice(i + 1) : "";
  if (!guest.startsWith("/") || !host || guest.split("/").includes("..")) {
    throw new CoveError("job.artifact", `--artifact: '${s}' is not GUEST_PATH:HOST_DIR`, {
      hint: "write --artifact /absolute/path/in/guest:host-dir, e.g. /tmp/out:./artifacts",
      exit: ExitCode.Usage,
    });
  }
  return { guest, host };
}

/** The job's exit code for a cove failure, keeping the 200-208 codes and folding the rest into 200. */
export function jobFailureExit(e: CoveError): number {
  return e.exit >= ExitCode.JobSystem && e.exit <= ExitCode.JobLost ? e.exit : ExitCode.JobSystem;
}

function withCode(e: unknown, code: string, exit: ExitCode, prefix: string): CoveError {
  const ce = toCoveError(e);
  if (ce.exit >= ExitCode.JobSystem && ce.exit <= ExitCode.JobLost) return ce;
  return new CoveError(code, `${prefix}: ${ce.message}`, { hint: ce.hint, exit, cause: ce });
}

function interrupted(what: string): CoveError {
  return new CoveError("job.interrupted", `the job was interrupted ${what}; its VM was removed`, {
    exit: ExitCode.JobInterrupted,
  });
}

/** Where the job's source comes from, and which slot pool it needs. */
async function resolveFrom(
  store: Store,
  from: string,
  onProgress: (l: string) => void,
): Promise<{ local: boolean; kind: SlotKind }> {
  let bundle: Bundle | undefined;
  try {
    bundle = await store.get(from);
  } catch (e) {
    if (!(e instanceof CoveError && (e.code === "vm.not_found" || e.code === "vm.bad_name"))) {
      throw e;
    }
  }
  if (bundle) {
    const spec = await bundle.readSpec();
    return { local: true, kind: spec.os === "macos" ? "macos" : "linux" };
  }
  if (!looksLikeReference(from)) {
    throw new CoveError("job.source", `no VM named '${from}', and it is not a registry reference`, {
      hint: "give a VM from 'cove list' or a reference like ghcr.io/org/image:tag",
      exit: ExitCode.JobSource,
    });
  }
  try {
    const { pullImage } = await import("../oci/pull.ts");
    const img = await pullImage(from, { home: store.home });
    if (!img.cached) onProgress(`pulled ${from} into the cache`);
    return { local: false, kind: img.tart.os === "darwin" ? "macos" : "linux" };
  } catch (e) {
    throw withCode(e, "job.source", ExitCode.JobSource, `cannot pull '${from}'`);
  }
}

/** How long a job waits for other jobs' clones of the same source to finish. */
const CLONE_WAIT_MS = 120_000;

/**
 * Clones `from` (as an ephemeral VM, locked for its supervisor, unless
 * `ephemeral` is false); while other jobs clone the same source (each
 * holds its lock for the copy-on-write copy), waits for them.
 */
export async function cloneWhenFree(
  store: Store,
  from: string,
  name: string,
  signal?: AbortSignal,
  ephemeral = true,
): ReturnType<Store["clone"]> {
  const deadline = Date.now() + CLONE_WAIT_MS;
  while (true) {
    try {
      return await store.clone(from, name, { ephemeral });
    } catch (e) {
      // Busy with another clone, or freed between the try and the look at its holder (which
      // then reads as running): try again; a source that a supervisor really runs is refused.
      if (!(e instanceof CoveError && (e.code === "vm.busy" || e.code === "vm.running"))) throw e;
      let h = await store.bundle(from).holder().catch(() => null);
      if (h?.purpose === "run") {
        // A lock file read while its holder rewrites it also reads as a supervisor's: look again.
        await new Promise((r) => setTimeout(r, 50));
        h = await store.bundle(from).holder().catch(() => null);
      }
      if ((h !== null && h.purpose !== "clone") || Date.now() > deadline) throw e;
      if (signal?.aborted) throw interrupted("before it started");
      await new Promise((r) => setTimeout(r, 50 + Math.random() * 150));
    }
  }
}

/** Makes the job's VM, locked for its supervisor and marked ephemeral. */
async function makeVm(
  store: Store,
  opts: JobOptions,
  name: string,
  local: boolean,
): Promise<{ bundle: Bundle; lock: BundleLock }> {
  const flags = {
    ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}),
    ...(opts.memory !== undefined ? { memory: opts.memory } : {}),
  };
  if (local) {
    const c = await cloneWhenFree(store, opts.from, name, opts.signal);
    const lock = c.lock!;
    try {
      if (Object.keys(flags).length) {
        const { applyFlags } = await import("../spec/compose.ts");
        await c.bundle.writeSpec(applyFlags(await c.bundle.readParsedSpec(), flags));
      }
    } catch (e) {
      lock.release();
      await store.delete(name).catch(() => {});
      throw e;
    }
    return { bundle: c.bundle, lock };
  }
  const { createFromOci } = await import("../oci/create.ts");
  const { bundle } = await createFromOci(store, name, opts.from, { flags });
  const lock = await bundle.tryLock({ purpose: "run" });
  if (!lock) throw new CoveError("vm.busy", `VM '${name}' was taken by another command`, {});
  await Deno.writeTextFile(bundle.ephemeralMark, `${opts.from}\n`, { mode: 0o600 });
  return { bundle, lock };
}

/**
 * Runs one job (see the module doc). Cove's own failures do not throw:
 * they end the job with a 200-208 exit code and a `failure` in the record.
 * Only a malformed request (a bad name) throws, before anything is made.
 */
export async function runJob(store: Store, opts: JobOptions): Promise<JobRecord> {
  const t0 = performance.now();
  const since = () => Math.round(performance.now() - t0);
  const progress = opts.onProgress ?? (() => {});
  const name = opts.name ?? jobVmName();
  validateName(name);
  const rec: JobRecord = {
    name,
    from: opts.from,
    exitCode: ExitCode.JobSystem,
    jobExitCode: null,
    failure: null,
    times: { queue: null, clone: null, boot: null, ready: null, job: null, total: 0 },
    firstOutput: null,
    slot: null,
    artifacts: (opts.artifacts ?? []).map((a) => ({ ...a, status: "skipped" })),
    kept: false,
  };
  const signal = opts.signal ?? new AbortController().signal;
  let lease: SlotLease | undefined;
  let made = false;
  let sup: Supervisor | undefined;
  let supDone: Promise<{ ended?: RunResult; failed?: CoveError }> | undefined;
  let vmEnded = false;
  const running = Promise.withResolvers<Supervisor>();
  try {
    // A writing command: first reap job VMs whose process was killed.
    await store.sweep().catch(() => {});
    const { local, kind } = await resolveFrom(store, opts.from, progress);
    if (signal.aborted) throw interrupted("before it started");

    const tq = performance.now();
    lease = await acquireSlot(store.home, kind, {
      vm: name,
      queueTimeoutMs: opts.queueTimeoutMs,
      signal,
      onQueue: (pos, total) =>
        progress(
          `waiting for a job slot: place ${pos} in the queue (${total} ${kind} slots, all in use)`,
        ),
    });
    rec.times.queue = Math.round(performance.now() - tq);
    rec.slot = { kind, index: lease.slot };
    if (signal.aborted) throw interrupted("before it started");

    const tc = performance.now();
    let made_: { bundle: Bundle; lock: BundleLock };
    try {
      made_ = await makeVm(store, opts, name, local);
    } catch (e) {
      const ce = toCoveError(e);
      if (ce.code === "vm.not_found" || ce.code.startsWith("oci.")) {
        throw withCode(
          ce,
          "job.source",
          ExitCode.JobSource,
          `cannot make the job's VM from '${opts.from}'`,
        );
      }
      throw ce;
    }
    made = true;
    const { bundle, lock } = made_;
    rec.times.clone = Math.round(performance.now() - tc);
    const spec: VmSpec = await bundle.readSpec();

    // Boot: the supervisor runs in this process.
    const tb = performance.now();
    const { runSupervisor } = await import("../supervisor/supervisor.ts");
    supDone = runSupervisor(store, name, {
      lock,
      graphics: false,
      stopTimeout: 5,
      onRunning: (s) => running.resolve(s),
    }).then((ended) => ({ ended }), (e) => ({ failed: toCoveError(e) }))
      .finally(() => (vmEnded = true));
    const aborted = new Promise<"aborted">((r) => {
      if (signal.aborted) r("aborted");
      signal.addEventListener("abort", () => r("aborted"), { once: true });
    });
    const first = await Promise.race([running.promise, supDone, aborted]);
    if (first === "aborted") throw interrupted("while its VM booted");
    if (!("hub" in first)) {
      const why = first.failed?.line() ?? `it stopped (${first.ended?.exit.reason})`;
      throw new CoveError("job.boot", `the job's VM '${name}' did not boot: ${why}`, {
        hint: `see 'cove logs' of the source VM, or run it with 'cove run ${opts.from}'`,
        exit: ExitCode.JobBoot,
      });
    }
    sup = first;
    rec.times.boot = Math.round(performance.now() - tb);

    // Ready: the channel answers.
    const tr = performance.now();
    const channel: GuestChannel = openChannel(bundle, spec, { home: opts.sshHome });
    const readyMs = opts.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    const ready = channel.waitReady(readyMs).then(() => "ready" as const, (e) => toCoveError(e));
    const r = await Promise.race([ready, supDone.then(() => "ended" as const), aborted]);
    if (r === "aborted") throw interrupted("while its VM booted");
    if (r === "ended") {
      throw new CoveError("job.boot", `the job's VM '${name}' stopped before it answered ssh`, {
        hint: "see its console log with 'cove job run --keep-on-failure' and 'cove logs'",
        exit: ExitCode.JobBoot,
      });
    }
    if (r instanceof CoveError) {
      if (vmEnded) {
        throw new CoveError("job.boot", `the job's VM '${name}' stopped before it answered ssh`, {
          exit: ExitCode.JobBoot,
        });
      }
      throw new CoveError(
        "job.ready",
        `the job's VM '${name}' did not answer ssh within ${formatDuration(readyMs)}: ${r.message}`,
        {
          hint:
            "the guest needs sshd and cove's key (a cloud-init seed gives it); wait longer with --ready-timeout",
          exit: ExitCode.JobReady,
        },
      );
    }
    rec.times.ready = Math.round(performance.now() - tr);

    // The job.
    const tj = performance.now();
    const stop = new AbortController();
    let timedOut = false;
    let lost = false;
    const onAbort = () => stop.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const timer = opts.timeoutMs !== undefined
      ? setTimeout(() => {
        timedOut = true;
        stop.abort();
      }, opts.timeoutMs)
      : undefined;
    void supDone.then(() => {
      lost = true;
      stop.abort();
    });
    const mark = (fn?: (b: Uint8Array) => void) => (b: Uint8Array) => {
      if (rec.firstOutput === null) rec.firstOutput = since();
      fn?.(b);
    };
    let res;
    try {
      res = await channel.exec(opts.command, {
        env: opts.env,
        stdin: opts.stdin,
        onStdout: mark(opts.onStdout),
        onStderr: mark(opts.onStderr),
        signal: stop.signal,
      });
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    }
    rec.times.job = Math.round(performance.now() - tj);
    if (signal.aborted) throw interrupted("while it ran");
    if (timedOut) {
      throw new CoveError(
        "job.timeout",
        `the job ran past --timeout ${formatDuration(opts.timeoutMs!)} and was stopped`,
        {
          exit: ExitCode.JobTimeout,
        },
      );
    }
    if (lost || (res.channelFailed && (vmEnded || !(await bundle.isRunning())))) {
      throw new CoveError("job.lost", `the job's VM '${name}' stopped while the job ran`, {
        hint: "see its console log with --keep-on-failure and 'cove logs'",
        exit: ExitCode.JobLost,
      });
    }
    rec.jobExitCode = res.code;
    rec.exitCode = res.code;

    // Artifacts: a missing one is a warning; a failed copy is cove's failure.
    for (const a of rec.artifacts) {
      if (signal.aborted) throw interrupted("while it copied artifacts");
      const out = await channel.copyOut(a.guest, a.host).catch((e) => {
        a.status = "failed";
        throw e;
      });
      if (out.status === "missing") {
        a.status = "missing";
        progress(`warning: artifact ${a.guest} does not exist in the guest; skipped`);
      } else {
        a.status = "copied";
        a.files = out.files;
      }
    }
  } catch (e) {
    const ce = toCoveError(e);
    rec.failure = ce.toJSON();
    rec.exitCode = jobFailureExit(ce);
    rec.failure.exit = rec.exitCode;
  } finally {
    const failed = rec.exitCode !== 0;
    if (supDone && !sup) {
      // Interrupted while it booted: wait until it runs (or failed), then stop it.
      const s = await Promise.race([running.promise, supDone]);
      if ("hub" in s) sup = s;
    }
    if (sup) await sup.stop(true, 0).catch(() => {});
    if (supDone) await supDone;
    if (made) {
      if (failed && opts.keepOnFailure && rec.failure?.code !== "job.interrupted") {
        // Kept stopped: no longer ephemeral, so no sweep takes it.
        await Deno.remove(store.bundle(name).ephemeralMark).catch(() => {});
        rec.kept = true;
        progress(
          `kept the failed job's VM '${name}' (stopped); delete it with 'cove delete ${name}'`,
        );
      } else {
        await store.delete(name).catch(() => {});
      }
    }
    lease?.release();
    rec.times.total = since();
  }
  return rec;
}
