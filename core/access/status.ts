/**
 * The live status of a running VM as `cove ip` needs it (which engine, which
 * port forwards), read from its supervisor's control socket.
 * @module
 */
import { vmStatus } from "../supervisor/client.ts";
import type { Bundle } from "../store/bundle.ts";
import type { LiveStatus } from "./address.ts";

/** Asks the VM's supervisor for its status; undefined when it cannot say. */
export async function readLiveStatus(bundle: Bundle): Promise<LiveStatus | undefined> {
  try {
    const s = await vmStatus(bundle, { timeoutMs: 3000 });
    return { ...s.info, engine: s.engine, status: s };
  } catch {
    return undefined;
  }
}
