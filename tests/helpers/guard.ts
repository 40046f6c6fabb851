/**
 * Guards for tests that need Linux facilities (`/proc`, `mount -t tmpfs`,
 * root, `setpriv`, `ip netns`, KVM, Debian's packages for the test guests and
 * the test registry), so that `make test` passes on macOS, the product's main
 * platform, while Linux CI still runs every one of them.
 *
 * - Elsewhere than Linux (or, for `root`, not as root), {@link linuxTest}
 *   registers the test as ignored and says on stderr which test and why.
 * - On Linux with `CI=true`, an unmet need does not skip: the test fails,
 *   saying what it needed, so CI never passes with a Linux-only test skipped.
 * - With `COVE_TEST_SKIP_LOG=FILE`, every skip is appended to FILE as one
 *   JSON line (name, need, why), for counting.
 *
 * `COVE_TEST_HOST_OS` and `COVE_TEST_HOST_UID` stand in for the host's OS
 * and user id; only tests/unit/guard_test.ts sets them, to prove the rules.
 *
 * @example
 * ```ts
 * import { linuxTest } from "./guard.ts";
 * linuxTest({
 *   name: "a full disk gives one line",
 *   needs: "mounts a 1 MiB tmpfs (mount -t tmpfs, as root)",
 *   root: true,
 *   fn: async () => {},
 * });
 * ```
 * @module
 */

/** A Deno test that needs Linux: `needs` says which facility, for the skip line. */
export interface LinuxTestDefinition extends Deno.TestDefinition {
  /** What it needs of Linux, e.g. "reads /proc". Printed when it is skipped. */
  needs: string;
  /** It also needs root. */
  root?: boolean;
}

function hostOs(): string {
  return Deno.env.get("COVE_TEST_HOST_OS") ?? Deno.build.os;
}

function hostUid(): number | null {
  const v = Deno.env.get("COVE_TEST_HOST_UID");
  return v !== undefined ? Number(v) : Deno.uid();
}

/** What of `def`'s needs this host lacks, or undefined when it has them all. */
export function unmetNeed(def: { root?: boolean }): "Linux" | "root" | undefined {
  if (hostOs() !== "linux") return "Linux";
  if (def.root && hostUid() !== 0) return "root";
  return undefined;
}

/** True on Linux CI, where no Linux-only test may be skipped. */
export function onLinuxCi(): boolean {
  return Deno.build.os === "linux" && Deno.env.get("CI") === "true";
}

function recordSkip(name: string, need: string, why: string): void {
  const log = Deno.env.get("COVE_TEST_SKIP_LOG");
  if (!log) return;
  Deno.writeTextFileSync(log, JSON.stringify({ name, need, why }) + "\n", { append: true });
}

type TestFn = (t: Deno.TestContext) => void | Promise<void>;

/** What a test needs of Linux: a reason, or a reason and root. */
export type LinuxNeeds = string | { needs: string; root?: boolean };

/**
 * Registers a test that needs Linux (and maybe root): skipped, with the
 * reason, elsewhere. Takes a whole definition, or (to guard an existing
 * `Deno.test(name, fn)` or `Deno.test(def, fn)` by changing only its head)
 * the needs, a name and fn, or a definition and fn.
 */
export function linuxTest(def: LinuxTestDefinition): void;
export function linuxTest(def: Omit<LinuxTestDefinition, "fn">, fn: TestFn): void;
export function linuxTest(needs: LinuxNeeds, name: string, fn: TestFn): void;
export function linuxTest(
  a: LinuxTestDefinition | Omit<LinuxTestDefinition, "fn"> | LinuxNeeds,
  b?: string | TestFn,
  c?: TestFn,
): void {
  const def: LinuxTestDefinition = typeof a === "object" && "name" in a
    ? { ...a, fn: (a as LinuxTestDefinition).fn ?? (b as TestFn) }
    : typeof a === "string"
    ? { needs: a, name: b as string, fn: c! }
    : { needs: a.needs, root: a.root, name: b as string, fn: c! };
  const { needs, root, ...test } = def;
  const unmet = unmetNeed({ root });
  if (!unmet) {
    Deno.test(test);
    return;
  }
  const why = `needs ${unmet}: ${needs}`;
  if (onLinuxCi()) {
    Deno.test({
      ...test,
      fn: () => {
        throw new Error(`a Linux-only test may not be skipped on Linux CI, and this one ${why}`);
      },
    });
    return;
  }
  Deno.stderr.writeSync(
    new TextEncoder().encode(`cove tests: skipping '${test.name}': it ${why}\n`),
  );
  recordSkip(test.name, unmet, needs);
  Deno.test({ ...test, ignore: true });
}
