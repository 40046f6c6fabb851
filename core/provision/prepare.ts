/**
 * What a supervisor does for guest access right before it starts a VM:
 * writes (or refreshes) the cloud-init seed when the spec attaches one, and
 * lets the engine add what it needs for `cove ssh` to reach the guest (QEMU
 * user networking: a forward from a free host port, reported in the live
 * status). Core does not know which engine needs what: the engine's
 * {@link GuestAccess} says.
 * @module
 */
import type { Engine, GuestAccess } from "../../engines/engine.ts";
import type { VmSpec } from "../spec/schema.ts";
import { ensureSeed } from "./seed.ts";

/** The spec with what `access` needs for cove to reach the guest's SSH port. */
export function withSshForward(spec: VmSpec, access: GuestAccess): VmSpec {
  return access.withAccess(spec);
}

/** Seed and SSH forward; returns the spec to start (the file on disk is not changed). */
export async function prepareGuest(
  bundleDir: string,
  spec: VmSpec,
  engine: Pick<Engine, "guestAccess">,
  /** Per NIC: the static address a cove network handed out (ADDR/PREFIX). */
  addresses?: (string | undefined)[],
): Promise<VmSpec> {
  const access = engine.guestAccess();
  await ensureSeed(bundleDir, spec, { addresses, forwardNics: access.forwardNics(spec) });
  return withSshForward(spec, access);
}
