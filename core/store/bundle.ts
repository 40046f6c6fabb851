/**
 * A VM bundle: the directory `$COVE_HOME/vms/NAME/` and the files it owns
 * (spec, disks, cloud-init seed, machine identity, engine state, saved
 * state, console and supervisor logs, control socket, lock). This module
 * is the only code that spells these file names ({@link BUNDLE_FILES});
 * everything else asks a {@link Bundle} for a path.
 *
 * A VM is running exactly when its supervisor holds the exclusive record
 * lock on the bundle's `lock` file (an open file description lock on
 * Linux, a POSIX record lock on macOS; see ffi/libc.ts): no pid files, and
 * a dead supervisor releases its lock with its last breath. The holder
 * writes `{pid, purpose}` into the file, so anyone can ask who holds the
 * lock and why ({@link Bundle.holder}) without taking it: probes race
 * nothing, and `cove list` changes nothing on disk.
 *
 * Listing reads no more than it needs: beside the spec lies its summary
 * (`summary.json`): what the spec parsed and validated to, with the text
 * it was made from. `cove list` and `cove get` use it instead of loading
 * the YAML parser and the validator when cove.yaml still holds that text
 * and the summary was written by this cove version (run from source: with
 * these parser files) ({@link Bundle.readSpecSummarized}); so do the
 * supervisor that runs a VM and the snapshot commands, whose start would
 * otherwise spend more on loading the two than on anything else it does
 * before the engine starts. Comparing the text itself (a spec
 * is well under a page) rather than the file's mtime, size and inode
 * cannot miss an edit, even one in place within the same tick. Every write
 * of the spec ({@link Bundle.writeSpec}: create, set, edit, clone, pull,
 * resize) rewrites the summary atomically, from the file as written. A
 * reader that finds it missing, corrupt or stale (a spec edited by hand)
 * parses the spec in full and writes nothing: reads stay read-only; the
 * next command that writes the store (create, clone, delete: `Store.sweep`
 * in ./store.ts) rewrites every stale summary. A summary is only ever used
 * for the text it describes, so no race of writers can make it lie: at
 * worst it is stale, and a read parses in full.
 * @module
 */
import { dirname, isAbsolute, join, normalize } from "node:path";
import type { VmPaths } from "../../engines/engine.ts";
import {
  ENOENT,
  LibcError,
  lockClose,
  lockHeld,
  lockOpen,
  lockTry,
  lockWrite,
  pathExists,
} from "../../ffi/libc.ts";
import { CoveError, ExitCode } from "../errors.ts";
import { applyDefaults } from "../spec/defaults.ts";
import type { SpecParsed, VmSpec } from "../spec/schema.ts";
import { detectHost } from "../host.ts";
import { VERSION } from "../version.ts";
import { writeFileAtomic } from "./fsutil.ts";

/** Every file name of a bundle, defined once. */
export const BUNDLE_FILES = {
  /** The spec: the only file a person edits. */
  spec: "cove.yaml",
  /** The lock whose holder runs (or pushes, clones, deletes) the VM. */
  lock: "lock",
  /** The lock of read-modify-writes of the spec. */
  specLock: "cove.yaml.lock",
  /** What the spec parsed to, and from which text ({@link Bundle.readSpecSummarized}). */
  summary: "summary.json",
  /** Machine identity (uuid, VZ machine identifier and hardware model). */
  machine: "machine.json",
  /** The default root disk. */
  rootDisk: "disk.img",
  /** The default EFI variable store. */
  efiVars: "efi-vars.fd",
  /** The Mac auxiliary storage of a macOS guest (vz; Tart's nvram layer). */
  auxStorage: "auxiliary-storage",
  /** An installer ISO downloaded from a URL (`--from https://.../x.iso`), which the VM boots. */
  installerIso: "installer.iso",
  /** The cloud-init NoCloud seed, and the hash of what it was made from. */
  seedDisk: "cidata.iso",
  seedState: "cidata.json",
  /** The serial console log of the current or last run. */
  consoleLog: "console.log",
  /** The supervisor's log. */
  supervisorLog: "supervisor.log",
  /** How the last run ended. */
  lastExit: "last-exit.json",
  /** The supervisor's control socket (or a symlink to it). */
  controlSocket: "control.sock",
  /** Engine runtime files (QMP socket, ...), or a symlink to them. */
  runtimeDir: "run",
  /** Saved machine state: the VM is suspended while it exists. */
  savedState: "state.vzvmsave",
  /** The pid of the process that runs the guest, recorded by the engine. */
  enginePid: "engine.pid",
  /** Marks a clone made by `cove run --ephemeral`. */
  ephemeral: "ephemeral",
  /** The VM's snapshots, one directory each: `snapshots/TAG/`. */
  snapshots: "snapshots",
  /** A snapshot's record (spec, time, memory, allocated bytes), inside its directory. */
  snapshotMeta: "snapshot.json",
  /** A snapshot's machine state, inside its directory. */
  snapshotState: "memory.state",
  /** The journal of a snapshot restore's renames: present means "finish these renames". */
  restoreJournal: "restore-journal.json",
  /** A pending memory restore: the next run resumes from the state it names. */
  resumeRequest: "resume.json",
  /** A macOS guest's first-account password, kept (0600) only until its first boot is done. */
  provisionPassword: "provision-password",
  /** How and where a macOS guest was installed (restore image, host identity): its iCloud answer. */
  installRecord: "install.json",
  /** The guest's SSH host keys cove pinned (dropped when the seed gives it a new instance). */
  knownHosts: "known_hosts",
} as const;

