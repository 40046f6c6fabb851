/**
 * The last-exit record (`last-exit.json` in the bundle): how the VM's last
 * run ended, written by the supervisor when it ends. `cove list` and
 * `cove get` show a crash from it, quoting the last console lines.
 * @module
 */
import { writeFileAtomic } from "../store/fsutil.ts";
import type { Bundle } from "../store/bundle.ts";

/** How the last run ended. */
export interface LastExit {
  /** ISO 8601 time the run ended. */
  time: string;
  /** guest/host/suspended: a normal end; crash: the engine died; failed: it never started. */
  reason: "guest" | "host" | "crash" | "suspended" | "failed";
  /** One line: what went wrong (crash, failed). */
  message?: string;
  /** The error code (failed). */
  code?: string;
  /** The last lines of the console (control characters removed). */
  consoleTail: string[];
}

/** Removes terminal escape sequences and control characters from console text. */
export function cleanConsoleText(text: string): string {
  return text
    // deno-lint-ignore no-control-regex
    .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
    // deno-lint-ignore no-control-regex
    .replace(/\x1b[()][A-Za-z0-9]/g, "")
    // deno-lint-ignore no-control-regex
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, "")
    .replace(/\r/g, "");
}

/** The last `n` non-empty lines of console bytes. */
export function consoleTailLines(bytes: Uint8Array, n = 8): string[] {
  const text = cleanConsoleText(new TextDecoder().decode(bytes));
  return text.split("\n").map((l) => l.trimEnd()).filter((l) => l.trim()).slice(-n);
}

/** Writes the record. Best effort: a failure here never hides the real error. */
export async function writeLastExit(bundle: Bundle, rec: LastExit): Promise<void> {
  try {
    await writeFileAtomic(bundle.lastExitPath, JSON.stringify(rec, null, 2) + "\n");
  } catch { /* the bundle may be gone (ephemeral) */ }
}

/** Reads the record, or undefined. */
// deno-lint-ignore require-await -- synchronous file calls inside (no thread hop), async to callers
export async function readLastExit(bundle: Bundle): Promise<LastExit | undefined> {
  // Most VMs listed have never run: asking first spares a thrown NotFound.
  if (!bundle.has("lastExit")) return undefined;
  try {
    // Synchronous: a small file read per VM by `cove list`, without a thread hop.
    return JSON.parse(Deno.readTextFileSync(bundle.lastExitPath)) as LastExit;
  } catch {
    return undefined;
  }
}

/** The one-line error shown for a crashed or failed run, or undefined for a clean one. */
export function lastExitError(rec: LastExit | undefined): string | undefined {
  if (!rec || (rec.reason !== "crash" && rec.reason !== "failed")) return undefined;
  const what = rec.reason === "crash" ? "crashed" : "failed to start";
  const msg = rec.message ? `${what}: ${rec.message}` : what;
  const quoted = rec.consoleTail.slice(-3).join(" | ");
  return quoted ? `${msg} (last console lines: ${quoted})` : msg;
}
