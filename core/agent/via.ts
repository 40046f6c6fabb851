/**
 * Which way `cove exec` goes into a guest: ssh when the guest's ssh
 * answers, the guest agent otherwise (no network, ssh not up, firewalled).
 * @module
 */
import { guestAddress, type StatusReader } from "../access/address.ts";
import type { VmSpec } from "../spec/schema.ts";
import type { Bundle } from "../store/bundle.ts";

/** True when a TCP connection to the guest's SSH port opens within `timeoutMs`. */
export async function sshAnswers(
  bundle: Bundle,
  spec: VmSpec,
  status?: StatusReader,
  timeoutMs = 2000,
): Promise<boolean> {
  if (!spec.networks.some((n) => n.mode !== "none")) return false;
  let addr;
  try {
    addr = await guestAddress(bundle, spec, { status });
  } catch {
    return false;
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  let conn: Deno.Conn | undefined;
  let done = false;
  const attempt = (async () => {
    try {
      conn = await Deno.connect({ hostname: addr.host, port: addr.port });
      if (done) {
        conn.close();
        return false;
      }
      // An SSH server speaks first: a forward whose guest side is down closes instead.
      const n = await conn.read(new Uint8Array(4));
      return n !== null && n > 0;
    } catch {
      return false;
    }
  })();
  const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)));
  const ok = await Promise.race([attempt, timeout]);
  clearTimeout(timer);
  try {
    conn?.close();
  } catch { /* closed */ }
  done = true;
  return ok;
}

/** `--via auto`: ssh when it answers; the agent when the spec has one; else ssh (its error is clearest). */
export async function chooseExecVia(
  bundle: Bundle,
  spec: VmSpec,
  status?: StatusReader,
): Promise<"ssh" | "agent"> {
  if (await sshAnswers(bundle, spec, status)) return "ssh";
  return spec.agent ? "agent" : "ssh";
}
