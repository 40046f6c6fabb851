/**
 * Builds a spec from a `--config` file plus command-line flags. The file is
 * validated on its own first (so errors point at its lines), then the flags
 * are laid over it and the result validated again (errors name the flag).
 * @module
 */
import { parse } from "yaml";
import { CoveError, ExitCode } from "../errors.ts";
import { flagRange, parseFlag } from "../flags.ts";
import { parseSize } from "../units.ts";
import { BUNDLE_FILES } from "../store/bundle.ts";
import { parseSpec, SpecError, validateSpec } from "./load.ts";
import type { SpecParsed } from "./schema.ts";

/** Spec-changing flags of `cove create`. */
export interface SpecFlags {
  os?: string;
  arch?: string;
  engine?: string;
  cpus?: string | number;
  memory?: string;
  diskSize?: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  display?: string;
  /** provision.user (macOS: the first account's short name). */
  user?: string;
  /** provision.fullName (macOS guests). */
  fullName?: string;
}

/** Reads a --config file; a missing file gets one clear line. */
export async function readConfigFile(path: string): Promise<SpecParsed> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new CoveError("config.not_found", `--config: '${path}' does not exist`, {
        hint: "give the path of a cove.yaml file",
        exit: ExitCode.Usage,
      });
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new CoveError("config.not_file", `--config: '${path}' is a directory`, {
        hint: "give the path of a cove.yaml file",
        exit: ExitCode.Usage,
      });
    }
    throw e;
  }
  const spec = parseSpec(text, path);
  // The same floor and ceiling as --memory.
  if (spec.memory !== undefined) parseSize(spec.memory, `${path}: memory`, flagRange("--memory"));
  return spec;
}

/** Lays flags over a base spec and validates the result. */
export function applyFlags(base: SpecParsed, flags: SpecFlags): SpecParsed {
  // Work on the plain input shape so validation sees what the user typed.
  const raw = structuredClone(base) as Record<string, unknown>;
  if (flags.os !== undefined) raw.os = flags.os;
  if (flags.arch !== undefined) raw.arch = normaliseArch(flags.arch);
  if (flags.engine !== undefined) raw.engine = flags.engine;
  if (flags.cpus !== undefined) raw.cpus = parseFlag("--cpus", flags.cpus);
  if (flags.memory !== undefined) {
    parseFlag("--memory", flags.memory);
    raw.memory = flags.memory;
  }
  if (flags.display !== undefined) raw.display = parseDisplay(flags.display);
  if (flags.user !== undefined || flags.fullName !== undefined) {
    raw.provision = {
      ...(raw.provision as Record<string, unknown> | undefined),
      ...(flags.user !== undefined ? { user: flags.user } : {}),
      ...(flags.fullName !== undefined ? { fullName: flags.fullName } : {}),
    };
  }
  if (flags.diskSize !== undefined) {
    parseFlag("--disk-size", flags.diskSize);
    const disks = (raw.disks as Record<string, unknown>[] | undefined) ??
      [{ path: BUNDLE_FILES.rootDisk }];
    const i = Math.max(0, disks.findIndex((d) => (d.media ?? "disk") === "disk"));
    disks[i] = { ...disks[i], size: flags.diskSize };
    raw.disks = disks;
  }
  if (flags.kernel !== undefined || flags.initrd !== undefined || flags.cmdline !== undefined) {
    const boot = (raw.boot as Record<string, unknown> | undefined) ?? {};
    raw.boot = {
      ...boot,
      loader: "kernel",
      ...(flags.kernel !== undefined ? { kernel: flags.kernel } : {}),
      ...(flags.initrd !== undefined ? { initrd: flags.initrd } : {}),
      ...(flags.cmdline !== undefined ? { cmdline: flags.cmdline } : {}),
    };
  }
  try {
    return validateSpec(raw, "");
  } catch (e) {
    if (!(e instanceof SpecError)) throw e;
    throw new SpecError("", e.problems.map((p) => ({ ...p, path: flagFor(p.path) })));
  }
}

const FLAG_OF: Record<string, string> = {
  os: "--os",
  arch: "--arch",
  engine: "--engine",
  cpus: "--cpus",
  memory: "--memory",
  display: "--display",
  "boot.kernel": "--kernel",
  "boot.initrd": "--initrd",
  "boot.cmdline": "--cmdline",
  "provision.user": "--user",
  "provision.fullName": "--full-name",
};

function flagFor(path: string): string {
  if (/^disks\[\d+\]\.size$/.test(path)) return "--disk-size";
  return FLAG_OF[path] ?? path;
}

function normaliseArch(a: string): string {
  if (a === "aarch64") return "arm64";
  if (a === "amd64" || a === "x64") return "x86_64";
  return a;
}

/** `none` or `WIDTHxHEIGHT[@PPI]`. */
export function parseDisplay(v: string): unknown {
  if (v === "none") return "none";
  const m = /^(\d+)x(\d+)(?:@(\d+))?$/.exec(v);
  if (!m) return v;
  return { width: Number(m[1]), height: Number(m[2]), ...(m[3] ? { ppi: Number(m[3]) } : {}) };
}

/** Parses YAML text into a plain object (for `cove edit` round trips). */
export function yamlToObject(text: string): unknown {
  return parse(text);
}
