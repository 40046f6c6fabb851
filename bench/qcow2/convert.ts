/**
 * A tiny command-line entry around cove's qcow2 converter, so the benchmark
 * can time it (and read its peak RSS) as a process of its own:
 * `deno run -A bench/qcow2/convert.ts IN.qcow2 OUT.raw`.
 * @module
 */
import { convertQcow2ToRaw } from "../../core/images/qcow2.ts";
import { CoveError } from "../../core/errors.ts";

if (Deno.args.length !== 2) {
  console.error("usage: convert.ts IN.qcow2 OUT.raw");
  Deno.exit(2);
}
try {
  await convertQcow2ToRaw(Deno.args[0], Deno.args[1]);
} catch (e) {
  if (e instanceof CoveError) {
    console.error(`error: ${e.line()}`);
    Deno.exit(e.exit);
  }
  throw e;
}
