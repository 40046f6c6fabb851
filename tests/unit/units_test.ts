/**
 * The one validator of numbers from users (core/units.ts, core/flags.ts) and
 * the one bounded pool (core/pool.ts): units required, ranges stated and
 * enforced, NaN never turned into "do nothing".
 */
import { assert, assertCoveError, assertEquals, assertMatch } from "../helpers/assert.ts";
import {
  formatDuration,
  formatSize,
  parseCount,
  parseDuration,
  parseSize,
  trySize,
} from "../../core/units.ts";
import { FLAG_RULES, type FlagName, parseFlag } from "../../core/flags.ts";
import { checkPoolSize, runPool } from "../../core/pool.ts";
import { detectHost } from "../../core/host.ts";

const MiB = 2 ** 20;

Deno.test("parseSize reads binary units; with requireUnit a bare number is refused with 'use a unit'", () => {
  assertEquals(parseSize("4GiB"), 4 * 2 ** 30);
  assertEquals(parseSize("64G"), 64 * 2 ** 30);
  assertEquals(parseSize("1.5T"), 1.5 * 2 ** 40);
  assertEquals(parseSize("512"), 512, "a cove.yaml byte count stays accepted");
  assertEquals(trySize(512), 512);
  for (const bare of ["512", "0", "1.5", " 20 "]) {
    const e = assertCoveError(() => parseSize(bare, "--memory", { requireUnit: true }), {
      code: "usage.size",
      exit: 2,
    });
    assertMatch(e.line(), /has no unit \(use a unit: [0-9.]+MiB\)$/);
  }
  assertCoveError(() => parseSize("x", "--memory", { requireUnit: true }), {
    message: /^--memory: 'x' is not a size$/,
  });
});

Deno.test("parseSize enforces its range and names the limit", () => {
  assertEquals(parseSize("1MiB", "--disk-size", { min: MiB }), MiB);
  assertCoveError(() => parseSize("512KiB", "--disk-size", { min: MiB }), {
    message: /^--disk-size: 512KiB is less than 1MiB$/,
  });
  assertCoveError(() => parseSize("3GiB", "--memory", { min: 128 * MiB, max: 2 * 2 ** 30 }), {
    message: /^--memory: 3GiB is more than 2GiB$/,
  });
});

Deno.test("parseDuration needs a unit: '30', '1.5' and '' are refused, units are read to ms", () => {
  assertEquals(parseDuration("500ms"), 500);
  assertEquals(parseDuration("1.5s"), 1500);
  assertEquals(parseDuration("90m"), 5_400_000);
  assertEquals(parseDuration("2w"), 14 * 86_400_000);
  for (const bad of ["30", "1.5", ""]) {
    assertCoveError(() => parseDuration(bad, "--wait"), { code: "usage.duration", exit: 2 });
  }
  assertMatch(assertCoveError(() => parseDuration("30", "--older-than")).line(), /use a unit: 30s/);
  assertCoveError(() => parseDuration("soon"), { message: /'soon' is not a duration/ });
  assertCoveError(() => parseDuration("30d", "--wait", { max: 86_400_000 }), {
    message: /^--wait: 30d is more than 1d$/,
  });
});

Deno.test("parseCount takes whole numbers in range only: x, 1.5, '', NaN, -1, 0 and 1000 are refused", () => {
  const r = { min: 1, max: 64 };
  assertEquals(parseCount("4", "--concurrency", r), 4);
  assertEquals(parseCount(64, "--concurrency", r), 64);
  for (const bad of ["x", "1.5", "", "1e3", NaN, Infinity]) {
    assertCoveError(() => parseCount(bad, "--concurrency", r), { code: "usage.number", exit: 2 });
  }
  assertCoveError(() => parseCount("-1", "--concurrency", r), { message: /-1 is less than 1/ });
  assertCoveError(() => parseCount("0", "--concurrency", r), { message: /0 is less than 1/ });
  assertCoveError(() => parseCount("1000", "--concurrency", r), {
    message: /1000 is more than 64/,
  });
});

Deno.test("every numeric flag has a stated range and goes through parseFlag", () => {
  for (const [name, rule] of Object.entries(FLAG_RULES)) {
    assert(typeof rule.min === "number", `${name} has a minimum`);
    assert("max" in rule || rule.kind === "size", `${name} has a maximum`);
    assertCoveError(() => parseFlag(name as FlagName, "x"), { exit: 2 });
  }
  assertEquals(parseFlag("--wait", "90s"), 90_000);
  assertEquals(parseFlag("--memory", "128MiB"), 128 * MiB);
  assertCoveError(() => parseFlag("--memory", "127MiB"), { message: /less than 128MiB/ });
  const host = formatSize(detectHost().memory);
  assertCoveError(() => parseFlag("--memory", "64TiB"), {
    message: new RegExp(`more than ${host.replace(".", "\\.")}$`),
  });
  assertCoveError(() => parseFlag("--disk-size", "0MiB"), { message: /less than 1MiB/ });
  assertCoveError(() => parseFlag("--budget", "20"), { message: /has no unit/ });
  assertEquals(formatDuration(90_000), "90s");
  assertEquals(formatDuration(1500), "1500ms");
});

Deno.test("the pool refuses a size that is NaN, fractional, zero, negative or infinite", async () => {
  for (const bad of [NaN, 1.5, 0, -1, Infinity]) {
    assertCoveError(() => checkPoolSize(bad));
    await assertCoveError(() => runPool([() => Promise.resolve(1)], bad));
  }
});

Deno.test("the pool runs every task, at most size at once, results in order", async () => {
  let running = 0;
  let most = 0;
  const tasks = Array.from({ length: 9 }, (_, i) => async () => {
    running++;
    most = Math.max(most, running);
    await new Promise((r) => setTimeout(r, 5));
    running--;
    return i * 10;
  });
  assertEquals(await runPool(tasks, 3), [0, 10, 20, 30, 40, 50, 60, 70, 80]);
  assertEquals(most, 3);
  assertEquals(await runPool([], 4), []);
});

Deno.test("the pool's first failure aborts the others' signal and starts no more tasks", async () => {
  const started: number[] = [];
  let abortedSeen = 0;
  const tasks = Array.from({ length: 6 }, (_, i) => async (signal: AbortSignal) => {
    started.push(i);
    if (i === 1) throw new Error("boom");
    await new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      signal.addEventListener("abort", () => resolve(), { once: true });
    });
    if (signal.aborted) abortedSeen++;
  });
  const e = await runPool(tasks, 2).then(() => undefined, (err: Error) => err);
  assertEquals(e?.message, "boom");
  assertEquals(started, [0, 1], "no task started after the failure");
  assertEquals(abortedSeen, 1);
});

Deno.test("the OCI layer worker pool refuses NaN and fractional sizes; 0 means no workers", async () => {
  const { WorkerPool } = await import("../../core/oci/workers.ts");
  assertEquals(WorkerPool.start(0, 2 ** 30), undefined);
  for (const bad of [NaN, 1.5, -1]) assertCoveError(() => WorkerPool.start(bad, 2 ** 30));
});
