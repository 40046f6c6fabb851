/**
 * Facts about the machine cove runs on: OS, CPU architecture, CPU count,
 * memory and (on macOS) the product version. Engines and spec defaults
 * depend on these; tests pass synthetic {@link HostInfo} values instead.
 * @module
 */
import type { ArchName } from "./spec/schema.ts";

/**
 * Facts about the host that engines and defaults depend on. This module is
 * part of cove's shared vocabulary (with the spec types, errors and units):
 * engines import it, and it imports nothing else from core.
 */
export interface HostInfo {
  os: "linux" | "darwin" | "other";
  arch: ArchName;
  cpus: number;
  /** Total memory in bytes. */
  memory: number;
  /** macOS product version, e.g. "15.1", on macOS hosts. */
  macosVersion?: string;
}

let cached: HostInfo | undefined;

/** Detects the current host once and caches the answer. */
export function detectHost(): HostInfo {
  if (cached) return cached;
  const os = Deno.build.os === "linux" ? "linux" : Deno.build.os === "darwin" ? "darwin" : "other";
  const arch = Deno.build.arch === "aarch64" ? "arm64" : "x86_64";
  let memory = 8 * 2 ** 30;
  try {
    memory = Deno.systemMemoryInfo().total;
  } catch { /* keep the fallback */ }
  cached = {
    os,
    arch,
    cpus: navigator.hardwareConcurrency || 1,
    memory,
    macosVersion: os === "darwin" ? macosVersion() : undefined,
  };
  return cached;
}

function macosVersion(): string | undefined {
  try {
    // Deno.osRelease() is the Darwin kernel version; the product version is in this plist.
    const plist = Deno.readTextFileSync("/System/Library/CoreServices/SystemVersion.plist");
    const m = /<key>ProductVersion<\/key>\s*<string>([^<]+)<\/string>/.exec(plist);
    return m?.[1];
  } catch {
    return undefined;
  }
}
