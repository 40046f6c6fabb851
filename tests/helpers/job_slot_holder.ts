/**
 * A real process that takes a job slot (core/job/slots.ts), for the slot
 * tests: prints `queue P` as its place in the queue changes, `got N` once
 * it holds slot N, then holds it until its stdin closes (or it is killed).
 * Usage: `deno run -A job_slot_holder.ts HOME VM [QUEUE_TIMEOUT_MS]`
 * @module
 */
import { acquireSlot } from "../../core/job/slots.ts";
import { CoveError } from "../../core/errors.ts";

const [home, vm, qt] = Deno.args;
const say = (s: string) => Deno.stdout.writeSync(new TextEncoder().encode(s + "\n"));
try {
  const lease = await acquireSlot(home, "linux", {
    vm,
    queueTimeoutMs: qt ? Number(qt) : undefined,
    pollMs: 50,
    onQueue: (pos) => say(`queue ${pos}`),
  });
  say(`got ${lease.slot}`);
  for await (const _ of Deno.stdin.readable) { /* hold until stdin closes */ }
  lease.release();
  say("released");
} catch (e) {
  say(`error ${e instanceof CoveError ? `${e.code} ${e.exit}` : String(e)}`);
  Deno.exit(1);
}
