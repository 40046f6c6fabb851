/**
 * virtiofsd discovery and launch, for virtiofs shares on Linux hosts. Two
 * implementations exist: the Rust one (`--shared-dir`, runs unprivileged
 * with `--sandbox none`) and the C one shipped with QEMU up to 7.2
 * (`-o source=`, needs root for its namespace sandbox). When neither is
 * usable, shares fall back to 9p (`-fsdev local`), which needs nothing.
 *
 * `COVE_QEMU_SHARES` = `auto` (default), `9p` or `virtiofs` chooses.
 * @module
 */
import { CoveError, ExitCode } from "../../core/errors.ts";
import { isExecutable, uid, which } from "./host.ts";
import { spawnReaped } from "./reaper.ts";

/** A virtiofsd that can run here. */
export interface Virtiofsd {
  path: string;
  flavour: "rust" | "c";
}

const CANDIDATES = [
  "/usr/libexec/virtiofsd",
  "/usr/lib/virtiofsd",
  "/usr/lib/qemu/virtiofsd",
];

let cached: Virtiofsd | null | undefined;

/** Finds a virtiofsd usable by this user, or null. */
export function findVirtiofsd(): Virtiofsd | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (Deno.build.os !== "linux") return cached;
  const paths = [which("virtiofsd"), ...CANDIDATES].filter((p): p is string =>
    !!p && isExecutable(p)
  );
  for (const path of paths) {
    let help = "";
    try {
      const out = new Deno.Command(path, { args: ["--help"], stdout: "piped", stderr: "piped" })
        .outputSync();
      help = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    } catch {
      continue;
    }
    if (help.includes("--shared-dir")) {
      cached = { path, flavour: "rust" };
      return cached;
    }
    if (help.includes("source=") && uid() === 0) {
      cached = { path, flavour: "c" };
      return cached;
    }
  }
  return cached;
}

/** Which share backend to use on this host. */
export function shareBackend(): { kind: "virtiofs" | "9p"; why: string; virtiofsd?: Virtiofsd } {
  const want = Deno.env.get("COVE_QEMU_SHARES") ?? "auto";
  if (want === "9p") return { kind: "9p", why: "COVE_QEMU_SHARES=9p" };
  const v = findVirtiofsd();
  if (want === "virtiofs") {
    if (!v) {
      throw new CoveError(
        "qemu.no_virtiofsd",
        "COVE_QEMU_SHARES=virtiofs but no usable virtiofsd was found",
        {
          hint: "install virtiofsd, or use COVE_QEMU_SHARES=9p",
          exit: ExitCode.Host,
        },
      );
    }
    return { kind: "virtiofs", why: `COVE_QEMU_SHARES=virtiofs (${v.path})`, virtiofsd: v };
  }
  if (v) return { kind: "virtiofs", why: `virtiofsd at ${v.path}`, virtiofsd: v };
  return {
    kind: "9p",
    why: Deno.build.os === "linux" ? "no usable virtiofsd" : "virtiofsd is Linux-only",
  };
}

/** The arguments that serve `dir` on `socket`. */
export function virtiofsdArgs(
  v: Virtiofsd,
  socket: string,
  dir: string,
  readOnly: boolean,
): string[] {
  if (v.flavour === "rust") {
    const a = [`--socket-path=${socket}`, `--shared-dir=${dir}`, "--cache=auto"];
    if (uid() !== 0) a.push("--sandbox=none");
    if (readOnly) a.push("--readonly");
    return a;
  }
  const a = [
    `--socket-path=${socket}`,
    "-o",
    `source=${dir.replaceAll(",", "\\,")}`,
    "-o",
    "cache=auto",
  ];
  if (readOnly) a.push("-o", "readonly");
  return a;
}

/** A running virtiofsd. */
export interface VirtiofsdProcess {
  child: Deno.ChildProcess;
  socket: string;
  kill(): void;
}

/** Starts virtiofsd for one share and waits until its socket exists. */
export async function startVirtiofsd(
  v: Virtiofsd,
  socket: string,
  dir: string,
  readOnly: boolean,
): Promise<VirtiofsdProcess> {
  await Deno.remove(socket).catch(() => {});
  const { child, reaper: r } = spawnReaped(v.path, virtiofsdArgs(v, socket, dir, readOnly), {
    detached: true,
  });
  const errText = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then(async (s) => {
    exited = true;
    if (r.holdStdin) await child.stdin.close().catch(() => {});
    return s;
  });
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  };
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    try {
      if ((await Deno.stat(socket)).isSocket) return { child, socket, kill };
    } catch { /* not yet */ }
    if (exited) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  kill();
  await status;
  const err = (await errText).split("\n").filter((l) => l.trim()).pop() ?? "no output";
  throw new CoveError("qemu.virtiofsd", `virtiofsd failed to serve '${dir}': ${err}`, {
    hint: "use COVE_QEMU_SHARES=9p to share with 9p instead",
    exit: ExitCode.Host,
  });
}
