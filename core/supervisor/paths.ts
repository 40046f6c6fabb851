/**
 * Where a running VM's sockets live. Unix socket paths are limited to about
 * 104 bytes (sun_path), and a bundle under a long COVE_HOME easily exceeds
 * that. So when `BUNDLE/control.sock` or `BUNDLE/run/*.sock` would be too
 * long, the sockets go to a short private directory
 * (`$XDG_RUNTIME_DIR/cove/ID` or `/tmp/cove-UID/ID`, 0700) and the bundle
 * holds symlinks to them (`control.sock`, `run`). Clients read the symlink
 * and connect to its target.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import { RUNTIME_NAME_MAX } from "../../engines/engine.ts";
import { type Bundle, BUNDLE_FILES } from "../store/bundle.ts";

/** The longest socket path cove binds (macOS allows 103 bytes plus NUL). */
export const MAX_SOCKET_PATH = 100;

function byteLength(s: string): number {
  return new TextEncoder().encode(s).length;
}

/** True when a unix socket can be bound at this path. */
export function socketPathFits(path: string): boolean {
  return byteLength(path) <= MAX_SOCKET_PATH;
}

/** The root of short runtime directories for this user. */
export function shortRuntimeRoot(): string {
  const xdg = Deno.env.get("XDG_RUNTIME_DIR");
  // Room for the deepest socket of a short layout: ID/run/NAME (see runtimeLayout).
  const deepest = join("0123456789ab", "run", "x".repeat(RUNTIME_NAME_MAX));
  if (xdg && socketPathFits(join(xdg, "cove", deepest))) {
    return join(xdg, "cove");
  }
  const uid = Deno.uid() ?? 0;
  return join("/tmp", `cove-${uid}`);
}

/**
 * Makes the short runtime root if needed, and refuses one that another user
 * could have planted or can reach: a symlink, not owned by us, or open to
 * group or others (it is in a shared /tmp).
 */
export async function ensurePrivateRoot(root: string): Promise<void> {
  try {
    await Deno.mkdir(root, { mode: 0o700 });
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
  }
  const st = await Deno.lstat(root);
  const me = Deno.uid();
  const why = st.isSymlink
    ? "is a symlink"
    : !st.isDirectory
    ? "is not a directory"
    : me !== null && st.uid !== me
    ? `is owned by uid ${st.uid}, not ${me}`
    : st.mode !== null && (st.mode & 0o077) !== 0
    ? `is accessible to other users (mode ${(st.mode & 0o777).toString(8)})`
    : "";
  if (why) {
    throw new CoveError("runtime.unsafe_dir", `the runtime directory ${root} ${why}`, {
      hint: `remove it (or make it yours with mode 700), or set XDG_RUNTIME_DIR`,
      exit: ExitCode.Host,
    });
  }
}

/** A short, stable id for a bundle directory. */
export async function bundleId(dir: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(dir));
  return Array.from(new Uint8Array(digest).subarray(0, 6), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

/** The socket and runtime paths of a running VM. */
export interface RuntimeLayout {
  /** Where the supervisor binds the control socket. */
  controlSocket: string;
  /** True when controlSocket is elsewhere and BUNDLE/control.sock links to it. */
  controlLinked: boolean;
  /** The engine's runtime directory. */
  runtimeDir: string;
  /** True when runtimeDir is elsewhere and BUNDLE/run links to it. */
  runtimeLinked: boolean;
}

/** Chooses the layout for a bundle: in the bundle when paths fit, else short paths. */
export async function runtimeLayout(bundle: Bundle): Promise<RuntimeLayout> {
  const inBundleRuntime = bundle.runtimeDir;
  const runtimeFits = byteLength(inBundleRuntime) + 1 + RUNTIME_NAME_MAX <= MAX_SOCKET_PATH;
  const controlFits = socketPathFits(bundle.controlSocket);
  const root = shortRuntimeRoot();
  const short = join(root, await bundleId(bundle.dir));
  if (!runtimeFits || !controlFits) await ensurePrivateRoot(root);
  return {
    controlSocket: controlFits ? bundle.controlSocket : join(short, BUNDLE_FILES.controlSocket),
    controlLinked: !controlFits,
    runtimeDir: runtimeFits ? inBundleRuntime : join(short, "run"),
    runtimeLinked: !runtimeFits,
  };
}

/** The path a client connects to for a bundle's control socket (follows the link). */
export async function controlSocketTarget(bundle: Bundle): Promise<string> {
  try {
    const st = await Deno.lstat(bundle.controlSocket);
    if (st.isSymlink) return await Deno.readLink(bundle.controlSocket);
  } catch { /* not there: connecting will say so */ }
  return bundle.controlSocket;
}
