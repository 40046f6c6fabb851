/**
 * The store: `$COVE_HOME` (default `~/.cove`) with `vms/NAME/` bundles,
 * `cache/` and `tmp/`. Creating, cloning, renaming and deleting VMs are
 * atomic from the point of view of `cove list`: work happens in `tmp/` and a
 * single rename publishes (or retires) a bundle. A kill -9 at any moment
 * leaves at worst a stale directory under `tmp/`, which the next command
 * that writes sweeps away ({@link Store.sweep}), together with ephemeral
 * clones whose supervisor died. `list` only reads.
 * @module
 */
import { basename, join } from "node:path";
import { CoveError, ExitCode, usageError } from "../errors.ts";
import { detectHost, type HostInfo } from "../host.ts";
import { applyDefaults } from "../spec/defaults.ts";
import type { SpecParsed, VmSpec } from "../spec/schema.ts";
import { formatSize, parseSize } from "../units.ts";
import {
  assertPrivatePath,
  Bundle,
  BUNDLE_FILES,
  type BundleLock,
  heldError,
  INSTANCE_FILES,
  type LockPurpose,
  type MachineIdentity,
} from "./bundle.ts";
import { cloneFile, type CopyMethod, ensureSparseFile } from "./fsutil.ts";

/** The rule for VM names, shown in errors. */
export const NAME_RULE =
  "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit";
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * Orders VM names as the Unicode root collation does (what `localeCompare`
 * gives under English locales), for the characters a name may have, without
 * the collator: setting up ICU costs a TAB press ~10 ms. Letters compare
 * without case first ('_' < '-' < '.' < digits < letters), then the first
 * difference of case decides, lower case first.
 */
export function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = primaryWeight(a.charCodeAt(i)) - primaryWeight(b.charCodeAt(i));
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i), y = b.charCodeAt(i);
    if (x !== y) return x > y ? -1 : 1; // same letter, other case: 'a' (0x61) before 'A' (0x41)
  }
  return 0;
}

/** The root collation's primary order of the characters of VM names. */
function primaryWeight(c: number): number {
  if (c === 0x5f) return 0; // _
  if (c === 0x2d) return 1; // -
  if (c === 0x2e) return 2; // .
  if (c >= 0x30 && c <= 0x39) return 10 + c - 0x30; // digits
  if (c >= 0x61 && c <= 0x7a) return 20 + c - 0x61; // a-z
  if (c >= 0x41 && c <= 0x5a) return 20 + c - 0x41; // A-Z
  return 100 + c; // not in a valid name
}

/** Throws a usage error unless `name` is a valid VM name. */
export function validateName(name: string): void {
  if (!NAME_RE.test(name) || name.includes("..")) {
    throw usageError("vm.bad_name", `'${name}' is not a valid VM name`, `use ${NAME_RULE}`);
  }
}

/** Where cove keeps its data: $COVE_HOME or ~/.cove. */
export function coveHome(): string {
  const env = Deno.env.get("COVE_HOME");
  if (env) return env;
  const home = Deno.env.get("HOME");
  if (!home) {
    throw new CoveError("home.unset", "neither COVE_HOME nor HOME is set", {
      hint: "set COVE_HOME to a writable directory",
    });
  }
  return join(home, ".cove");
}

/** A line of `cove list`. */
export interface VmSummary {
  name: string;
  /** Stored state; `cove list`/`get` refine it with the supervisor's live state. */
  state:
    | "running"
    | "stopped"
    | "broken"
    | "busy"
    | "suspended"
    | "unresponsive"
    | "starting"
    | "paused"
    | "stopping"
    | "suspending"
    | "suspended"
    | "error";
  os?: string;
  arch?: string;
  engine?: string;
  cpus?: number;
  memory?: number;
  /** Size of the root disk in bytes (its virtual size). */
  disk?: number;
  /** What a busy VM is doing (push, clone, ...). */
  busy?: string;
  /** Why the bundle is broken. */
  error?: string;
}

