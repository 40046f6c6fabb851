/**
 * Builds the libcove_vz TEST DOUBLE (tests/ffi/cove_vz_double.c) with gcc
 * into tests/.cache/ffi/, once per source change: the normal library, and a
 * variant that reports a wrong ABI version. Tests call {@link buildDouble}
 * and get paths back; a missing gcc fails the test with a clear message.
 * @module
 */

const here = new URL(".", import.meta.url).pathname;
const root = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
const cacheDir = `${root}/tests/.cache/ffi`;

/** The ABI version the wrong-version variant reports. */
export const WRONG_ABI_VERSION = 999;

export interface DoubleLibs {
  /** The test double, speaking the header's ABI version. */
  path: string;
  /** The same double built with -DCOVE_DOUBLE_ABI_VERSION=999. */
  wrongAbiPath: string;
}

let built: Promise<DoubleLibs> | undefined;

async function hashOf(paths: string[]): Promise<string> {
  const parts: Uint8Array[] = [];
  for (const p of paths) parts.push(await Deno.readFile(p));
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(d.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function gcc(args: string[]): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("gcc", { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        "gcc is not installed: the FFI tests build their test double with it (apt-get install gcc)",
      );
    }
    throw e;
  }
  if (!out.success) {
    throw new Error(
      `gcc failed building the test double:\n${new TextDecoder().decode(out.stderr)}`,
    );
  }
}

/** Builds (or reuses) the test double libraries and returns their paths. */
export function buildDouble(): Promise<DoubleLibs> {
  built ??= (async () => {
    const src = `${here}cove_vz_double.c`;
    const header = `${root}/swift-shim/include/cove_vz.h`;
    const tag = await hashOf([src, header, `${here}build.ts`]);
    await Deno.mkdir(cacheDir, { recursive: true });
    const path = `${cacheDir}/libcove_vz_double-${tag}.so`;
    const wrongAbiPath = `${cacheDir}/libcove_vz_double-wrongabi-${tag}.so`;
    const common = [
      "-std=c11",
      "-Wall",
      "-Wextra",
      "-Werror",
      "-O1",
      "-shared",
      "-fPIC",
      "-pthread",
      // The double's detached threads (install, vsock echo) may outlive a
      // test's dlclose; nodelete keeps the code mapped so they finish safely.
      "-Wl,-z,nodelete",
    ];
    for (
      const [out, extra] of [[path, []], [wrongAbiPath, [
        `-DCOVE_DOUBLE_ABI_VERSION=${WRONG_ABI_VERSION}`,
      ]]] as const
    ) {
      try {
        await Deno.stat(out);
        continue;
      } catch { /* build it */ }
      const tmp = `${out}.${crypto.randomUUID()}.tmp`;
      await gcc([...common, ...extra, "-o", tmp, src]);
      await Deno.rename(tmp, out);
    }
    return { path, wrongAbiPath };
  })();
  return built;
}
