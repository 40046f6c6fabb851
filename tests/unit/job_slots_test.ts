/**
 * Host slots with real processes holding them (tests/helpers/job_slot_holder.ts):
 * with COVE_JOB_SLOTS=2 a third job waits in the queue and runs once a slot
 * frees; a killed holder frees its slot; the queue gives up after its
 * timeout; `cove job slots` reports what is held.
 * @module
 */
import { fileURLToPath } from "node:url";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove } from "../helpers/cli.ts";
import { slotCount, slotReport } from "../../core/job/slots.ts";
import { CoveError } from "../../core/errors.ts";

const HOLDER = fileURLToPath(new URL("../helpers/job_slot_holder.ts", import.meta.url));

interface Holder {
  child: Deno.ChildProcess;
  stdin: WritableStreamDefaultWriter<Uint8Array>;
  lines: string[];
  waitLine: (re: RegExp) => Promise<string>;
  done: Promise<Deno.CommandStatus>;
}

function holder(home: string, vm: string, queueTimeoutMs?: number): Holder {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      HOLDER,
      home,
      vm,
      ...(queueTimeoutMs ? [String(queueTimeoutMs)] : []),
    ],
    env: { COVE_JOB_SLOTS: "2" },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  const read = (async () => {
    let buf = "";
    for await (const c of child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += c;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        lines.push(line);
        for (const w of waiters.filter((w) => w.re.test(line))) w.resolve(line);
      }
    }
  })();
  return {
    child,
    stdin: child.stdin.getWriter(),
    lines,
    waitLine: (re) =>
      new Promise((resolve) => {
        const l = lines.find((l) => re.test(l));
        if (l) resolve(l);
        else waiters.push({ re, resolve });
      }),
    done: child.status.then(async (s) => {
      await read;
      return s;
    }),
  };
}

Deno.test({
  name:
    "job slots: with COVE_JOB_SLOTS=2 the third job waits in the queue, then runs when a slot frees; a killed holder frees its slot",
  ignore: Deno.build.os !== "linux" && Deno.build.os !== "darwin",
  async fn() {
    const home = await Deno.makeTempDir({ prefix: "cove-slots-" });
    try {
      const a = holder(home, "job-a");
      const b = holder(home, "job-b");
      const slots = [await a.waitLine(/^got /), await b.waitLine(/^got /)].sort();
      assertEquals(slots, ["got 0", "got 1"]);
      const c = holder(home, "job-c");
      assertEquals(await c.waitLine(/^queue /), "queue 1");
      const d = holder(home, "job-d");
      assertEquals(await d.waitLine(/^queue /), "queue 2");
      Deno.env.set("COVE_JOB_SLOTS", "2");
      const rep = await slotReport(home, "linux");
      assertEquals([rep.total, rep.used, rep.free, rep.waiting], [2, 2, 0, 2]);
      assertEquals(rep.holders.map((h) => h.vm).sort(), ["job-a", "job-b"]);
      // The CLI reads the same.
      const r = await cove(home, ["job", "slots", "--format", "json"], {
        env: { COVE_JOB_SLOTS: "2" },
      });
      assertEquals(r.code, 0, r.stderr);
      const linux = JSON.parse(r.stdout).find((p: { kind: string }) => p.kind === "linux");
      assertEquals([linux.used, linux.free, linux.waiting], [2, 0, 2]);

      // A releases: C (first in the queue) gets its slot, D moves up.
      await a.stdin.close();
      await a.done;
      assertMatch(await c.waitLine(/^got /), /^got [01]$/);
      assertEquals(await d.waitLine(/^queue 1$/), "queue 1");
      assert(!d.lines.some((l) => l.startsWith("got")), "D must still wait");
      // B is killed: its slot frees with its death, and D runs.
      b.child.kill("SIGKILL");
      await b.done;
      assertMatch(await d.waitLine(/^got /), /^got [01]$/);
      for (const h of [c, d]) {
        await h.stdin.close();
        assertEquals((await h.done).code, 0);
      }
      const after = await slotReport(home, "linux");
      assertEquals([after.used, after.waiting], [0, 0]);
    } finally {
      Deno.env.delete("COVE_JOB_SLOTS");
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "job slots: a job that finds no free slot within its queue timeout fails with exit 205, and leaves no ticket",
  ignore: Deno.build.os !== "linux" && Deno.build.os !== "darwin",
  async fn() {
    const home = await Deno.makeTempDir({ prefix: "cove-slots-" });
    try {
      const a = holder(home, "job-a");
      const b = holder(home, "job-b");
      await a.waitLine(/^got /);
      await b.waitLine(/^got /);
      const c = holder(home, "job-c", 300);
      assertEquals(await c.waitLine(/^error /), "error job.queue_timeout 205");
      assertEquals((await c.done).code, 1);
      Deno.env.set("COVE_JOB_SLOTS", "2");
      assertEquals((await slotReport(home, "linux")).waiting, 0);
      for (const h of [a, b]) {
        await h.stdin.close();
        await h.done;
      }
    } finally {
      Deno.env.delete("COVE_JOB_SLOTS");
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test("job slots: the default is the CPU count for Linux guests and 2 for macOS guests; a bad COVE_JOB_SLOTS is one clear error", () => {
  assertEquals(slotCount("linux", undefined), Math.max(1, navigator.hardwareConcurrency));
  assertEquals(slotCount("macos", undefined), 2);
  assertEquals(slotCount("macos", "5"), 5);
  for (const bad of ["0", "-1", "two", "1.5"]) {
    try {
      slotCount("linux", bad);
      throw new Error(`COVE_JOB_SLOTS=${bad} was accepted`);
    } catch (e) {
      assert(e instanceof CoveError, String(e));
      assertEquals(e.code, "job.slots");
      assertEquals(e.exit, 200);
    }
  }
});
