/**
 * Snapshots of a VM's disks and, when it runs, its memory: `snapshots/TAG/`
 * in the bundle with a copy-on-write copy of every writable disk, the
 * engine's machine state (`memory.state`) and a record (`snapshot.json`:
 * the spec it was taken with, the time, whether it holds memory, the
 * allocated bytes).
 *
 * Guarantees:
 * - a snapshot is made in a staging directory and renamed into place, so a
 *   kill or a full disk leaves no half snapshot listed;
 * - a running VM is paused only after the free-space check, and resumed
 *   whatever happens (see {@link saveRunning});
 * - a restore copies the snapshot's disks next to the VM's, writes a journal
 *   of the renames and only then swaps them in, so a kill at any moment
 *   leaves the old disks or the new ones; the next command that holds the
 *   lock finishes or discards it ({@link recoverBundle}).
 *
 * Nothing here names an engine: a running VM is reached through
 * {@link LiveVm}, the subset of the engine's RunningVm a save needs.
 * @module
 */
import { join } from "node:path";
import type { VmState } from "../../engines/engine.ts";
import { CoveError, ExitCode, usageError } from "../errors.ts";
import type { VmSpec } from "../spec/schema.ts";
import type { Bundle } from "../store/bundle.ts";
import { freeBytesLinux, LibcError } from "../../ffi/libc.ts";
import { cloneFile, type CopyMethod, writeFileAtomic } from "../store/fsutil.ts";
import { formatSize, parseSize } from "../units.ts";
import { type Freeze, type GuestHooks, NO_AGENT, NOT_FROZEN } from "./guest.ts";
import { isTag, TAG_RE, TAG_RULE } from "./tag.ts";

export { TAG_RULE } from "./tag.ts";

/** Throws a usage error (exit 2) unless `tag` is a valid snapshot tag. */
export function validateTag(tag: string): void {
  if (!isTag(tag)) {
    throw usageError("snapshot.bad_tag", `'${tag}' is not a valid snapshot tag`, `use ${TAG_RULE}`);
  }
}

/** The default tag: the UTC time, e.g. `20261201-213002`. */
export function defaultTag(now = new Date()): string {
  return now.toISOString().replace(/\..*$/, "").replaceAll("-", "").replaceAll(":", "")
    .replace("T", "-");
}

/** One disk copy in a snapshot. */
export interface SnapshotDisk {
  /** Index in spec.disks. */
  index: number;
  /** The disk's path as the spec gives it. */
  path: string;
  /** File name inside the snapshot directory. */
  file: string;
  /** How it was copied (copy-on-write, or bytes). */
  method?: CopyMethod;
}

/** A copy of one of the VM's firmware files ({@link Bundle.firmwareFiles}) in a snapshot. */
export interface SnapshotFirmware {
  /** The file's path as the spec gives it (relative paths are in the bundle). */
  path: string;
  /** File name inside the snapshot directory. */
  file: string;
  method?: CopyMethod;
}

/** The record of a snapshot (`snapshot.json`). */
export interface SnapshotMeta {
  version: 1;
  tag: string;
  /** When it was taken (ISO 8601). */
  created: string;
  /** True when it holds the machine state (a running VM, not --disk-only). */
  memory: boolean;
  /** The engine that wrote the machine state. */
  engine: string;
  /** The spec the VM ran (or had) when the snapshot was taken. */
  spec: VmSpec;
  disks: SnapshotDisk[];
  /** The firmware's files (EFI variables, Mac NVRAM) as they were; absent in older snapshots. */
  firmware?: SnapshotFirmware[];
  /** Bytes the snapshot's files occupy on disk (shared copy-on-write extents count fully). */
  allocated: number;
  /** How long the guest was paused, for a running VM (ms). */
  pausedMs?: number;
}

/** What `cove snapshot ls` prints per snapshot. */
export interface SnapshotInfo {
  tag: string;
  created: string;
  memory: boolean;
  allocated: number;
  engine: string;
}