/** What `create` needs. */
export interface CreateOptions {
  /** The validated spec, as from parseSpec or built from flags. */
  spec: SpecParsed;
  /**
   * Places files into the staging bundle before disks are sized: copy or
   * convert an image to the root disk, write engine state. It may return a
   * spec to use instead (for example with an installer disk added).
   */
  populate?: (staging: Bundle, spec: VmSpec) => Promise<VmSpec | void>;
  host?: HostInfo;
}

/** Marks a bundle made by `cove run --ephemeral`: deleted when its run ends. */
export const EPHEMERAL_MARK: string = BUNDLE_FILES.ephemeral;

/** The VM store rooted at a COVE_HOME. */
export class Store {
  readonly home: string;
  constructor(home: string = coveHome()) {
    this.home = home;
  }

  get vmsDir(): string {
    return join(this.home, "vms");
  }

  #vmsPrefix?: string;
  /** The directory of VM `name`, a valid name: `join(vmsDir, name)` in one concatenation. */
  private vmDir(name: string): string {
    this.#vmsPrefix ??= join(this.vmsDir, "x").slice(0, -1);
    return this.#vmsPrefix + name;
  }
  get cacheDir(): string {
    return join(this.home, "cache");
  }
  get tmpDir(): string {
    return join(this.home, "tmp");
  }

  /**
   * Refuses a COVE_HOME or `vms/` that another user owns or can write (as
   * ssh's StrictModes does): such a user could swap in a bundle whose
   * `qemu.binary` would then run as you.
   */
  async assertSafe(): Promise<void> {
    await assertPrivatePath(this.home, "COVE_HOME");
    await assertPrivatePath(this.vmsDir, "the VM directory");
  }

  /** Creates the store directories (0700), or says clearly why it cannot. */
  async ensure(): Promise<void> {
    for (const d of [this.home, this.vmsDir, this.cacheDir, this.tmpDir]) {
      await assertPrivatePath(d, d === this.home ? "COVE_HOME" : "the directory");
      try {
        await Deno.mkdir(d, { recursive: true, mode: 0o700 });
        const probe = join(d, `.probe-${crypto.randomUUID()}`);
        await Deno.writeTextFile(probe, "");
        await Deno.remove(probe);
      } catch (e) {
        if (e instanceof CoveError) throw e;
        throw new CoveError("home.unwritable", `COVE_HOME '${this.home}' is not writable (${d})`, {
          hint: "set COVE_HOME to a writable directory or fix its permissions",
          exit: ExitCode.Host,
          cause: e,
        });
      }
    }
  }

  /** The bundle of `name`, whether or not it exists. */
  bundle(name: string): Bundle {
    validateName(name);
    return new Bundle(name, this.vmDir(name));
  }

  /** True when a VM of that name exists. */
  // deno-lint-ignore require-await -- synchronous file calls inside (no thread hop), async to callers
  async exists(name: string): Promise<boolean> {
    try {
      // Synchronous: `cove list` and completion ask for every VM; an async call is a thread hop.
      return Deno.statSync(new Bundle(name, this.vmDir(name)).specPath).isFile;
    } catch {
      return false;
    }
  }

  /** The bundle of an existing VM, or a not-found error; refuses one another user could change. */
  async get(name: string): Promise<Bundle> {
    const b = this.bundle(name);
    await this.assertSafe();
    if (!(await this.exists(name))) {
      throw new CoveError("vm.not_found", `no VM named '${name}'`, {
        hint: "run 'cove list' to see your VMs",
        exit: ExitCode.NotFound,
      });
    }
    await assertPrivatePath(b.dir, `the directory of VM '${name}'`);
    return b;
  }

