/**
 * Makes QEMU (and virtiofsd) die with the process that started it, even
 * when that process is killed with SIGKILL and gets no chance to clean up.
 *
 * Linux: `setpriv --pdeathsig KILL -- qemu ...` (util-linux, always there):
 * the kernel sends SIGKILL to QEMU when its parent dies. setpriv execs QEMU,
 * so the child's pid is QEMU's. Deno spawns children from its main thread,
 * which lives as long as the process, so the "parent thread" rule of
 * PR_SET_PDEATHSIG does not fire early.
 *
 * Elsewhere (macOS): a fixed /bin/sh watchdog (the command is passed as
 * positional arguments, never interpolated into the script) whose stdin is
 * a pipe from the supervisor. When the supervisor dies the pipe closes, the
 * watchdog's reader sees EOF and kills QEMU. The reader holds no copy of
 * stdout/stderr, so QEMU's stderr closes when QEMU exits; the caller closes
 * the pipe when the watchdog exits, which ends the reader. `COVE_REAPER=sh`
 * forces this path on Linux too, so it is tested here.
 * @module
 */
import { which } from "./host.ts";

/** The watchdog script: runs "$@" and kills it when stdin reaches EOF. */
export const WATCHDOG_SCRIPT = [
  "exec 3<&0",
  '"$@" </dev/null 3<&- &',
  "q=$!",
  "trap 'kill -TERM $q 2>/dev/null' TERM INT HUP",
  "( cat <&3 >/dev/null 2>&1; kill -KILL $q 2>/dev/null ) </dev/null >/dev/null 2>&1 &",
  "w=$!",
  "exec 3<&-",
  "wait $q",
  "s=$?",
  "kill $w 2>/dev/null",
  "exit $s",
].join("\n");

/** How to spawn a command so that it dies with this process. */
export interface ReapedCommand {
  command: string;
  args: string[];
  /** The caller must pipe stdin and keep it open (never write, never close). */
  holdStdin: boolean;
  /** The spawned pid is the command's own pid (false: a watchdog's). */
  directPid: boolean;
  kind: "pdeathsig" | "watchdog";
}

/** Wraps `bin args` so that it dies with this process. */
export function reaped(bin: string, args: string[]): ReapedCommand {
  const forced = Deno.env.get("COVE_REAPER");
  if (Deno.build.os === "linux" && forced !== "sh") {
    const setpriv = which("setpriv", ["/usr/bin", "/bin"]);
    if (setpriv) {
      return {
        command: setpriv,
        args: ["--pdeathsig", "KILL", "--", bin, ...args],
        holdStdin: false,
        directPid: true,
        kind: "pdeathsig",
      };
    }
  }
  return {
    command: "/bin/sh",
    args: ["-c", WATCHDOG_SCRIPT, "cove-watchdog", bin, ...args],
    holdStdin: true,
    directPid: false,
    kind: "watchdog",
  };
}

/**
 * Spawns `bin args` {@link reaped}: stdin piped (and held) only for the
 * watchdog, stdout dropped, stderr piped. `detached` gives it its own
 * session. Returns the child and how it is reaped.
 */
export function spawnReaped(
  bin: string,
  args: string[],
  opts: { detached?: boolean } = {},
): { child: Deno.ChildProcess; reaper: ReapedCommand } {
  const reaper = reaped(bin, args);
  const child = new Deno.Command(reaper.command, {
    args: reaper.args,
    stdin: reaper.holdStdin ? "piped" : "null",
    stdout: "null",
    stderr: "piped",
    ...(opts.detached ? { detached: true } : {}),
  }).spawn();
  return { child, reaper };
}