/** Files that belong to one running instance, never copied by clone. */
export const INSTANCE_FILES: ReadonlySet<string> = new Set([
  BUNDLE_FILES.ephemeral,
  BUNDLE_FILES.lock,
  BUNDLE_FILES.specLock,
  BUNDLE_FILES.controlSocket,
  BUNDLE_FILES.consoleLog,
  BUNDLE_FILES.supervisorLog,
  BUNDLE_FILES.lastExit,
  BUNDLE_FILES.runtimeDir,
  BUNDLE_FILES.savedState,
  BUNDLE_FILES.enginePid,
  BUNDLE_FILES.restoreJournal,
  BUNDLE_FILES.resumeRequest,
  // A clone never gets the first account's password.
  BUNDLE_FILES.provisionPassword,
]);

/**
 * Files cove itself writes in a bundle: a disk may not be one of them (a
 * guest must never be able to rewrite its own spec or cove's state).
 */
export const OWNED_FILES: ReadonlySet<string> = new Set([
  ...INSTANCE_FILES,
  BUNDLE_FILES.spec,
  BUNDLE_FILES.summary,
  BUNDLE_FILES.machine,
  BUNDLE_FILES.seedState,
  BUNDLE_FILES.installRecord,
  BUNDLE_FILES.knownHosts,
]);

/** Names a disk may not take: cove's own files, and the engine's state. */
const NOT_DISKS: ReadonlySet<string> = new Set([
  ...OWNED_FILES,
  BUNDLE_FILES.snapshots,
  BUNDLE_FILES.efiVars,
  BUNDLE_FILES.auxStorage,
]);

/** Names a variable store may not take: those a disk may not, but efi-vars.fd, its default. */
const NOT_VARIABLE_STORES: ReadonlySet<string> = new Set(
  [...NOT_DISKS].filter((n) => n !== BUNDLE_FILES.efiVars),
);

/** Where a disk of the spec is, and whether cove may create or grow it. */
export interface DiskLocation {
  /** The absolute path. */
  path: string;
  /** Inside the bundle: cove creates and grows it. Outside: never resized. */
  inside: boolean;
  /** True when the file exists. */
  exists: boolean;
}

/**
 * Refuses a path cove should not trust (ssh's StrictModes): one owned by
 * another user, or writable by group or others. `what` names it in the
 * line ("COVE_HOME", "the VM directory").
 */
// deno-lint-ignore require-await -- synchronous file calls inside (no thread hop), async to callers
export async function assertPrivatePath(path: string, what: string): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(path); // once per VM in `cove list`: no thread hop
  } catch {
    return; // not there: nothing to trust yet
  }
  const me = myUid();
  const foreign = me !== null && st.uid !== null && st.uid !== me;
  const why = foreign
    ? `is owned by uid ${st.uid}, not by you (uid ${me})`
    : st.mode !== null && (st.mode & 0o022) !== 0
    ? `is writable by other users (mode ${(st.mode & 0o777).toString(8)})`
    : "";
  if (why) {
    throw new CoveError("home.unsafe", `refusing to use ${what} ${path}: it ${why}`, {
      hint: foreign
        ? "another user could change what cove runs as you: use a COVE_HOME of your own"
        : `another user could change what cove runs as you: chmod 700 ${path}`,
      exit: ExitCode.Host,
    });
  }
}

