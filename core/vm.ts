/**
 * VM-level operations that combine the spec and the store: what `cove
 * create`, `get` and `set` do, as a library API. The CLI calls these and
 * only prints their results.
 * @module
 */
import { copyFile } from "node:fs/promises";
import { resolve } from "node:path";
import { CoveError, ExitCode } from "./errors.ts";
import { applyFlags, readConfigFile, type SpecFlags } from "./spec/compose.ts";
import type { SpecParsed, VmSpec } from "./spec/schema.ts";
import type { Bundle, MachineIdentity } from "./store/bundle.ts";
import type { Store, VmSummary } from "./store/store.ts";
import { formatSize, parseSize } from "./units.ts";
import { macosDetails } from "./provision/macos.ts";

/** Options of {@link createVm}. */
export interface CreateVmOptions extends SpecFlags {
  /** A cove.yaml to start from. */
  config?: string;
  /**
   * Prepares files from a source (`--from`); called with the staging bundle.
   * Returns the spec to use.
   */
  fromSource?: (staging: Bundle, spec: VmSpec) => Promise<VmSpec | void>;
}

/** Creates a VM from a config file and flags. */
export async function createVm(store: Store, name: string, opts: CreateVmOptions): Promise<Bundle> {
  store.bundle(name); // validates the name before any work
  const base: SpecParsed = opts.config
    ? await readConfigFile(opts.config)
    : applyFlags({} as SpecParsed, {});
  const spec = applyFlags(base, opts);
  return await store.create(name, {
    spec,
    populate: async (staging, full) => {
      let s = full;
      if (opts.fromSource) s = (await opts.fromSource(staging, s)) ?? s;
      return await importBootFiles(staging, s);
    },
  });
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then((st) => st.isFile, () => false);
}

/** Copies a kernel/initrd given by path into the bundle so the VM is self-contained. */
async function importBootFiles(staging: Bundle, spec: VmSpec): Promise<VmSpec> {
  if (spec.boot.loader !== "kernel") return spec;
  const boot = { ...spec.boot };
  for (const key of ["kernel", "initrd"] as const) {
    let p = boot[key];
    if (!p) continue;
    if (!p.includes("/")) {
      // A bare name: a file the source already put in the bundle, else one in the current directory.
      if (await exists(staging.resolve(p))) continue;
      const here = resolve(p);
      if (!(await exists(here))) {
        throw new CoveError("boot.not_found", `--${key}: '${p}' does not exist`, {
          hint: `give the path of a ${key} file`,
          exit: ExitCode.Usage,
        });
      }
      p = here;
    }
    const name = key === "kernel" ? "vmlinuz" : "initrd";
    try {
      await copyFile(p, staging.resolve(name));
    } catch (e) {
      if (e instanceof Error && "code" in e && e.code === "ENOENT") {
        throw new CoveError("boot.not_found", `--${key}: '${p}' does not exist`, {
          hint: `give the path of a ${key} file`,
          exit: ExitCode.Usage,
        });
      }
      throw e;
    }
    await Deno.chmod(staging.resolve(name), 0o600);
    boot[key] = name;
  }
  return { ...spec, boot };
}

/** What `cove get` shows. */
export interface VmDetails extends VmSummary {
  path: string;
  spec: VmSpec;
  machine?: MachineIdentity;
  /** macOS guests: iCloud sign-in, first-boot provisioning, ISO keyboard mapping. */
  macos?: { icloud: string; provision?: string; keyboard?: string };
}

/** The details of one VM. */
export async function getVm(store: Store, name: string): Promise<VmDetails> {
  const b = await store.get(name);
  const summary = await store.summary(b);
  const spec = await b.readSpec();
  const machine = await b.readMachine().catch(() => undefined);
  const macos = spec.os === "macos"
    ? await macosDetails(b, spec, machine?.vzMachineIdentifier)
    : undefined;
  return { ...summary, path: b.dir, spec, machine, ...(macos ? { macos } : {}) };
}

/** Changes of `cove set`. */
export interface SetVmOptions {
  cpus?: string | number;
  memory?: string;
  diskSize?: string;
  display?: string;
}

/** Applies `cove set` changes; disk changes need the VM stopped. */
export async function setVm(store: Store, name: string, opts: SetVmOptions): Promise<VmDetails> {
  const b = await store.get(name);
  const current = await b.readParsedSpec();
  const next = applyFlags(current, { cpus: opts.cpus, memory: opts.memory, display: opts.display });
  if (opts.diskSize !== undefined) {
    await store.resizeRootDisk(name, parseSize(opts.diskSize, "--disk-size"));
    const resized = await b.readParsedSpec();
    next.disks = resized.disks;
  }
  await b.writeSpec(next);
  return await getVm(store, name);
}

/** A human summary of a size field (for tables). */
export function showSize(bytes: number | undefined): string {
  return bytes === undefined ? "-" : formatSize(bytes);
}