  /**
   * The names of every VM, sorted, and nothing else: no spec is read, no
   * lock is probed and nothing is changed (for completion).
   */
  async names(): Promise<string[]> {
    let entries: Deno.DirEntry[] = [];
    try {
      entries = Array.from(Deno.readDirSync(this.vmsDir));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    const names: string[] = [];
    for (const ent of entries) {
      if (!ent.isDirectory || ent.name.startsWith(".") || !NAME_RE.test(ent.name)) continue;
      if (await this.exists(ent.name)) names.push(ent.name);
    }
    return names.sort(compareNames);
  }

  /** Every VM, sorted by name. Reads only: nothing on disk changes. */
  async list(): Promise<VmSummary[]> {
    const out: VmSummary[] = [];
    await this.assertSafe();
    let entries: Deno.DirEntry[] = [];
    try {
      entries = Array.from(Deno.readDirSync(this.vmsDir));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    for (const ent of entries) {
      if (!ent.isDirectory || ent.name.startsWith(".") || !NAME_RE.test(ent.name)) continue;
      if (!(await this.exists(ent.name))) continue;
      const b = new Bundle(ent.name, this.vmDir(ent.name));
      // A dead ephemeral clone is not a VM of the user's; the next command that writes reaps it.
      if (await this.isDeadEphemeral(b)) continue;
      try {
        await assertPrivatePath(b.dir, `the directory of VM '${b.name}'`);
      } catch (e) {
        out.push({ name: b.name, state: "broken", error: (e as CoveError).message });
        continue;
      }
      out.push(await this.summary(b));
    }
    return out.sort((a, b) => compareNames(a.name, b.name));
  }

  /**
   * The summary of one bundle; its spec is read through the bundle's
   * summary file when that is fresh ({@link Bundle.readSpecSummarized}).
   */
  async summary(b: Bundle): Promise<VmSummary> {
    return (await this.summaryAndSpec(b)).summary;
  }

  /** {@link summary}, and the spec it was made from (undefined when it cannot be read). */
  async summaryAndSpec(b: Bundle): Promise<{ summary: VmSummary; spec?: VmSpec }> {
    // An unreadable lock file breaks this VM's line, not the whole list.
    const st = await b.state();
    if (st.state === "broken" && st.error?.startsWith("cannot check")) {
      return { summary: { name: b.name, state: "broken", error: st.error } };
    }
    const state = st.state === "broken" ? "stopped" : st.state;
    const busy = st.state === "busy" ? { busy: st.purpose } : {};
    try {
      const spec = await b.readSpecSummarized();
      let disk: number | undefined;
      const root = spec.disks.find((d) => d.media === "disk");
      if (root) {
        try {
          disk = Deno.statSync(b.resolve(root.path)).size;
        } catch {
          disk = undefined;
        }
      }
      const summary: VmSummary = {
        name: b.name,
        state,
        os: spec.os,
        arch: spec.arch,
        engine: spec.engine,
        cpus: spec.cpus,
        memory: parseSize(spec.memory),
        disk,
        ...busy,
      };
      return { summary, spec };
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      return {
        summary: { name: b.name, state: state === "stopped" ? "broken" : state, error: msg },
      };
    }
  }

  /** Creates a VM atomically. */
  async create(name: string, opts: CreateOptions): Promise<Bundle> {
    validateName(name);
    await this.ensure();
    await this.assertFree(name);
    await this.sweep();
    const host = opts.host ?? detectHost();
    let spec = withMacs(applyDefaults(opts.spec, host, name));
    const { value } = await this.stage(`create-${name}`, async (staging) => {
      await staging.writeMachine({ uuid: crypto.randomUUID(), created: new Date().toISOString() });
      if (opts.populate) spec = (await opts.populate(staging, spec)) ?? spec;
      await sizeDisks(staging, spec);
      await staging.writeSpec(spec);
      return await this.publish(staging, name);
    });
    return value;
  }

  /**
   * Clones a VM: disks copy-on-write (or hole-preserving), a new MAC
   * address per network, a new machine identity. A running VM is cloned
   * from the consistent copy of its disks that `opts.copyRunning` takes
   * (without it, a running VM is refused).
   */
  async clone(
    src: string,
    dst: string,
    opts: { ephemeral?: boolean; copyRunning?: CopyRunning } = {},
  ): Promise<{ bundle: Bundle; methods: CopyMethod[]; lock?: BundleLock; frozen?: boolean }> {
    const from = await this.get(src);
    validateName(dst);
    await this.ensure();
    await this.assertFree(dst);
    await this.sweep();
    const source = await this.holdSource(from, "clone", "clone", opts.copyRunning);
    try {
      const parsed = await from.readParsedSpec();
      const { value: bundle, lock: held } = await this.stage(`clone-${dst}`, async (staging) => {
        const { methods, relocated } = await copyBundleFiles(from, staging, source.copy, false);
        const old = await from.readMachine().catch((): MachineIdentity => ({
          uuid: "",
          created: new Date().toISOString(),
        }));
        await staging.writeMachine({
          uuid: crypto.randomUUID(),
          vzHardwareModel: old.vzHardwareModel,
          created: new Date().toISOString(),
        });
        const spec: SpecParsed = structuredClone(parsed);
        for (const [i, path] of relocated) if (spec.disks?.[i]) spec.disks[i].path = path;
        spec.networks = spec.networks?.map((n) => ({ ...n, mac: randomMac() }));
        if (spec.provision?.hostname === src) spec.provision.hostname = dst;
        await staging.writeSpec(withMacs(applyDefaults(spec, detectHost(), dst)));
        if (opts.ephemeral) {
          await Deno.writeTextFile(staging.ephemeralMark, `${src}\n`, { mode: 0o600 });
        }
        return { bundle: await this.publish(staging, dst), methods };
      }, opts.ephemeral);
      return { ...bundle, lock: held ?? undefined, frozen: source.copy?.frozen };
    } finally {
      await source.release();
    }
  }

  /**
   * Runs `fn` on a private copy of the running VM `from` as it is (the same identity
   * and files, its disks copy-on-write where the file system can), made in
   * a locked staging directory and removed afterwards: what a push of a
   * running VM reads, while the VM runs on.
   */
  async withCopy<T>(
    from: Bundle,
    copyRunning: CopyRunning,
    fn: (copy: Bundle, frozen: boolean) => Promise<T>,
  ): Promise<T> {
    await this.ensure();
    await this.sweep();
    const copy = await copyRunning(from);
    let value: T | undefined;
    try {
      await this.stage(`clone-copy-${from.name}`, async (staging) => {
        const { relocated } = await copyBundleFiles(from, staging, copy, true);
        await copy.release();
        if (relocated.size) {
          const spec = await staging.readParsedSpec();
          for (const [i, path] of relocated) if (spec.disks?.[i]) spec.disks[i].path = path;
          await staging.writeSpec(spec);
        }
        value = await fn(staging, copy.frozen);
        // stage() keeps what its work made: this copy is only read, so it goes now.
        await Deno.remove(staging.dir, { recursive: true }).catch(() => {});
      });
    } finally {
      await copy.release();
    }
    return value as T;
  }

  /**
   * Holds the source of a clone: its lock when it is stopped; when it is
   * running (and `copyRunning` is given), a consistent copy of its disks
   * from its supervisor instead.
   */
  private async holdSource(
    from: Bundle,
    action: string,
    purpose: LockPurpose,
    copyRunning?: CopyRunning,
  ): Promise<{ copy?: RunningCopy; release(): Promise<void> }> {
    const lock = await from.tryLock({ purpose });
    if (lock) return { release: () => Promise.resolve(lock.release()) };
    const h = (await from.holder()) ?? { purpose: "run" as const };
    if (h.purpose !== "run" || !copyRunning) throw heldError(from.name, action, h);
    const copy = await copyRunning(from);
    return { copy, release: () => copy.release() };
  }

  /** Renames a stopped VM. */
  async rename(oldName: string, newName: string): Promise<Bundle> {
    const from = await this.get(oldName);
    validateName(newName);
    await this.assertFree(newName);
    const lock = await this.lockStopped(from, "rename", "change");
    try {
      const to = this.bundle(newName);
      await Deno.rename(from.dir, to.dir);
      return to;
    } finally {
      lock.release();
    }
  }

  /** Deletes a stopped VM: retired by one rename, then removed. */
  async delete(name: string): Promise<void> {
    const b = await this.get(name);
    await this.ensure();
    const lock = await this.lockStopped(b, "delete", "delete");
    const grave = join(this.tmpDir, `delete-${name}-${crypto.randomUUID()}`);
    try {
      await Deno.rename(b.dir, grave);
    } finally {
      lock.release();
    }
    // A concurrent sweepStale may have removed it already.
    await Deno.remove(grave, { recursive: true }).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
    // Deleting writes: reap what killed runs left, as create and clone do.
    await this.sweep().catch(() => {});
  }

  /** Resizes a stopped VM's root disk (grow only). */
  async resizeRootDisk(name: string, size: number): Promise<void> {
    const b = await this.get(name);
    const lock = await this.lockStopped(b, "change the disk of", "change");
    try {
      const spec = await b.readParsedSpec();
      const full = applyDefaults(spec, detectHost(), name);
      const i = full.disks.findIndex((d) => d.media === "disk");
      if (i < 0) throw usageError("disk.none", `VM '${name}' has no disk to resize`);
      if (full.disks[i].format !== "raw") {
        throw usageError(
          "disk.format",
          `cannot resize VM '${name}': its root disk is ${full.disks[i].format}, not raw`,
          "resize the image with its own tool (e.g. qemu-img resize) and update disks[].size",
        );
      }
      const where = await b.diskLocation(full.disks[i], i);
      if (!where.inside) {
        throw usageError(
          "disk.outside",
          `cannot resize VM '${name}': its root disk ${where.path} is outside the VM's directory`,
          "cove never resizes a disk it does not own: resize it yourself and update disks[].size",
        );
      }
      full.disks[i] = { ...full.disks[i], size: formatSize(size) };
      await ensureSparseFile(where.path, size, `disks[${i}].size`);
      spec.disks = full.disks;
      await b.writeSpec(spec);
    } finally {
      lock.release();
    }
  }

  private async assertFree(name: string): Promise<void> {
    try {
      await Deno.lstat(join(this.vmsDir, name));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    throw new CoveError("vm.exists", `a VM named '${name}' already exists`, {
      hint: "choose another name, or delete the existing VM first",
      exit: ExitCode.Usage,
    });
  }

  /**
   * Takes the lock of a VM that is neither running nor busy, for `purpose`;
   * one try, since probes never take the lock.
   */
  async lockStopped(b: Bundle, action: string, purpose: LockPurpose): Promise<BundleLock> {
    const lock = await b.tryLock({ purpose });
    if (!lock) throw heldError(b.name, action, (await b.holder()) ?? { purpose: "run" });
    return lock;
  }

  /**
   * Runs `work` in a fresh locked staging bundle; removes it on failure.
   * With `keepLock`, the lock stays held after success and is returned: it
   * moves with the directory when `work` publishes it, so the new bundle is
   * never unlocked between its creation and its first user.
   */
  private async stage<T>(
    label: string,
    work: (staging: Bundle) => Promise<T>,
    keepLock = false,
  ): Promise<{ value: T; lock: BundleLock | null }> {
    // Made and locked under a name the sweep leaves alone, then renamed (the lock moves with it):
    // a concurrent sweep never sees an unlocked staging directory and takes it.
    const id = `${label}-${crypto.randomUUID()}`;
    const fresh = join(this.tmpDir, `.new-${id}`);
    await Deno.mkdir(fresh, { mode: 0o700 });
    // A lock kept for the caller is a supervisor's (an ephemeral run).
    const lock = (await new Bundle(id, fresh).tryLock({ purpose: keepLock ? "run" : "create" }))!;
    const dir = join(this.tmpDir, id);
    try {
      await Deno.rename(fresh, dir);
    } catch (e) {
      lock.release();
      await Deno.remove(fresh, { recursive: true }).catch(() => {});
      throw e;
    }
    const staging = new Bundle(basename(dir), dir);
    let ok = false;
    try {
      const value = await work(staging);
      ok = true;
      return { value, lock: keepLock ? lock : null };
    } catch (e) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw e;
    } finally {
      if (!(ok && keepLock)) lock.release();
    }
  }

  /** Publishes a staging bundle under `name` with one rename. */
  private async publish(staging: Bundle, name: string): Promise<Bundle> {
    await this.assertFree(name);
    const final = this.bundle(name);
    try {
      await Deno.rename(staging.dir, final.dir);
    } catch (e) {
      // Another create of the same name published between the check and the rename
      // (ENOTEMPTY, or EEXIST): that is "it exists", and stage() removes this staging.
      if (await Deno.lstat(final.dir).then(() => true, () => false)) {
        await this.assertFree(name);
      }
      throw e;
    }
    return final;
  }

  /** True for an `--ephemeral` clone whose supervisor is gone (killed with -9). */
  async isDeadEphemeral(b: Bundle): Promise<boolean> {
    return b.has("ephemeral") && (await b.holder().catch(() => null)) === null;
  }

  /**
   * What commands that write do first: delete `--ephemeral` clones whose
   * supervisor died (it could not delete them itself), remove staging
   * directories left by killed processes, and rewrite the spec summaries
   * that are missing, corrupt or stale (a spec edited by hand). `list`
   * never does this.
   */
  async sweep(): Promise<void> {
    await this.reapEphemerals();
    await this.sweepStale();
    await this.refreshSummaries();
  }

  /**
   * Rewrites every spec summary that does not describe its spec as it is
   * now ({@link Bundle.writeSummary}); a VM whose spec does not validate
   * keeps none.
   */
  async refreshSummaries(): Promise<void> {
    for (const name of await this.names().catch(() => [])) {
      const b = new Bundle(name, this.vmDir(name));
      if (!b.freshSummary()) await b.writeSummary().catch(() => {});
    }
  }

  /** Deletes every dead ephemeral clone. */
  async reapEphemerals(): Promise<void> {
    for (const ent of await subdirs(this.vmsDir)) {
      if (!NAME_RE.test(ent.name)) continue;
      const b = new Bundle(ent.name, this.vmDir(ent.name));
      if (await this.isDeadEphemeral(b)) await this.delete(b.name).catch(() => {});
    }
  }

  /** Removes staging directories left by killed processes (nobody holds their lock). */
  async sweepStale(): Promise<void> {
    for (const ent of await subdirs(this.tmpDir)) {
      const dir = join(this.tmpDir, ent.name);
      if (ent.name.startsWith("delete-")) {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
        continue;
      }
      const fresh = ent.name.startsWith(".new-");
      if (!fresh && !/^(create|clone)-/.test(ent.name)) continue;
      if (fresh) {
        // Being locked by its maker right now, unless a kill -9 left it long ago.
        const age = await Deno.stat(dir).then(
          (st) => Date.now() - (st.mtime?.getTime() ?? Date.now()),
          () => 0,
        );
        if (age < STAGING_GRACE_MS) continue;
      }
      const lock = await new Bundle(ent.name, dir).tryLock({ purpose: "create" }).catch(() => null);
      if (!lock) continue;
      try {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      } finally {
        lock.release();
      }
    }
  }
}

/** The directories in `dir`, read at once; none when it cannot be read (not made yet). */
async function subdirs(dir: string): Promise<Deno.DirEntry[]> {
  try {
    return (await Array.fromAsync(Deno.readDir(dir))).filter((e) => e.isDirectory);
  } catch {
    return [];
  }
}

/**
 * A consistent copy of a running VM's disks, made by its supervisor (see
 * `copyRunningDisks` in core/supervisor/client.ts): `dir` holds `disks[].file`,
 * the copies of the disks at `disks[].path`, and `firmware[].file`, the
 * firmware's files (EFI variables, Mac NVRAM) taken at the same instant.
 */
export interface RunningCopy {
  dir: string;
  /** True when the guest's file systems were frozen for the copy. */
  frozen: boolean;
  disks: { index: number; path: string; file: string; method: CopyMethod }[];
  firmware?: { path: string; file: string; method: CopyMethod }[];
  /** Removes what is left of the copy (never throws). */
  release(): Promise<void>;
}

/** Takes a {@link RunningCopy} of a running VM. */
export type CopyRunning = (from: Bundle) => Promise<RunningCopy>;

/**
 * Copies a VM's files into a staging bundle: every file but its instance
 * files (and, unless `whole`, its spec, identity and summary, which a clone
 * writes anew). A disk or firmware file of `copy` is moved in from there,
 * never copied from the running VM; a copied disk that is not a file of the
 * bundle (a path outside it) is moved in under {@link Bundle.copiedDiskName},
 * and `relocated` says which `disks[i]` now has which path.
 */
async function copyBundleFiles(
  from: Bundle,
  staging: Bundle,
  copy: RunningCopy | undefined,
  whole: boolean,
): Promise<{ methods: CopyMethod[]; relocated: Map<number, string> }> {
  const real = (p: string) => Deno.realPath(p).catch(() => p);
  const pending = new Map<string, RunningCopy["disks"][number]>();
  for (const d of copy?.disks ?? []) pending.set(await real(from.resolve(d.path)), d);
  // A firmware file outside the bundle is not the bundle's to copy: the clone names it too.
  const firmware = new Map<string, { file: string; method: CopyMethod; what: string }>();
  for (const f of copy?.firmware ?? []) {
    firmware.set(await real(from.resolve(f.path)), { ...f, what: `the firmware file '${f.path}'` });
  }
  const methods: CopyMethod[] = [];
  const takeCopy = async (d: { file: string; method: CopyMethod }, what: string, dst: string) => {
    await Deno.rename(join(copy!.dir, d.file), dst).catch((e) => {
      throw new CoveError(
        "vm.control",
        `the copy of ${what} that the supervisor of '${from.name}' made is gone: ${
          e instanceof Error ? e.message : e
        }`,
        { hint: "retry", exit: ExitCode.Failure },
      );
    });
    methods.push(d.method);
  };
  for await (const ent of Deno.readDir(from.dir)) {
    if (!ent.isFile || INSTANCE_FILES.has(ent.name) || ent.name.startsWith(".")) continue;
    if (!whole && (ent.name === BUNDLE_FILES.spec || ent.name === BUNDLE_FILES.machine)) continue;
    if (ent.name === BUNDLE_FILES.summary) continue; // writeSpec makes the copy's own
    const src = join(from.dir, ent.name);
    const dst = join(staging.dir, ent.name);
    const key = await real(src);
    const disk = pending.get(key);
    const fw = firmware.get(key);
    if (disk) {
      pending.delete(key);
      await takeCopy(disk, `disks[${disk.index}]`, dst);
    } else if (fw) await takeCopy(fw, fw.what, dst);
    else methods.push(await cloneFile(src, dst));
  }
  const relocated = new Map<number, string>();
  for (const d of pending.values()) {
    const name = staging.copiedDiskName(d.index);
    await takeCopy(d, `disks[${d.index}]`, join(staging.dir, name));
    relocated.set(d.index, name);
  }
  return { methods, relocated };
}

/** How old a `.new-` staging directory (made, not yet locked) must be before a sweep removes it. */
const STAGING_GRACE_MS = 60_000;

/**
 * Creates or grows every writable raw disk of a spec to its size, within
 * the confinement rules of {@link Bundle.diskLocation}: a disk outside the
 * bundle is never resized.
 */
async function sizeDisks(b: Bundle, spec: VmSpec): Promise<void> {
  const where = await b.checkDisks(spec);
  for (const [i, d] of spec.disks.entries()) {
    if (d.media !== "disk") continue;
    const { path, inside, exists } = where[i];
    if (!inside && exists) {
      const have = (await Deno.stat(path)).size;
      if (d.size !== undefined && parseSize(d.size) > have) {
        throw usageError(
          "disk.outside",
          `disks[${i}]: cove does not resize '${d.path}' (${
            formatSize(have)
          }), which is outside the VM's directory, to ${d.size}`,
          "resize it yourself, or drop its size",
        );
      }
      continue;
    }
    if (d.size === undefined) {
      if (!exists) {
        throw usageError(
          "spec.invalid",
          `disks[${i}]: '${d.path}' does not exist and has no size`,
          "give the disk a size, or point path at an existing image",
        );
      }
      continue;
    }
    if (d.format !== "raw") continue;
    await ensureSparseFile(path, parseSize(d.size), `disks[${i}].size`);
  }
}

/** A random locally administered, unicast MAC address. */
export function randomMac(): string {
  const b = crypto.getRandomValues(new Uint8Array(6));
  b[0] = (b[0] & 0xfc) | 0x02;
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join(":");
}

function withMacs(spec: VmSpec): VmSpec {
  return {
    ...spec,
    networks: spec.networks.map((n) => n.mode === "none" || n.mac ? n : { ...n, mac: randomMac() }),
  };
}