let uid: number | null | undefined;
/** Deno.uid(), asked once (`cove list` checks every VM's directory). */
function myUid(): number | null {
  if (uid === undefined) uid = Deno.uid();
  return uid;
}

/** Why a lock is held. */
export type LockPurpose = "run" | "push" | "clone" | "delete" | "change" | "create";

/** Who holds a bundle's lock, as it wrote into the lock file. */
export interface LockHolder {
  /** The holder's pid (undefined in the instant before it wrote it). */
  pid?: number;
  purpose: LockPurpose;
}

/** The state of a bundle on disk, without asking its supervisor. */
export interface BundleState {
  /**
   * running: a supervisor holds the lock; busy: another command (a push)
   * holds it; suspended: its machine state is saved; broken: its spec
   * cannot be read.
   */
  state: "running" | "busy" | "suspended" | "stopped" | "broken";
  /** The supervisor's (or the busy command's) pid. */
  pid?: number;
  /** What the busy command does (push, clone, ...). */
  purpose?: LockPurpose;
  /** Why it is broken. */
  error?: string;
}

/**
 * Takes the record lock of `path` once (creating the file), writing
 * `{pid, purpose}` into it; null when another holder has it. POSIX record
 * locks (macOS) belong to the process, and closing any descriptor of the
 * file drops them: so a lock file this process holds is never opened again
 * ({@link heldHere}), which also makes a second lock in this process fail,
 * as it does across processes.
 */
async function takeLock(path: string, purpose: LockPurpose): Promise<BundleLock | null> {
  const before = await Deno.stat(path).catch(() => undefined);
  if (before && heldHere.has(fileKey(before))) return null;
  let fd: number;
  try {
    fd = lockOpen(path);
  } catch (e) {
    throw lockError(e, path);
  }
  let key: string;
  try {
    if (!lockTry(fd)) {
      lockClose(fd);
      return null;
    }
    // Who holds it goes in at once: a probe that finds the lock held reads this text.
    lockWrite(fd, JSON.stringify({ pid: Deno.pid, purpose }) + "\n");
    key = fileKey(await Deno.stat(path));
  } catch (e) {
    lockClose(fd);
    throw lockError(e, path);
  }
  heldHere.set(key, purpose);
  let held = true;
  return {
    release() {
      if (!held) return;
      held = false;
      heldHere.delete(key);
      // Emptied before it is let go, so the next holder is never read as this one.
      try {
        lockWrite(fd, "");
      } catch { /* the unlock below is what counts */ }
      lockClose(fd);
    },
  };
}

/** The layout of `summary.json`; a summary of another layout or cove version is stale. */
const SUMMARY_FORMAT = 1;

let parserStampMemo: string | undefined;

/**
 * What a summary's parse depends on besides the text: the cove version and,
 * when cove runs from its sources, the size and mtime of the parser's own
 * files, so that an edit of the schema in a checkout makes every summary
 * stale even though the version stays the same.
 */
function parserStamp(): string {
  if (parserStampMemo !== undefined) return parserStampMemo;
  let stamp = VERSION;
  if (!Deno.build.standalone) {
    for (const f of ["../spec/schema.ts", "../spec/load.ts"]) {
      try {
        const st = Deno.statSync(new URL(f, import.meta.url));
        stamp += ` ${st.size}@${st.mtime?.getTime() ?? 0}`;
      } catch { /* not a local file (a remote import): the version alone */ }
    }
  }
  return (parserStampMemo = stamp);
}

/** The content of `summary.json`. */
interface SpecSummary {
  format: number;
  /** The cove (and parser) that wrote it, {@link parserStamp}: another may validate differently. */
  cove: string;
  /** The text of the cove.yaml it was made from. */
  text: string;
  /** What parsing and validating that text gave. */
  parsed: SpecParsed;
}

/** How long a probe rereads a held lock whose holder has not written who it is yet. */
const HOLDER_TEXT_WAIT_MS = 200;

/** Blocks this thread for `ms` (the lock probe is synchronous on purpose; see {@link Bundle.holder}). */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Locks this process holds, by the lock file's device and inode (see {@link Bundle.tryLock}). */
const heldHere = new Map<string, LockPurpose>();