/** How a save went. */
export interface SaveResult {
  name: string;
  tag: string;
  memory: boolean;
  /** ms the guest was paused (0 for a stopped VM). */
  pausedMs: number;
  /** ms the machine state write took. */
  stateMs: number;
  /** ms the disk copies took. */
  diskMs: number;
  /** ms of the whole save. */
  totalMs: number;
  allocated: number;
  /** True when the guest's file systems were frozen around the disk copy (through its agent). */
  frozen: boolean;
}

/** The subset of a running VM that a save needs. */
export interface LiveVm {
  state(): VmState;
  pause(): Promise<void>;
  resume(): Promise<void>;
  saveState(path: string): Promise<void>;
  /** Whether the state can be saved, and if not why; absent means yes. */
  saveStateSupport?(): { available: boolean; reason?: string };
}

async function isDir(p: string): Promise<boolean> {
  return await Deno.stat(p).then((s) => s.isDirectory, () => false);
}

async function allocatedOf(path: string): Promise<number> {
  const st = await Deno.stat(path);
  return st.blocks !== null ? st.blocks * 512 : st.size;
}

/**
 * The writable disks of a spec, refused unless raw. `copy`: for a clone or
 * push of the running VM (the refusal says so, and that a stopped VM can be
 * cloned whatever its disks).
 */
export function snapshotDisks(
  bundle: Bundle,
  spec: VmSpec,
  copy = false,
): { index: number; path: string }[] {
  const out: { index: number; path: string }[] = [];
  spec.disks.forEach((d, i) => {
    if (d.media !== "disk" || d.readOnly) return;
    if (d.format !== "raw") {
      const what = copy
        ? `copy the disks of '${bundle.name}' while it runs`
        : `snapshot '${bundle.name}'`;
      throw new CoveError(
        "snapshot.disk_format",
        `cannot ${what}: disks[${i}] ('${d.path}') is ${d.format}, not raw`,
        {
          hint: copy
            ? `stop '${bundle.name}' to clone it (a stopped VM is cloned whatever its disks; a push needs raw disks either way), or convert the disk (qemu-img convert -O raw)`
            : "snapshots copy raw disks; convert it (qemu-img convert -O raw)",
          exit: 2,
        },
      );
    }
    out.push({ index: i, path: d.path });
  });
  return out;
}

