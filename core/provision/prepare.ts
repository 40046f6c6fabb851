/**
 * What a supervisor does for guest access right before it starts a VM:
 * writes (or refreshes) the cloud-init seed when the spec attaches one, and,
 * for QEMU user networking, forwards a free host port to the guest's SSH
 * port so `cove ssh` can reach it (the port is reported in the live status).
 * @module
 */
import type { VmSpec } from "../spec/schema.ts";
import { ensureSeed } from "./seed.ts";

/** Adds a `{ host: 0, guest: sshPort }` forward to the first user-mode NIC when it has none (qemu only). */
export function withSshForward(spec: VmSpec, engine: string): VmSpec {
  if (engine !== "qemu") return spec;
  const i = spec.networks.findIndex((n) => n.mode === "user" || n.mode === "nat");
  if (i < 0) return spec;
  const port = spec.provision.sshPort;
  const nic = spec.networks[i];
  if (nic.forwards.some((f) => f.guest === port && f.protocol === "tcp")) return spec;
  const networks = [...spec.networks];
  networks[i] = {
    ...nic,
    forwards: [...nic.forwards, { host: 0, guest: port, protocol: "tcp", address: "127.0.0.1" }],
  };
  return { ...spec, networks };
}

/** Seed and SSH forward; returns the spec to start (the file on disk is not changed). */
export async function prepareGuest(
  bundleDir: string,
  spec: VmSpec,
  engine: string,
  /** Per NIC: the static address a cove network handed out (ADDR/PREFIX). */
  addresses?: (string | undefined)[],
): Promise<VmSpec> {
  await ensureSeed(bundleDir, spec, { addresses });
  return withSshForward(spec, engine);
}