function fileKey(st: Deno.FileInfo): string {
  return `${st.dev}:${st.ino}`;
}

function lockError(e: unknown, path: string): Error {
  if (e instanceof LibcError) {
    return new CoveError("vm.lock", `cannot use the lock ${path}: ${e.message}`, {
      exit: ExitCode.Host,
      cause: e,
    });
  }
  return e instanceof Error ? e : new Error(String(e));
}

/** Machine identity kept in `machine.json`; a clone gets a new one. */
export interface MachineIdentity {
  /** SMBIOS/system UUID for qemu, and cove's own identity of the machine. */
  uuid: string;
  /** VZGenericMachineIdentifier / VZMacMachineIdentifier dataRepresentation, base64. */
  vzMachineIdentifier?: string;
  /** VZMacHardwareModel dataRepresentation, base64 (macOS guests). */
  vzHardwareModel?: string;
  /** When the VM was created (ISO 8601). */
  created: string;
}

/** A held bundle lock; release it, or let the process exit. */
export interface BundleLock {
  release(): void;
}

/** The files of one VM. */
export class Bundle {
  /** `join(dir, "")` with its slash, so a file's path is one concatenation (list asks for many). */
  readonly #prefix: string;
  constructor(readonly name: string, readonly dir: string) {
    this.#prefix = join(dir, "x").slice(0, -1);
  }

  /** The path of one of the bundle's files (as `join(dir, file)`). */
  file(name: keyof typeof BUNDLE_FILES): string {
    return this.#prefix + BUNDLE_FILES[name];
  }

  /** True when one of the bundle's files exists (without the cost of a stat that throws). */
  has(name: keyof typeof BUNDLE_FILES): boolean {
    return pathExists(this.file(name));
  }
  get specPath(): string {
    return this.file("spec");
  }
  get lockPath(): string {
    return this.file("lock");
  }
  get machinePath(): string {
    return this.file("machine");
  }
  get consoleLog(): string {
    return this.file("consoleLog");
  }
  get controlSocket(): string {
    return this.file("controlSocket");
  }
  get supervisorLog(): string {
    return this.file("supervisorLog");
  }
  get lastExitPath(): string {
    return this.file("lastExit");
  }
  get runtimeDir(): string {
    return this.file("runtimeDir");
  }
  get savedStatePath(): string {
    return this.file("savedState");
  }
  get enginePidPath(): string {
    return this.file("enginePid");
  }
  get ephemeralMark(): string {
    return this.file("ephemeral");
  }

  /**
   * Checks where disk `i` of a spec may live, as one line when it may not:
   * a relative path stays inside the bundle and names no file cove keeps
   * there (a guest must never be able to rewrite its own spec); an absolute
   * path is an existing file (never resized) or a new one in a directory of
   * yours that nobody else can write.
   */
  diskLocation(d: { path: string }, i: number): Promise<DiskLocation> {
    return this.#location(d.path, `disks[${i}].path`, NOT_DISKS, "disk");
  }

  /**
   * The same rules for an EFI variable store (`boot.variableStore`), which
   * the firmware writes and snapshots restore: it may be `efi-vars.fd`, but
   * no other file cove keeps.
   */
  variableStoreLocation(path: string): Promise<DiskLocation> {
    return this.#location(path, "boot.variableStore", NOT_VARIABLE_STORES, "variable store");
  }

