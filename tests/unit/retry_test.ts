/**
 * The one retry policy (core/retry.ts) and the one resumable body loop
 * (streamResumable in core/images/download.ts), against real loopback
 * servers where a server is needed.
 */
import { assert, assertEquals, assertRejects } from "../helpers/assert.ts";
import {
  DEFAULT_RETRY_POLICY,
  parseRetryAfter,
  retryDelay,
  retryPolicy,
  stallTimeoutMs,
  withRetry,
} from "../../core/retry.ts";
import { download, type DownloadEvent, streamResumable } from "../../core/images/download.ts";
import { BlobCache } from "../../core/images/cache.ts";
import { CoveError, ExitCode } from "../../core/errors.ts";
import { pseudoRandomBytes, startLoopbackServer } from "../helpers/loopback_http.ts";

Deno.test("retryDelay doubles from the base, stays within the jitter band and the cap", () => {
  const p = retryPolicy({ baseMs: 100, maxMs: 1000 });
  for (const [attempt, base] of [[1, 100], [2, 200], [3, 400], [4, 800]]) {
    assertEquals(retryDelay(p, attempt, undefined, () => 0), base * 0.75);
    assertEquals(retryDelay(p, attempt, undefined, () => 0.5), base);
    assert(retryDelay(p, attempt, undefined, () => 0.999) < base * 1.25);
  }
  // Past the cap, jitter never takes it above maxMs.
  assertEquals(retryDelay(p, 10, undefined, () => 0.999), 1000);
  assertEquals(retryDelay(p, 10, undefined, () => 0), 750);
});

Deno.test("retryDelay honours Retry-After, bounded by maxRetryAfterMs", () => {
  const p = retryPolicy({ baseMs: 100, maxRetryAfterMs: 5000 });
  assertEquals(retryDelay(p, 1, 2000), 2000);
  assertEquals(retryDelay(p, 1, 0), 0);
  assertEquals(retryDelay(p, 1, 60_000), 5000);
});

Deno.test("parseRetryAfter reads delta seconds and HTTP dates, and ignores junk", () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  assertEquals(parseRetryAfter("7", now), 7000);
  assertEquals(parseRetryAfter("Thu, 01 Jan 2026 00:00:03 GMT", now), 3000);
  assertEquals(parseRetryAfter("Wed, 31 Dec 2025 00:00:00 GMT", now), 0);
  assertEquals(parseRetryAfter(null, now), undefined);
  assertEquals(parseRetryAfter("-1", now), undefined);
  assertEquals(parseRetryAfter("soon", now), undefined);
});

Deno.test("retryPolicy ignores negative and non-finite overrides and reads COVE_RETRIES", () => {
  assertEquals(retryPolicy({ retries: NaN, baseMs: -5 }), { ...DEFAULT_RETRY_POLICY });
  Deno.env.set("COVE_RETRIES", "1");
  try {
    assertEquals(retryPolicy().retries, 1);
    assertEquals(retryPolicy({ retries: 3 }).retries, 3);
    Deno.env.set("COVE_RETRIES", "x");
    assertEquals(retryPolicy().retries, DEFAULT_RETRY_POLICY.retries);
  } finally {
    Deno.env.delete("COVE_RETRIES");
  }
});

Deno.test("stallTimeoutMs reads COVE_STALL_TIMEOUT as a duration, a bare number as seconds", () => {
  const old = Deno.env.get("COVE_STALL_TIMEOUT");
  try {
    Deno.env.delete("COVE_STALL_TIMEOUT");
    assertEquals(stallTimeoutMs(), 30_000);
    for (const [v, ms] of [["1500ms", 1500], ["2m", 120_000], ["5", 5000], ["nonsense", 30_000]]) {
      Deno.env.set("COVE_STALL_TIMEOUT", v as string);
      assertEquals(stallTimeoutMs(), ms, `COVE_STALL_TIMEOUT=${v}`);
    }
  } finally {
    if (old === undefined) Deno.env.delete("COVE_STALL_TIMEOUT");
    else Deno.env.set("COVE_STALL_TIMEOUT", old);
  }
});

