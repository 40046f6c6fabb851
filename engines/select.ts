/**
 * Engine choice lives here and only here. `engine: auto` picks vz on a macOS
 * arm64 host for arm64 guests, and qemu otherwise. Engines are imported
 * lazily so that nothing loads the VZ native library unless a VM uses vz.
 * @module
 */
import type { Engine, EngineId, HostInfo } from "./engine.ts";
import type { VmSpec } from "../core/spec/schema.ts";

/** Every engine cove knows. */
export const ENGINE_IDS: readonly EngineId[] = ["vz", "qemu"];

/** Resolves the spec's engine (auto, vz or qemu) for this host. */
export function resolveEngineId(spec: Pick<VmSpec, "engine" | "arch">, host: HostInfo): EngineId {
  if (spec.engine !== "auto") return spec.engine;
  return host.os === "darwin" && host.arch === "arm64" && spec.arch === "arm64" ? "vz" : "qemu";
}

/**
 * The engine that installs guests from vendor restore images on this host
 * (macOS IPSWs: vz, on a Mac with Apple silicon), or undefined.
 */
export function restoreImageEngineId(host: HostInfo): EngineId | undefined {
  return host.os === "darwin" && host.arch === "arm64" ? "vz" : undefined;
}

/** Loads an engine module (vz loads its native library only when used). */
export async function loadEngine(id: EngineId): Promise<Engine> {
  switch (id) {
    case "vz":
      return (await import("./vz/mod.ts")).engine;
    case "qemu":
      return (await import("./qemu/mod.ts")).engine;
  }
}