/** Bytes free on the file system holding `dir` (statvfs on Linux, else POSIX `df -Pk`). */
export async function freeBytes(dir: string): Promise<number | undefined> {
  if (
    Deno.build.os === "linux" && (Deno.build.arch === "x86_64" || Deno.build.arch === "aarch64")
  ) {
    try {
      return freeBytesLinux(dir);
    } catch (e) {
      if (!(e instanceof LibcError)) throw e;
    }
  }
  try {
    const out = await new Deno.Command("df", {
      args: ["-Pk", dir],
      stdout: "piped",
      stderr: "null",
    })
      .output();
    if (!out.success) return undefined;
    const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
    const f = lines[lines.length - 1].trim().split(/\s+/);
    const kib = Number(f[3]);
    return Number.isFinite(kib) ? kib * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Refuses (exit 5) when the bundle's file system cannot hold `need` bytes. */
async function checkSpace(bundle: Bundle, need: number, what: string): Promise<void> {
  const free = await freeBytes(bundle.dir);
  if (free === undefined || free >= need) return;
  throw new CoveError(
    "snapshot.no_space",
    `not enough free space for ${what} of '${bundle.name}': it needs up to ${formatSize(need)}, ${
      formatSize(free)
    } is free`,
    {
      hint: "free some space, or remove old snapshots with 'cove snapshot rm'",
      exit: ExitCode.Host,
    },
  );
}

/** Whether snapshot `tag` exists (complete: it has its record). */
export async function snapshotExists(bundle: Bundle, tag: string): Promise<boolean> {
  return await Deno.stat(bundle.snapshotMetaPath(tag)).then((s) => s.isFile, () => false);
}

function notFound(bundle: Bundle, tag: string): CoveError {
  return new CoveError("snapshot.not_found", `VM '${bundle.name}' has no snapshot '${tag}'`, {
    hint: `see 'cove snapshot ls ${bundle.name}'`,
    exit: ExitCode.NotFound,
  });
}

function exists(bundle: Bundle, tag: string): CoveError {
  return new CoveError(
    "snapshot.exists",
    `VM '${bundle.name}' already has a snapshot '${tag}'`,
    {
      hint: "choose another tag, or remove it first with 'cove snapshot rm'",
      exit: ExitCode.Usage,
    },
  );
}

/** Reads a snapshot's record. */
export async function readMeta(bundle: Bundle, tag: string): Promise<SnapshotMeta> {
  validateTag(tag);
  let text: string;
  try {
    text = await Deno.readTextFile(bundle.snapshotMetaPath(tag));
  } catch {
    throw notFound(bundle, tag);
  }
  return JSON.parse(text) as SnapshotMeta;
}

/** The VM's snapshots, oldest first. */
export async function listSnapshots(bundle: Bundle): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(bundle.snapshotsDir));
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!e.isDirectory || bundle.isSnapshotScratch(e.name) || !TAG_RE.test(e.name)) continue;
    try {
      const m = JSON.parse(
        await Deno.readTextFile(bundle.snapshotMetaPath(e.name)),
      ) as SnapshotMeta;
      out.push({
        tag: e.name,
        created: m.created,
        memory: m.memory,
        allocated: m.allocated,
        engine: m.engine,
      });
    } catch { /* not a complete snapshot */ }
  }
  return out.sort((a, b) => a.created.localeCompare(b.created) || a.tag.localeCompare(b.tag));
}

/**
 * Finishes or discards what a killed save or restore left: completes a
 * journaled restore, removes restore temporaries, staging and trash
 * directories. Call only while holding the bundle lock (or as the supervisor).
 */
export async function recoverBundle(bundle: Bundle): Promise<void> {
  let journal: RestoreJournal | undefined;
  try {
    journal = JSON.parse(await Deno.readTextFile(bundle.restoreJournalPath)) as RestoreJournal;
  } catch { /* no restore under way */ }
  if (journal) await applyJournal(bundle, journal);
  for (const dir of [bundle.dir]) {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && bundle.isRestoreTemp(e.name)) {
        await Deno.remove(join(dir, e.name)).catch(() => {});
      }
    }
  }
  try {
    for await (const e of Deno.readDir(bundle.snapshotsDir)) {
      if (!bundle.isSnapshotScratch(e.name)) continue;
      // A copy for a clone or push is taken out by its client an instant after it is made.
      if (bundle.isSnapshotCopy(e.name) && await youngerThan(bundle, e.name, COPY_GRACE_MS)) {
        continue;
      }
      await Deno.remove(join(bundle.snapshotsDir, e.name), { recursive: true }).catch(() => {});
    }
  } catch { /* no snapshots */ }
}

/** How long a published copy ({@link SaveOptions.copy}) is left for its client before a recovery removes it. */
export const COPY_GRACE_MS = 120_000;

/** True when the record of `snapshots/NAME` was written less than `ms` ago. */
async function youngerThan(bundle: Bundle, name: string, ms: number): Promise<boolean> {
  const st = await Deno.stat(join(bundle.snapshotDir(name), bundle.snapshotMetaName)).catch(() =>
    null
  );
  return !!st?.mtime && Date.now() - st.mtime.getTime() < ms;
}

async function ensureSnapshotsDir(bundle: Bundle): Promise<void> {
  await Deno.mkdir(bundle.snapshotsDir, { recursive: true, mode: 0o700 });
}