Deno.test("withRetry stops at the policy's bound, and not at all for a failure that is not retryable", async () => {
  const policy = retryPolicy({ retries: 2, baseMs: 1 });
  let calls = 0;
  const notices: number[] = [];
  await assertRejects(
    () =>
      withRetry(() => {
        calls++;
        return Promise.reject(new Error("down"));
      }, { policy, retryable: () => true, onRetry: (_e, n) => notices.push(n) }),
    Error,
    "down",
  );
  assertEquals(calls, 3);
  assertEquals(notices, [1, 2]);
  calls = 0;
  await assertRejects(
    () =>
      withRetry(() => {
        calls++;
        return Promise.reject(new Error("bad input"));
      }, { policy, retryable: () => false }),
    Error,
  );
  assertEquals(calls, 1);
  assertEquals(
    await withRetry((n) => n < 2 ? Promise.reject(new Error("once")) : Promise.resolve(n), {
      policy,
      retryable: () => true,
    }),
    2,
  );
});

Deno.test("withRetry waits the server's Retry-After", async () => {
  const waits: number[] = [];
  let calls = 0;
  await withRetry(() => {
    if (calls++ === 0) {
      return Promise.reject(Object.assign(new Error("busy"), { retryAfterMs: 50 }));
    }
    return Promise.resolve();
  }, {
    policy: retryPolicy({ retries: 1, baseMs: 5000 }),
    retryable: () => true,
    onRetry: (_e, _n, w) => waits.push(w),
  });
  assertEquals(waits, [50]);
});

Deno.test("a 503 with Retry-After is retried by the downloader, which then succeeds", async () => {
  const srv = startLoopbackServer();
  const dir = await Deno.makeTempDir();
  try {
    const body = pseudoRandomBytes(100_000, 4);
    srv.files.set("/busy.img", { body, status: 503, headers: { "Retry-After": "0" } });
    const events: DownloadEvent[] = [];
    const p = download(`${srv.base}/busy.img`, {
      cache: new BlobCache(dir),
      retries: 3,
      onProgress: (e) => {
        events.push(e);
        // The server is fixed after the first refusal.
        if (e.type === "retry") srv.files.set("/busy.img", { body });
      },
    });
    const got = await p;
    assertEquals(got.size, body.length);
    const retry = events.find((e) => e.type === "retry");
    assert(
      retry && retry.type === "retry" && retry.waitMs === 0,
      "Retry-After: 0 was not honoured",
    );
  } finally {
    await srv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("streamResumable resumes after a stall from the byte it reached, and reports the stall", async () => {
  const srv = startLoopbackServer();
  try {
    const body = pseudoRandomBytes(200_000, 9);
    srv.files.set("/b", { body, stallAfter: 70_000, stallTimes: 1 });
    const got: Uint8Array[] = [];
    const kinds: string[] = [];
    const n = await streamResumable({
      stallMs: 300,
      stalledAfterMs: 100,
      policy: retryPolicy({ retries: 2, baseMs: 1 }),
      open: async (offset, signal) => {
        const res = await fetch(`${srv.base}/b`, {
          headers: offset ? { Range: `bytes=${offset}-` } : {},
          signal,
        });
        return { res, from: res.status === 206 ? offset : 0 };
      },
      write: (c) => {
        got.push(c.slice());
        return Promise.resolve();
      },
      fail: (_e, ctx) =>
        new CoveError(ctx.stalled ? "t.stalled" : "t.other", "x", { exit: ExitCode.Network }),
      retryable: (e) => e.code === "t.stalled",
      onEvent: (e) => kinds.push(e.type),
    });
    assertEquals(n, body.length);
    const all = new Uint8Array(n);
    let o = 0;
    for (const c of got) {
      all.set(c, o);
      o += c.length;
    }
    assertEquals(all, body);
    assertEquals(srv.seen.map((s) => s.range), [null, "bytes=70000-"]);
    assertEquals(kinds, ["stalled", "retry"]);
  } finally {
    await srv.close();
  }
});

Deno.test("streamResumable passes a sink failure through unretried", async () => {
  const srv = startLoopbackServer();
  try {
    srv.files.set("/b", { body: pseudoRandomBytes(10_000, 2) });
    let opens = 0;
    const err = await assertRejects(() =>
      streamResumable({
        policy: retryPolicy({ retries: 3, baseMs: 1 }),
        open: async (_o, signal) => {
          opens++;
          return { res: await fetch(`${srv.base}/b`, { signal }), from: 0 };
        },
        write: () => Promise.reject(new Error("No space left on device (os error 28)")),
        fail: () => new CoveError("t.net", "net", { exit: ExitCode.Network }),
        retryable: () => true,
      }), Error);
    assert(/No space left/.test(err.message), err.message);
    assertEquals(opens, 1);
  } finally {
    await srv.close();
  }
});
