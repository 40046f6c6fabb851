/**
 * `cove doctor` and `cove version`: what this host is, which engines are
 * usable here and why not, and the versions of everything involved.
 * @module
 */
import type { Capabilities, EngineId } from "../engines/engine.ts";
import { ENGINE_IDS, loadEngine } from "../engines/select.ts";
import { detectHost, type HostInfo } from "./host.ts";
import { coveHome } from "./store/store.ts";
import { formatSize } from "./units.ts";
import { VERSION } from "./version.ts";

/** The doctor's report (stable JSON under --format json). */
export interface DoctorReport {
  cove: string;
  host: HostInfo;
  home: string;
  engines: Capabilities[];
}

/** Asks every engine what it can do here. Never throws for an engine. */
export async function doctor(): Promise<DoctorReport> {
  const host = detectHost();
  const engines: Capabilities[] = [];
  for (const id of ENGINE_IDS) engines.push(await engineCapabilities(id, host));
  return { cove: VERSION, host, home: coveHome(), engines };
}

async function engineCapabilities(id: EngineId, host: HostInfo): Promise<Capabilities> {
  try {
    return await (await loadEngine(id)).capabilities(host);
  } catch (e) {
    const reason = e instanceof Error ? e.message.split("\n")[0] : String(e);
    return {
      engine: id,
      available: false,
      reason,
      guests: {
        "linux/arm64": { available: false, reason },
        "linux/x86_64": { available: false, reason },
        "macos/arm64": { available: false, reason },
        "macos/x86_64": { available: false, reason },
      },
      features: {},
      details: {},
    };
  }
}

/** The doctor's report as text. */
export function doctorText(r: DoctorReport): string {
  const lines = [
    `cove ${r.cove}`,
    `host: ${r.host.os} ${r.host.arch}${
      r.host.macosVersion ? ` (macOS ${r.host.macosVersion})` : ""
    }, ${r.host.cpus} CPUs, ${formatSize(r.host.memory)}`,
    `home: ${r.home}`,
  ];
  for (const e of r.engines) {
    lines.push("");
    lines.push(`${e.engine}: ${e.available ? "usable" : `not usable: ${e.reason ?? "unknown"}`}`);
    for (const [g, a] of Object.entries(e.guests)) {
      lines.push(`  ${g.padEnd(14)} ${a.available ? "yes" : `no (${a.reason ?? "unsupported"})`}`);
    }
    for (const [f, a] of Object.entries(e.features)) {
      if (a) {
        lines.push(
          `  ${f.padEnd(14)} ${a.available ? "yes" : `no (${a.reason ?? "unsupported"})`}`,
        );
      }
    }
    for (const [k, v] of Object.entries(e.details)) lines.push(`  ${k.padEnd(14)} ${v}`);
  }
  return lines.join("\n");
}

/** What `cove version` prints. */
export interface VersionInfo {
  cove: string;
  deno: string;
  v8: string;
  typescript: string;
  vzAbi: number | null;
  vzAbiNote?: string;
  engines: { id: EngineId; available: boolean; reason?: string }[];
}

/** Versions of cove, Deno, the VZ shim ABI and the engines available. */
export async function versionInfo(): Promise<VersionInfo> {
  const host = detectHost();
  const engines = [];
  let vzAbi: number | null = null;
  let vzAbiNote: string | undefined;
  for (const id of ENGINE_IDS) {
    const c = await engineCapabilities(id, host);
    engines.push({ id, available: c.available, reason: c.reason });
    // The engine over a native library says its ABI (today only vz has one).
    if (c.nativeAbi) {
      vzAbi = c.nativeAbi.version;
      vzAbiNote = c.nativeAbi.note;
    }
  }
  return {
    cove: VERSION,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
    vzAbi,
    vzAbiNote,
    engines,
  };
}