/** Copies every writable disk into the staging directory; returns the disk records. */
async function copyDisks(
  bundle: Bundle,
  disks: { index: number; path: string }[],
  staging: string,
  hook?: (phase: string) => Promise<void>,
): Promise<SnapshotDisk[]> {
  const out: SnapshotDisk[] = [];
  for (const d of disks) {
    const file = bundle.snapshotDiskName(d.index);
    await hook?.("disk-copy");
    const method = await cloneFile(bundle.resolve(d.path), join(staging, file));
    out.push({ index: d.index, path: d.path, file, method });
  }
  return out;
}

/** Bytes the firmware files that exist occupy (for the space check). */
async function firmwareBytes(bundle: Bundle, spec: VmSpec): Promise<number> {
  let n = 0;
  for (const p of bundle.firmwareFiles(spec)) {
    n += await allocatedOf(bundle.resolve(p)).catch(() => 0);
  }
  return n;
}

/** Copies the firmware files that exist into the staging directory; returns their records. */
async function copyFirmware(
  bundle: Bundle,
  spec: VmSpec,
  staging: string,
): Promise<SnapshotFirmware[]> {
  const out: SnapshotFirmware[] = [];
  for (const [i, path] of bundle.firmwareFiles(spec).entries()) {
    const src = bundle.resolve(path);
    if (!(await Deno.stat(src).then((s) => s.isFile, () => false))) continue;
    const file = bundle.snapshotFirmwareName(i);
    out.push({ path, file, method: await cloneFile(src, join(staging, file)) });
  }
  return out;
}

/** Writes the record and renames the staging directory into `snapshots/TAG`. */
async function publish(
  bundle: Bundle,
  staging: string,
  meta: Omit<SnapshotMeta, "allocated">,
): Promise<number> {
  let allocated = 0;
  for await (const e of Deno.readDir(staging)) {
    allocated += await allocatedOf(join(staging, e.name));
  }
  // No temporary file or fsync needed: the staging directory is not listed until its rename, and
  // a published snapshot whose record does not parse is not listed either.
  await Deno.writeTextFile(
    join(staging, bundle.snapshotMetaName),
    JSON.stringify({ ...meta, allocated }, null, 2) + "\n",
    { mode: 0o600 },
  );
  if (await isDir(bundle.snapshotDir(meta.tag))) throw exists(bundle, meta.tag);
  await Deno.rename(staging, bundle.snapshotDir(meta.tag));
  return allocated;
}

/** Options of a save. */
export interface SaveOptions {
  /** The tag; default {@link defaultTag}. */
  tag?: string;
  /** Only the disks, even of a running VM. */
  diskOnly?: boolean;
  /** The guest agent's steps (default: none). */
  guest?: GuestHooks;
  /**
   * A copy, not a snapshot: the disks only (frozen), published under a
   * hidden name of {@link Bundle.snapshotCopyTag} that `ls` never lists,
   * for a clone or push of the running VM to take the files from.
   */
  copy?: boolean;
  /**
   * Test seam: called at named points of the save (`before-pause`,
   * `state-write`, `disk-copy`, `before-publish`), so tests can stop there.
   */
  hook?: (phase: string) => Promise<void>;
}

async function startSave(bundle: Bundle, opts: SaveOptions): Promise<string> {
  const tag = opts.copy ? bundle.snapshotCopyTag() : opts.tag ?? defaultTag();
  if (!opts.copy) validateTag(tag);
  if (await isDir(bundle.snapshotDir(tag))) throw exists(bundle, tag);
  await recoverBundle(bundle);
  await ensureSnapshotsDir(bundle);
  return tag;
}