  async #location(
    file: string,
    field: string,
    forbidden: ReadonlySet<string>,
    noun: string,
  ): Promise<DiskLocation> {
    const bad = (why: string, hint: string) =>
      new CoveError("disk.path", `${field}: '${file}' ${why}`, { hint, exit: ExitCode.Usage });
    if (file === "") throw bad("is empty", "give a file name");
    if (!isAbsolute(file)) {
      const rel = normalize(file);
      if (rel === ".." || rel.startsWith("../") || rel === "." || isAbsolute(rel)) {
        throw bad(
          "leaves the VM's directory",
          "use a file name inside the VM's directory, or an absolute path",
        );
      }
      if (forbidden.has(rel.split("/")[0])) {
        throw bad("is a file cove keeps in the VM's directory", `give the ${noun} another name`);
      }
      const path = join(this.dir, rel);
      let exists = false;
      try {
        const real = await Deno.realPath(path);
        const home = await Deno.realPath(this.dir);
        if (!real.startsWith(home + "/")) {
          throw bad("leads out of the VM's directory (a symlink)", "use a plain file");
        }
        exists = true;
      } catch (e) {
        if (e instanceof CoveError) throw e;
      }
      return { path, inside: true, exists };
    }
    try {
      const st = await Deno.stat(file);
      if (!st.isFile && !st.isBlockDevice) {
        throw bad("is not a file", "give an image file or a block device");
      }
      // An absolute path into this bundle follows the rules of a relative one.
      const real = await Deno.realPath(file);
      const home = await Deno.realPath(this.dir);
      if (real.startsWith(home + "/")) {
        const rel = real.slice(home.length + 1);
        if (forbidden.has(rel.split("/")[0])) {
          throw bad("is a file cove keeps in the VM's directory", `give the ${noun} another name`);
        }
        return { path: file, inside: true, exists: true };
      }
      return { path: file, inside: false, exists: true };
    } catch (e) {
      if (e instanceof CoveError) throw e;
    }
    const parent = dirname(file);
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(parent);
    } catch {
      throw bad("does not exist, nor does its directory", "create the directory first");
    }
    const me = Deno.uid();
    if (!st.isDirectory) throw bad("is in something that is not a directory", "fix the path");
    if ((me !== null && st.uid !== me) || (st.mode !== null && (st.mode & 0o022) !== 0)) {
      throw bad(
        `does not exist, and cove creates new disks only in directories of yours that others cannot write (${parent} is not)`,
        "create the image yourself, or put it in a directory of yours",
      );
    }
    return { path: file, inside: false, exists: false };
  }

  /**
   * Checks every disk of a spec with {@link diskLocation}, and an EFI boot's
   * variable store with {@link variableStoreLocation}.
   */
  async checkDisks(
    spec: { disks: { path: string }[]; boot?: { loader?: string; variableStore?: string } },
  ): Promise<DiskLocation[]> {
    const out: DiskLocation[] = [];
    for (const [i, d] of spec.disks.entries()) out.push(await this.diskLocation(d, i));
    if (spec.boot?.loader === "efi" && spec.boot.variableStore) {
      await this.variableStoreLocation(spec.boot.variableStore);
    }
    return out;
  }

  /** The directory of the VM's snapshots: `snapshots/TAG/`. */
  get snapshotsDir(): string {
    return join(this.dir, BUNDLE_FILES.snapshots);
  }
  /** One snapshot's directory. */
  snapshotDir(tag: string): string {
    return join(this.snapshotsDir, tag);
  }
  /** A snapshot's record (spec, time, memory, allocated bytes). */
  snapshotMetaPath(tag: string): string {
    return join(this.snapshotDir(tag), SNAPSHOT_META);
  }
  /** The file name of a snapshot's record inside its directory. */
  get snapshotMetaName(): string {
    return SNAPSHOT_META;
  }
  /** The file name of a snapshot's machine state inside its (staging) directory. */
  get snapshotStateName(): string {
    return BUNDLE_FILES.snapshotState;
  }
  /** The file name of the copy of `disks[i]` inside a snapshot's (staging) directory. */
  snapshotDiskName(i: number): string {
    return `disk${i}.img`;
  }
  /** The file name of the copy of the VM's i-th firmware file ({@link firmwareFiles}) in a snapshot. */
  snapshotFirmwareName(i: number): string {
    return `firmware${i}`;
  }
  /**
   * The files the guest's firmware writes while it runs, as the spec names
   * them: the EFI variable store of an EFI boot, the auxiliary storage (NVRAM)
   * of a Mac. A snapshot, a clone and a push take them with the disks, at the
   * same paused instant.
   */
  firmwareFiles(spec: VmSpec): string[] {
    if (spec.boot.loader === "efi") return [spec.boot.variableStore ?? BUNDLE_FILES.efiVars];
    if (spec.boot.loader === "macos") return [BUNDLE_FILES.auxStorage];
    return [];
  }
  /** The file a copy of `disks[i]` from outside the bundle takes in a clone or push copy of it. */
  copiedDiskName(i: number): string {
    return `disk${i}-copy.img`;
  }
  /** A new staging directory for a snapshot being made (renamed to `snapshots/TAG` when complete). */
  snapshotStagingDir(): string {
    return join(this.snapshotsDir, `${SNAPSHOT_STAGING_PREFIX}${crypto.randomUUID()}`);
  }
  /** A directory name a removed snapshot is renamed to before it is deleted. */
  snapshotTrashDir(): string {
    return join(this.snapshotsDir, `${SNAPSHOT_TRASH_PREFIX}${crypto.randomUUID()}`);
  }
  /** A hidden name for a frozen copy of the disks that a clone or push of the running VM takes. */
  snapshotCopyTag(): string {
    return `${SNAPSHOT_COPY_PREFIX}${crypto.randomUUID()}`;
  }
  /** True for the name of such a copy (also {@link isSnapshotScratch}). */
  isSnapshotCopy(name: string): boolean {
    return name.startsWith(SNAPSHOT_COPY_PREFIX);
  }
  /** True for names in snapshots/ that are not (complete) snapshots. */
  isSnapshotScratch(name: string): boolean {
    return name.startsWith(".");
  }
  /** A temporary copy of a snapshot disk next to the disk it will replace. */
  restoreTempPath(diskPath: string): string {
    return join(dirname(diskPath), `.restore-${crypto.randomUUID()}.tmp`);
  }
  /** True for the bundle's leftover restore temporaries. */
  isRestoreTemp(name: string): boolean {
    return /^\.restore-[0-9a-f-]{36}\.tmp$/.test(name);
  }
  /** The journal of a restore's renames: present means "finish these renames". */
  get restoreJournalPath(): string {
    return join(this.dir, BUNDLE_FILES.restoreJournal);
  }
  /** A pending memory restore: the next run resumes from the state it names. */
  get resumeRequestPath(): string {
    return join(this.dir, BUNDLE_FILES.resumeRequest);
  }
  /** The guest agent channel's socket, in a runtime directory (the bundle's or a short one). */
  agentSocketIn(runtimeDir: string): string {
    return join(runtimeDir, "agent.sock");
  }
  get agentSocket(): string {
    return this.agentSocketIn(this.runtimeDir);
  }
  /**
   * macOS guests: the first account's password (0600), kept only until the
   * first boot has provisioned the guest and cove's key is installed.
   */
  get provisionPasswordPath(): string {
    return this.file("provisionPassword");
  }
  /**
   * macOS guests: how and where macOS was installed (restore image, host
   * identity hash, time) and how far first-boot provisioning got.
   */
  get installRecordPath(): string {
    return this.file("installRecord");
  }
  /** The guest's pinned SSH host keys (cove ssh, exec, cp over ssh). */
  get knownHostsPath(): string {
    return this.file("knownHosts");
  }

  /** Resolves a path from the spec (relative paths are inside the bundle). */
  resolve(p: string): string {
    return p.startsWith("/") ? p : join(this.dir, p);
  }

  /** The paths an engine may use. */
  vmPaths(): VmPaths {
    return {
      dir: this.dir,
      consoleLog: this.consoleLog,
      runtimeDir: this.runtimeDir,
      machine: this.machinePath,
      savedState: this.savedStatePath,
      auxStorage: this.file("auxStorage"),
      efiVars: this.file("efiVars"),
      enginePid: this.enginePidPath,
      agentSocket: this.agentSocket,
    };
  }

  /** Reads and validates cove.yaml, without defaults. */
  async readParsedSpec(): Promise<SpecParsed> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.specPath);
    } catch (e) {
      throw new CoveError("vm.broken", `VM '${this.name}' has no readable cove.yaml`, {
        hint: `restore ${this.specPath} or delete the VM`,
        cause: e,
      });
    }
    // The parser (yaml, zod) loads when a spec is first read: listing names or probing needs none.
    const { parseSpec } = await import("../spec/load.ts");
    return parseSpec(text, this.specPath);
  }

  /** Reads cove.yaml with every default applied for this host. */
  async readSpec(): Promise<VmSpec> {
    return applyDefaults(await this.readParsedSpec(), detectHost(), this.name);
  }

  /**
   * What {@link readSpec} gives, read from the summary when it is fresh
   * (without loading the YAML parser or the validator), else from the spec
   * in full. Writes nothing, even when the summary is stale. For showing a
   * VM (`list`, `get`) and for running it (the supervisor, snapshots): a
   * fresh summary is what this very parser gave for this very text
   * ({@link parserStamp}), so it stands for the parse, and a spec edited
   * by hand is parsed (and refused if it does not validate) as ever.
   */
  async readSpecSummarized(): Promise<VmSpec> {
    const parsed = this.freshSummary();
    if (parsed) return applyDefaults(parsed, detectHost(), this.name);
    return await this.readSpec();
  }

  /** The parsed spec of a summary that describes cove.yaml as it is now, or undefined. */
  freshSummary(): SpecParsed | undefined {
    try {
      // Small files, once per VM per list: the synchronous calls skip a thread hop each.
      const text = Deno.readTextFileSync(this.specPath);
      const s = JSON.parse(Deno.readTextFileSync(this.file("summary"))) as Partial<SpecSummary>;
      if (s.format !== SUMMARY_FORMAT || s.cove !== parserStamp() || s.text !== text) {
        return undefined;
      }
      const p = s.parsed;
      return p && typeof p === "object" && !Array.isArray(p) ? p : undefined;
    } catch {
      return undefined; // missing, unreadable or corrupt: parse the spec instead
    }
  }

  /**
   * Writes the summary of cove.yaml as it is now: reads and validates the
   * file and records what that gave with the text it came from. A spec
   * that does not validate gets none (a reader then parses it in full, and
   * says what is wrong with it).
   */
  async writeSummary(): Promise<void> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.specPath);
    } catch {
      return;
    }
    const { parseSpec } = await import("../spec/load.ts");
    let parsed: SpecParsed;
    try {
      parsed = parseSpec(text, this.specPath);
    } catch {
      return;
    }
    const summary: SpecSummary = { format: SUMMARY_FORMAT, cove: parserStamp(), text, parsed };
    await writeFileAtomic(this.file("summary"), JSON.stringify(summary) + "\n");
  }

  /** Writes cove.yaml atomically (0600), and its summary. */
  async writeSpec(spec: SpecParsed | VmSpec): Promise<void> {
    await writeFileAtomic(this.specPath, await specYaml(spec));
    // The spec is written: a summary that cannot be (a full disk) only makes reads parse in full.
    await this.writeSummary().catch(() => {});
  }

  async readMachine(): Promise<MachineIdentity> {
    return JSON.parse(await Deno.readTextFile(this.machinePath)) as MachineIdentity;
  }

  async writeMachine(m: MachineIdentity): Promise<void> {
    await writeFileAtomic(this.machinePath, JSON.stringify(m, null, 2) + "\n");
  }

  /**
   * Tries to take the exclusive lock, once: null when another process (or
   * another lock in this process) holds it. Nothing retries, because
   * nothing else ever takes the lock just to look: probes use
   * {@link holder}. The holder writes its pid and `purpose` into the file.
   */
  async tryLock(opts: { purpose?: LockPurpose } = {}): Promise<BundleLock | null> {
    return await takeLock(this.lockPath, opts.purpose ?? "run");
  }

  /**
   * Runs `fn` holding the spec lock (`cove.yaml.lock`, apart from the run
   * lock: a running VM's spec may change for its next start), so that
   * concurrent read-modify-writes of cove.yaml never lose an update. Waits
   * for another writer at most `waitMs`.
   */
  async withSpecLock<T>(fn: () => Promise<T>, waitMs = 10_000): Promise<T> {
    const deadline = Date.now() + waitMs;
    let lock = await takeLock(this.file("specLock"), "change");
    while (!lock) {
      if (Date.now() > deadline) {
        throw new CoveError("vm.spec_locked", `the spec of '${this.name}' is being changed`, {
          hint: "another 'cove set' or 'cove edit' is running; retry when it is done",
          exit: ExitCode.State,
        });
      }
      await new Promise((r) => setTimeout(r, 10 + Math.random() * 20));
      lock = await takeLock(this.file("specLock"), "change");
    }
    try {
      return await fn();
    } finally {
      lock.release();
    }
  }

  /**
   * Who holds the lock, without taking it (F_OFD_GETLK / lockf F_TEST);
   * null when nobody does. Creates nothing: a bundle without a lock file
   * is not held.
   */
  // deno-lint-ignore require-await -- synchronous file calls inside (no thread hop), async to callers
  async holder(): Promise<LockHolder | null> {
    // Synchronous file calls: `cove list` probes every VM, and each async call is a thread hop.
    let st: Deno.FileInfo;
    try {
      st = Deno.statSync(this.lockPath);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
    const mine = heldHere.get(fileKey(st));
    if (mine) return { pid: Deno.pid, purpose: mine };
    let fd: number;
    try {
      fd = lockOpen(this.lockPath, false);
    } catch (e) {
      // Gone since the stat (a delete retired the bundle): nobody holds it.
      if (e instanceof LibcError && e.errno === ENOENT) return null;
      throw lockError(e, this.lockPath);
    }
    // A holder writes who it is right after it locks, and empties the file before it lets go:
    // an empty or half-written text means "locked, or let go, an instant ago". So read again
    // for a moment, asking each time whether it is still held, before taking it for a
    // supervisor (an older cove wrote nothing).
    const deadline = Date.now() + HOLDER_TEXT_WAIT_MS;
    try {
      for (;;) {
        let held: boolean;
        try {
          held = lockHeld(fd);
        } catch (e) {
          throw lockError(e, this.lockPath);
        }
        if (!held) return null;
        try {
          const v = JSON.parse(Deno.readTextFileSync(this.lockPath)) as Partial<LockHolder>;
          return {
            pid: typeof v.pid === "number" && v.pid > 0 ? v.pid : undefined,
            purpose: v.purpose ?? "run",
          };
        } catch {
          if (Date.now() >= deadline) return { purpose: "run" };
          sleepSync(2);
        }
      }
    } finally {
      lockClose(fd);
    }
  }

  /** True when a supervisor holds the bundle lock (a probe: takes nothing). */
  async isRunning(): Promise<boolean> {
    return (await this.holder())?.purpose === "run";
  }

  /**
   * Running, busy, suspended, stopped or broken, and by which pid, from the
   * disk alone (the supervisor's live state is {@link ../supervisor/live.ts}).
   */
  async state(): Promise<BundleState> {
    let h: LockHolder | null;
    try {
      h = await this.holder();
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      return { state: "broken", error: `cannot check whether it runs: ${msg}` };
    }
    if (h?.purpose === "run") return { state: "running", pid: h.pid };
    if (h) return { state: "busy", pid: h.pid, purpose: h.purpose };
    try {
      Deno.statSync(this.specPath);
    } catch {
      return { state: "broken", error: `it has no readable ${BUNDLE_FILES.spec}` };
    }
    const saved = this.has("savedState");
    return { state: saved ? "suspended" : "stopped" };
  }

  /** The pid the engine recorded for the process that runs the guest, if any. */
  async enginePid(): Promise<number | undefined> {
    try {
      const n = Number((await Deno.readTextFile(this.enginePidPath)).trim());
      return Number.isSafeInteger(n) && n > 0 ? n : undefined;
    } catch {
      return undefined;
    }
  }

  /** Throws a clear state error when the VM is running or busy. */
  async assertStopped(action: string): Promise<void> {
    const h = await this.holder();
    if (h) throw heldError(this.name, action, h);
  }
}

