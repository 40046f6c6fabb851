/**
 * Host lookups for the QEMU engine: finding executables on PATH (and in
 * Homebrew's prefixes), the QEMU system binary for a guest, and small file
 * probes. Kept apart from the engine so that tests can point them elsewhere
 * with environment variables (PATH, COVE_FIRMWARE_DIRS).
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../../core/errors.ts";
import type { ArchName } from "../../core/spec/schema.ts";
import { qemuSystemName } from "./argv.ts";

/** Extra places Homebrew and others install binaries, searched after PATH. */
const EXTRA_BIN_DIRS = ["/opt/homebrew/bin", "/usr/local/bin"];

/** True when `path` is an executable regular file. */
export function isExecutable(path: string): boolean {
  try {
    const st = Deno.statSync(path);
    return st.isFile && ((st.mode ?? 0o755) & 0o111) !== 0;
  } catch {
    return false;
  }
}

/** Finds an executable by name on PATH (then Homebrew's bin dirs), or undefined. */
export function which(name: string, extraDirs: string[] = EXTRA_BIN_DIRS): string | undefined {
  if (name.includes("/")) return isExecutable(name) ? name : undefined;
  const dirs = (Deno.env.get("PATH") ?? "").split(":").filter((d) => d);
  for (const d of [...dirs, ...extraDirs]) {
    const p = join(d, name);
    if (isExecutable(p)) return p;
  }
  return undefined;
}

/** The QEMU binary for a guest architecture, or a clear host error. */
export function findQemu(arch: ArchName, override?: string): string {
  const name = override ?? qemuSystemName(arch);
  const found = which(name);
  if (found) return found;
  const pkg = arch === "arm64" ? "qemu-system-arm" : "qemu-system-x86";
  throw new CoveError(
    "qemu.not_found",
    `${name} is not installed (no QEMU binary for ${arch} guests)`,
    {
      hint: override
        ? "fix qemu.binary in cove.yaml"
        : `install QEMU: 'apt-get install ${pkg}' or 'brew install qemu'`,
      exit: ExitCode.Host,
    },
  );
}

/** True when a path exists (file, directory or socket). */
export function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The user id, or 0 where there is none (Windows). */
export function uid(): number {
  return Deno.uid() ?? 0;
}
