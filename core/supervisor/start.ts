/**
 * `cove start`: the supervisor (`cove run NAME`) launched detached, in its
 * own session, so it survives the shell that started it. Its stderr is read
 * only until the VM runs: a failure to start is reported as the
 * supervisor's own one-line error and exit code. Afterwards the supervisor
 * logs to `supervisor.log` in the bundle.
 * @module
 */
import { fileURLToPath } from "node:url";
import { CoveError, ExitCode } from "../errors.ts";
import { formatForward } from "../net/forwards.ts";
import type { PortForwardSpec } from "../spec/schema.ts";
import { heldError } from "../store/bundle.ts";
import type { Store } from "../store/store.ts";
import { httpRequest } from "./http.ts";
import { controlSocketTarget } from "./paths.ts";
import type { SupervisorStatus } from "./protocol.ts";

/** The command that runs `cove ARGS` in a new process (compiled binary or deno + cli/main.ts). */
export function coveCommand(args: string[]): { command: string; args: string[] } {
  if (Deno.build.standalone) return { command: Deno.execPath(), args };
  const main = fileURLToPath(new URL("../../cli/main.ts", import.meta.url));
  const config = fileURLToPath(new URL("../../deno.json", import.meta.url));
  const pre = ["run", "-A", "--quiet"];
  try {
    Deno.statSync(config);
    pre.push("--config", config);
  } catch { /* no config next to the sources */ }
  return { command: Deno.execPath(), args: [...pre, main, ...args] };
}

/** Options of {@link startDetached}. */
export interface StartOptions {
  /** How long to wait for the VM to run (ms). */
  timeoutMs?: number;
  /** Show a window if the VM has a display (default true). */
  graphics?: boolean;
  /** Port forwards for this run only, on top of the spec's. */
  forwards?: PortForwardSpec[];
}

/**
 * The error a detached supervisor reported before the VM ran. It writes
 * its error as `{"error": {code, message, hint, exit}}` (see cli/main.ts);
 * anything else on its stderr is kept as the message of `vm.start_failed`.
 */
export function supervisorFailure(stderrText: string, status: number): CoveError {
  const lines = stderrText.split("\n").map((l) => l.trim()).filter((l) => l);
  for (const line of lines.toReversed()) {
    if (!line.startsWith("{")) continue;
    try {
      const e = JSON.parse(line)?.error;
      if (e && typeof e.code === "string" && typeof e.message === "string") {
        return new CoveError(e.code, e.message, {
          hint: typeof e.hint === "string" ? e.hint : undefined,
          exit: (typeof e.exit === "number" ? e.exit : status || ExitCode.Failure) as ExitCode,
        });
      }
    } catch { /* not the error line */ }
  }
  const msg = (lines.pop() ?? "").replace(/^cove: /, "") ||
    `the supervisor exited with status ${status}`;
  return new CoveError("vm.start_failed", msg, { exit: (status || ExitCode.Failure) as ExitCode });
}

/** How long a timed-out `cove start` waits after SIGTERM before SIGKILL. */
const START_KILL_GRACE_MS = 5000;

/** How often `cove start` asks a starting supervisor for its status when nothing wakes it sooner. */
const START_POLL_MS = 50;

/** Starts the supervisor of `name` detached and waits until the VM runs. */
export async function startDetached(
  store: Store,
  name: string,
  opts: StartOptions = {},
): Promise<SupervisorStatus> {
  const bundle = await store.get(name);
  const holder = await bundle.holder();
  if (holder?.purpose === "run") {
    throw new CoveError("vm.running", `VM '${name}' is already running`, {
      hint: `attach with 'cove console ${name}' or stop it with 'cove stop ${name}'`,
      exit: ExitCode.State,
    });
  }
  if (holder) throw heldError(name, "start", holder);
  const cmd = coveCommand([
    "run",
    name,
    "--detached",
    ...(opts.graphics === false ? ["--no-graphics"] : []),
    ...(opts.forwards ?? []).flatMap((f) => ["--forward", formatForward(f)]),
  ]);
  const env: Record<string, string> = { COVE_HOME: store.home };
  const child = new Deno.Command(cmd.command, {
    args: cmd.args,
    cwd: store.home,
    env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    detached: true,
  }).spawn();
  let stderrText = "";
  // Output on its stderr or its exit wakes the wait below at once (the supervisor writes an empty
  // line when the VM runs: READY_NUDGE in ./protocol.ts); the poll's interval is only a safety net.
  let nudged = false;
  let wake: (() => void) | undefined;
  const nudge = () => {
    nudged = true;
    wake?.();
  };
  const reader = child.stderr.getReader();
  const readErr = (async () => {
    const dec = new TextDecoder();
    try {
      while (true) {
        const r = await reader.read();
        if (r.done) break;
        stderrText += dec.decode(r.value, { stream: true });
        nudge();
      }
    } catch { /* cancelled */ }
  })();
  let status: Deno.CommandStatus | undefined;
  const exited = child.status.then((s) => {
    status = s;
    nudge();
    return s;
  });
  const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
  while (true) {
    if (status) {
      await readErr;
      throw supervisorFailure(stderrText, status.code);
    }
    if (Date.now() > deadline) {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      // A supervisor stuck in its stop is killed (its reaper takes the VM with it).
      let timer: ReturnType<typeof setTimeout> | undefined;
      const killed = new Promise<void>((r) => {
        timer = setTimeout(() => {
          try {
            child.kill("SIGKILL");
          } catch { /* gone */ }
          r();
        }, START_KILL_GRACE_MS);
      });
      await Promise.race([exited, killed]);
      await exited;
      clearTimeout(timer);
      throw new CoveError(
        "vm.start_timeout",
        `VM '${name}' did not start within ${Math.round((opts.timeoutMs ?? 120_000) / 1000)}s`,
        {
          hint: `see ${bundle.supervisorLog}`,
        },
      );
    }
    try {
      const res = await httpRequest(
        await controlSocketTarget(bundle),
        "GET",
        "/status",
        undefined,
        { timeoutMs: 1000 },
      );
      if (res.status === 200) {
        const s = res.json<SupervisorStatus>();
        // Only our own supervisor's answer counts: a concurrent start's
        // supervisor may hold the VM, and then ours fails "already running".
        if (s.state !== "starting" && s.pid === child.pid) {
          await reader.cancel().catch(() => {});
          child.unref();
          return s;
        }
      }
    } catch { /* not yet */ }
    if (!nudged) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        wake = r;
        timer = setTimeout(r, START_POLL_MS);
      });
      clearTimeout(timer);
      wake = undefined;
    }
    nudged = false;
  }
}