/** Snapshots the disks of a stopped VM. Hold the bundle lock. */
export async function saveStopped(
  bundle: Bundle,
  spec: VmSpec,
  engine: string,
  opts: SaveOptions = {},
): Promise<SaveResult> {
  const t0 = performance.now();
  const tag = await startSave(bundle, opts);
  const disks = snapshotDisks(bundle, spec);
  let need = 0;
  for (const d of disks) need += await allocatedOf(bundle.resolve(d.path));
  need += await firmwareBytes(bundle, spec);
  await checkSpace(bundle, need, "the disk copies");
  const staging = bundle.snapshotStagingDir();
  await Deno.mkdir(staging, { mode: 0o700 });
  try {
    const copied = await copyDisks(bundle, disks, staging, opts.hook);
    const firmware = await copyFirmware(bundle, spec, staging);
    const diskMs = performance.now() - t0;
    await opts.hook?.("before-publish");
    const allocated = await publish(bundle, staging, {
      version: 1,
      tag,
      created: new Date().toISOString(),
      memory: false,
      engine,
      spec,
      disks: copied,
      firmware,
    });
    return {
      name: bundle.name,
      tag,
      memory: false,
      pausedMs: 0,
      stateMs: 0,
      diskMs,
      totalMs: performance.now() - t0,
      allocated,
      frozen: false,
    };
  } catch (e) {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    throw e;
  }
}

/**
 * Snapshots a running VM (run by its supervisor). With memory: pause, save
 * the machine state, copy the disks, resume. Disk only: freeze through the
 * agent, pause, copy the disks, resume, thaw. A memory snapshot does not
 * freeze: the state and the disks are taken at the same paused instant, so
 * they are consistent, and a guest restored from it must not wake frozen
 * (libvirt allows quiescing only disk-only snapshots, for the same reason).
 * The VM is resumed whatever happens, unless it was paused before the save.
 */