/** The error for an action on a bundle whose lock someone holds. */
export function heldError(name: string, action: string, h: LockHolder): CoveError {
  if (h.purpose === "run") {
    return new CoveError("vm.running", `cannot ${action} '${name}': it is running`, {
      hint: `stop it first with 'cove stop ${name}'`,
      exit: ExitCode.State,
    });
  }
  const what = {
    push: "a push",
    clone: "a clone",
    delete: "a delete",
    change: "a change of its disk or name",
    create: "a create",
    run: "a run",
  }[h.purpose] ?? `a ${h.purpose}`;
  return new CoveError("vm.busy", `cannot ${action} '${name}': busy: ${what} is in progress`, {
    hint: `wait for ${h.pid ? `pid ${h.pid}` : "it"} to finish, then retry`,
    exit: ExitCode.State,
  });
}

const SNAPSHOT_META = BUNDLE_FILES.snapshotMeta;
const SNAPSHOT_STAGING_PREFIX = ".staging-";
const SNAPSHOT_TRASH_PREFIX = ".trash-";
const SNAPSHOT_COPY_PREFIX = ".copy-";

/** The YAML text cove writes for a spec. */
export async function specYaml(spec: SpecParsed | VmSpec): Promise<string> {
  const { stringify } = await import("yaml");
  return "# cove VM spec: see 'cove schema' and the README's config reference\n" +
    stringify(spec, { lineWidth: 0 });
}
