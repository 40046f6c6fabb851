/**
 * Test helpers shared by unit and e2e tests: running the real CLI as a
 * subprocess with a private COVE_HOME, and temporary directories.
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { assert, assertEquals, assertMatch } from "./assert.ts";

/** The repository root. */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
/** The CLI entry point. */
export const CLI = join(ROOT, "cli", "main.ts");

/** The result of one CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cove ARGS` from source with COVE_HOME set; never throws on a non-zero exit. */
export async function cove(
  home: string,
  args: string[],
  opts: { stdin?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<CliResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, ...args],
    env: { COVE_HOME: home, NO_COLOR: "1", ...opts.env },
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    cwd: ROOT,
  }).spawn();
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
  try {
    const r = await child.output();
    const dec = new TextDecoder();
    return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

/** A temporary directory removed after `fn`. */
export async function withTempDir<T>(
  fn: (dir: string) => Promise<T>,
  prefix = "cove-test-",
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Allocated bytes of a file (st_blocks * 512). */
export async function allocatedBytes(path: string): Promise<number> {
  const st = await Deno.stat(path);
  return (st.blocks ?? 0) * 512;
}

/**
 * Asserts that a CLI run failed the way cove fails: exit code `exit`, nothing
 * on stdout, one line on stderr matching `re`, and no stack trace.
 */
export function assertOneLineError(r: CliResult, exit: number, re: RegExp): void {
  assertEquals(r.code, exit, r.stderr);
  assertEquals(r.stdout, "");
  const lines = r.stderr.trimEnd().split("\n");
  assertEquals(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assertMatch(lines[0], re);
  assert(!/\bat .*\.ts:\d+/.test(r.stderr), "no stack trace");
}