export async function saveRunning(
  bundle: Bundle,
  spec: VmSpec,
  engine: string,
  vm: LiveVm,
  opts: SaveOptions = {},
): Promise<SaveResult> {
  const t0 = performance.now();
  const tag = await startSave(bundle, opts);
  const memory = !opts.diskOnly && !opts.copy;
  const support = memory ? vm.saveStateSupport?.() : undefined;
  if (support && !support.available) {
    throw new CoveError(
      "snapshot.no_memory",
      `cannot save the memory of '${bundle.name}': ${support.reason ?? "the engine cannot"}`,
      { hint: "take a --disk-only snapshot", exit: ExitCode.Host },
    );
  }
  const disks = snapshotDisks(bundle, spec, opts.copy);
  let need = memory ? parseSize(spec.memory) : 0;
  for (const d of disks) need += await allocatedOf(bundle.resolve(d.path));
  need += await firmwareBytes(bundle, spec);
  await checkSpace(bundle, need, memory ? "the memory image and disk copies" : "the disk copies");
  const staging = bundle.snapshotStagingDir();
  await Deno.mkdir(staging, { mode: 0o700 });
  const guest = opts.guest ?? NO_AGENT;
  let freeze: Freeze = NOT_FROZEN;
  let frozen = false;
  let paused = false;
  let pausedAt = 0;
  let pausedMs = 0;
  let stateMs = 0;
  let diskMs = 0;
  try {
    if (!memory) {
      freeze = await guest.freeze();
      frozen = freeze.frozen;
    }
    await opts.hook?.("before-pause");
    if (vm.state() === "running") {
      await vm.pause();
      paused = true;
      pausedAt = performance.now();
    } else if (vm.state() !== "paused") {
      throw new CoveError("vm.state", `cannot snapshot '${bundle.name}': it is ${vm.state()}`, {
        exit: ExitCode.State,
      });
    }
    if (memory) {
      const ts = performance.now();
      await opts.hook?.("state-write");
      await vm.saveState(join(staging, bundle.snapshotStateName));
      stateMs = performance.now() - ts;
    }
    const td = performance.now();
    const copied = await copyDisks(bundle, disks, staging, opts.hook);
    // At the same paused instant: the firmware's variables belong with these disks.
    const firmware = await copyFirmware(bundle, spec, staging);
    diskMs = performance.now() - td;
    if (paused) {
      await vm.resume();
      paused = false;
      pausedMs = performance.now() - pausedAt;
    }
    await freeze.thaw();
    freeze = NOT_FROZEN;
    await opts.hook?.("before-publish");
    const allocated = await publish(bundle, staging, {
      version: 1,
      tag,
      created: new Date().toISOString(),
      memory,
      engine,
      spec,
      disks: copied,
      firmware,
      pausedMs: Math.round(pausedMs),
    });
    return {
      name: bundle.name,
      tag,
      memory,
      pausedMs,
      stateMs,
      diskMs,
      totalMs: performance.now() - t0,
      allocated,
      frozen,
    };
  } catch (e) {
    if (paused) await vm.resume().catch(() => {});
    await freeze.thaw();
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** Fields of a spec that a memory image depends on: what the guest's devices and RAM look like. */
export function machineFields(spec: VmSpec): Record<string, string> {
  const j = (v: unknown) => JSON.stringify(v ?? null);
  return {
    os: j(spec.os),
    arch: j(spec.arch),
    cpus: j(spec.cpus),
    memory: j(parseSize(spec.memory)),
    disks: j(spec.disks.map((d) => [d.media, d.format, d.bus, d.readOnly])),
    networks: j(spec.networks.map((n) => [n.mode, n.mac])),
    shares: j(spec.shares.map((s) => [s.tag ?? s.path, s.readOnly])),
    "boot.loader": j(spec.boot.loader),
    display: j(spec.display),
    audio: j(spec.audio),
    keyboard: j(spec.keyboard),
    pointing: j(spec.pointing),
    clipboard: j(spec.clipboard),
    rosetta: j(spec.rosetta),
    nested: j(spec.nested),
    vsock: j(spec.vsock),
    entropy: j(spec.entropy),
    balloon: j(spec.balloon),
    serial: j(spec.serial.mode),
    qemu: j([spec.qemu.machine, spec.qemu.cpu, spec.qemu.args]),
  };
}

/** The names of the machine fields that differ between two specs. */
export function specDifferences(saved: VmSpec, now: VmSpec): string[] {
  const a = machineFields(saved);
  const b = machineFields(now);
  return Object.keys(a).filter((k) => a[k] !== b[k]);
}

/** A journal of renames: temporaries that replace the VM's disks, and an optional resume request. */
interface RestoreJournal {
  renames: [string, string][];
  /** The pending memory restore to write, or null to clear one. */
  resume: ResumeRequest | null;
}

/** A memory restore waiting for the next run (`resume.json`). */
export interface ResumeRequest {
  tag: string;
  /** The machine-state file to start from. */
  state: string;
  engine: string;
}

async function applyJournal(bundle: Bundle, j: RestoreJournal): Promise<void> {
  for (const [from, to] of j.renames) {
    try {
      await Deno.rename(from, to);
    } catch (e) {
      // Already renamed by a run that was killed after it: fine.
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  // A suspended state belongs to the disks it was saved with, which are gone now.
  await Deno.remove(bundle.savedStatePath).catch(() => {});
  if (j.resume) {
    await writeFileAtomic(bundle.resumeRequestPath, JSON.stringify(j.resume, null, 2) + "\n");
  } else await Deno.remove(bundle.resumeRequestPath).catch(() => {});
  await Deno.remove(bundle.restoreJournalPath);
}

/** Reads a pending memory restore, if any. */
export async function readResumeRequest(bundle: Bundle): Promise<ResumeRequest | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(bundle.resumeRequestPath)) as ResumeRequest;
  } catch {
    return undefined;
  }
}

/** Clears a pending memory restore. */
export async function clearResumeRequest(bundle: Bundle): Promise<void> {
  await Deno.remove(bundle.resumeRequestPath).catch(() => {});
}

/** Options of {@link restoreStopped}. */
export interface RestoreOptions {
  /** Restore the disks (and firmware variables) only, even from a snapshot with memory. */
  diskOnly?: boolean;
  /** Test seam: called at `disk-copy`, `before-swap` and `swap`. */
  hook?: (phase: string) => Promise<void>;
}

/** What a restore did. */
export interface RestoreResult {
  name: string;
  tag: string;
  /** True when the next run resumes the snapshot's memory. */
  memory: boolean;
}

/**
 * Restores snapshot `tag` of a stopped VM (hold the bundle lock): the disks
 * and firmware files are replaced by copy-on-write copies of the snapshot's,
 * and with memory a
 * resume request makes the next run start from the snapshot's state. The
 * snapshot itself stays as it was.
 */
export async function restoreStopped(
  bundle: Bundle,
  tag: string,
  currentSpec: VmSpec,
  engine: string,
  opts: RestoreOptions = {},
): Promise<RestoreResult> {
  const meta = await readMeta(bundle, tag);
  await recoverBundle(bundle);
  const memory = meta.memory && !opts.diskOnly;
  if (memory) {
    const diff = specDifferences(meta.spec, currentSpec);
    if (meta.engine !== engine) diff.unshift("engine");
    if (diff.length) {
      throw new CoveError(
        "snapshot.spec_mismatch",
        `cannot restore the memory of snapshot '${tag}' of '${bundle.name}': ${
          diff.join(", ")
        } differ${diff.length === 1 ? "s" : ""} from when it was taken`,
        {
          hint: "set them back with 'cove set', or restore the disks only with --disk-only",
          exit: ExitCode.Usage,
        },
      );
    }
  }
  const dir = bundle.snapshotDir(tag);
  const renames: [string, string][] = [];
  try {
    for (const d of meta.disks) {
      const target = bundle.resolve(currentSpec.disks[d.index]?.path ?? d.path);
      const tmp = bundle.restoreTempPath(target);
      await opts.hook?.("disk-copy");
      await cloneSynced(join(dir, d.file), tmp);
      renames.push([tmp, target]);
    }
    // The firmware's variables go back with the disks they were taken with (under the same
    // boot loader: another loader's files are not these).
    const now = bundle.firmwareFiles(currentSpec);
    const sameLoader = meta.spec.boot.loader === currentSpec.boot.loader;
    for (const [i, f] of (sameLoader ? meta.firmware ?? [] : []).entries()) {
      const target = bundle.resolve(now[i] ?? f.path);
      const tmp = bundle.restoreTempPath(target);
      await cloneSynced(join(dir, f.file), tmp);
      renames.push([tmp, target]);
    }
    await opts.hook?.("before-swap");
    const journal: RestoreJournal = {
      renames,
      resume: memory
        ? { tag, state: join(dir, bundle.snapshotStateName), engine: meta.engine }
        : null,
    };
    await writeFileAtomic(bundle.restoreJournalPath, JSON.stringify(journal, null, 2) + "\n");
  } catch (e) {
    for (const [tmp] of renames) await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  await opts.hook?.("swap");
  await applyJournal(bundle, JSON.parse(await Deno.readTextFile(bundle.restoreJournalPath)));
  return { name: bundle.name, tag, memory };
}

/** Copies `src` to `dst` (copy-on-write where it can) and syncs it, before a rename puts it in place. */
async function cloneSynced(src: string, dst: string): Promise<void> {
  await cloneFile(src, dst);
  const f = await Deno.open(dst, { read: true, write: true });
  try {
    await f.sync();
  } finally {
    f.close();
  }
}

/** Removes snapshots; every tag must exist (nothing is removed otherwise). */
export async function removeSnapshots(bundle: Bundle, tags: string[]): Promise<string[]> {
  for (const t of tags) validateTag(t);
  for (const t of tags) if (!(await snapshotExists(bundle, t))) throw notFound(bundle, t);
  const pending = await readResumeRequest(bundle);
  for (const t of tags) {
    // One rename retires it: it is never half listed.
    const trash = bundle.snapshotTrashDir();
    await Deno.rename(bundle.snapshotDir(t), trash);
    await Deno.remove(trash, { recursive: true }).catch(() => {});
    if (pending?.tag === t) await clearResumeRequest(bundle);
  }
  return tags;
}
