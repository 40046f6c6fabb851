/**
 * cove as a library: the same capabilities as the `cove` command, typed.
 * The CLI in `cli/` is a client of these exports and of nothing else.
 *
 * Importing this module is cheap: it loads the store and the supervisor
 * client, but not the spec parser (zod, yaml), node:crypto, the registry (OCI) code,
 * the image sources, the supervisor itself or any engine. The functions
 * that need those import them when called (which is why the spec functions
 * here are async), so `cove` commands load only what they use, and nothing
 * loads a native library until a VM uses the vz engine.
 *
 * @example
 * ```ts
 * import { cloneVm, createVm, deleteVm, getVm, Store } from "./mod.ts";
 * const store = new Store(); // $COVE_HOME or ~/.cove
 * await createVm(store, "dev", { cpus: 2, memory: "4GiB", diskSize: "32GiB" });
 * console.log((await getVm(store, "dev")).spec.cpus); // 2
 * await cloneVm(store, "dev", "dev2");
 * await deleteVm(store, "dev2");
 * ```
 * @module
 */
import type { PulledImage, PullOptions, PushOptions, PushResult } from "./core/oci/mod.ts";
import type { LoginOptions } from "./core/oci/mod.ts";
import type { CreatedFromOci, CreateFromOciOptions } from "./core/oci/create.ts";
import type { RunOptions, RunResult, SupervisorStatus } from "./core/supervisor/supervisor.ts";
import type { StartOptions } from "./core/supervisor/start.ts";
import type { ResolvedSource, SourceOptions } from "./core/images/source.ts";
import type { SpecParsed, VmSpec } from "./core/spec/schema.ts";
import type { SpecFlags } from "./core/spec/compose.ts";
import type { AddressOptions, GuestAddress } from "./core/access/address.ts";
import type { VmAddress } from "./core/agent/address.ts";
import type { SshOptions } from "./core/access/ssh.ts";
import type { ConvertOptions, ConvertResult, ImageProbe } from "./core/images/qcow2.ts";
import type { Downloaded, DownloadOptions } from "./core/images/download.ts";
import type { CacheEntry } from "./core/images/cache.ts";
import type { PruneOptions, PruneResult } from "./core/images/cache.ts";
import type { Bundle } from "./core/store/bundle.ts";
import type { Store } from "./core/store/store.ts";
import { stopVm } from "./core/supervisor/client.ts";
import type { JobArtifact, JobOptions, JobRecord } from "./core/job/run.ts";
import type { SlotReport } from "./core/job/slots.ts";

export {
  CoveError,
  ERROR_CODES,
  type ErrorJson,
  ExitCode,
  toCoveError,
  usageError,
} from "./core/errors.ts";
export {
  formatDuration,
  formatSize,
  parseCount,
  parseDuration,
  parseSize,
  type Range,
  type SizeRange,
} from "./core/units.ts";
export {
  FLAG_RULES,
  type FlagName,
  flagRange,
  MIN_DISK,
  MIN_MEMORY,
  parseFlag,
} from "./core/flags.ts";
export { checkPoolSize, type PoolTask, runPool } from "./core/pool.ts";
export { VERSION } from "./core/version.ts";
export { detectHost } from "./core/host.ts";
export type {
  NetworkSpec,
  PortForwardSpec,
  SpecInput,
  SpecParsed,
  VmSpec,
} from "./core/spec/schema.ts";
export type { SpecError } from "./core/spec/load.ts";
export { applyDefaults } from "./core/spec/defaults.ts";
export type { SpecFlags } from "./core/spec/compose.ts";
export { coveHome, randomMac, Store, validateName, type VmSummary } from "./core/store/store.ts";
export { Bundle, type BundleLock, type MachineIdentity } from "./core/store/bundle.ts";
export { cloneFile } from "./core/store/fsutil.ts";
export { concatBytes } from "./core/bytes.ts";
export {
  cloneVm,
  type CloneVmOptions,
  copyNote,
  createVm,
  type CreateVmOptions,
  type FirstBootEvent,
  getVm,
  type GetVmOptions,
  kernelBootNote,
  type RegistryFlags,
  setVm,
  type SetVmOptions,
  showSize,
  type VmDetails,
} from "./core/vm.ts";
export { doctor, type DoctorReport, doctorText, versionInfo } from "./core/doctor.ts";
export type {
  Capabilities,
  Engine,
  EngineEvent,
  EngineId,
  ExitInfo,
  HostInfo,
  RunningVm,
  StartRequest,
  VmState,
} from "./engines/engine.ts";
export { loadEngine, resolveEngineId } from "./engines/select.ts";
export type { RunOptions, RunResult } from "./core/supervisor/supervisor.ts";
export { describeEvent, type SupervisorEvent } from "./core/supervisor/events.ts";
export type { StartOptions } from "./core/supervisor/start.ts";
export {
  attachConsole,
  type ConsoleStream,
  pauseVm,
  resumeVm,
  type StopOptions,
  type StopResult,
  stopVm,
  suspendVm,
  vmForwards,
  vmStatus,
} from "./core/supervisor/client.ts";
export {
  type ActiveForward,
  formatForward,
  type ForwardOrigin,
  parseForwardFlag,
} from "./core/net/forwards.ts";
export { type ForwardProxy, openForward, type ProxySpec } from "./core/net/proxy.ts";
export { type NetworkInfo, type NetworkMode, NetworkStore } from "./core/net/networks.ts";
export { networkMembers, runSwitch } from "./core/net/join.ts";
export {
  type AttachEnd,
  type AttachOptions,
  attachTerminal,
  ESCAPE_NAME,
  STOP_KEYS_NAME,
} from "./core/supervisor/terminal.ts";
export { type LiveStatus, liveStatus, withLive } from "./core/supervisor/live.ts";
export { readLiveStatus } from "./core/access/status.ts";
export { READY_NUDGE, type SupervisorStatus } from "./core/supervisor/protocol.ts";
export type { CacheEntry } from "./core/images/cache.ts";
export type { SourceEvent, SourceOptions } from "./core/images/source.ts";
export type { ConvertOptions, ConvertResult, ImageProbe } from "./core/images/qcow2.ts";
export type { Downloaded, DownloadOptions } from "./core/images/download.ts";
export type { PruneOptions, PruneResult } from "./core/images/cache.ts";
export { looksLikeReference, normalizeRegistry } from "./core/oci/reference.ts";
export type {
  CreatedFromOci,
  CreateFromOciOptions,
  LoginOptions,
  PulledImage,
  PullOptions,
  PushOptions,
  PushResult,
};
export type { AddressOptions, GuestAddress } from "./core/access/address.ts";
export type { SshOptions } from "./core/access/ssh.ts";

/**
 * Parses and validates cove.yaml text; a bad spec is a CoveError with
 * code `spec.invalid` whose message names the line and field.
 *
 * @param text The YAML text.
 * @param source What to call it in errors, e.g. its path.
 */
export async function parseSpec(text: string, source?: string): Promise<SpecParsed> {
  return (await import("./core/spec/load.ts")).parseSpec(text, source);
}

/** Validates a spec given as a value (e.g. parsed JSON); errors name the field path. */
export async function validateSpec(value: unknown, source = ""): Promise<SpecParsed> {
  return (await import("./core/spec/load.ts")).validateSpec(value, source);
}

/** Lays command-line style flags (`cpus`, `memory`, `diskSize`...) over a spec and validates it. */
export async function applyFlags(base: SpecParsed, flags: SpecFlags): Promise<SpecParsed> {
  return (await import("./core/spec/compose.ts")).applyFlags(base, flags);
}

/** Reads and validates a cove.yaml file (`--config`). */
export async function readConfigFile(path: string): Promise<SpecParsed> {
  return await (await import("./core/spec/compose.ts")).readConfigFile(path);
}

/** The JSON Schema of cove.yaml (what `cove schema` prints). */
export async function jsonSchema(): Promise<Record<string, unknown>> {
  return (await import("./core/spec/schema.ts")).jsonSchema() as Record<string, unknown>;
}

/** One image alias `cove create --from` knows, as `cove image catalog` lists it. */
export interface CatalogRow {
  name: string;
  description: string;
  arch: string[];
  aliases: string[];
}

/** The image catalog (`COVE_CATALOG` or the built-in one), one row per image. */
export async function imageCatalog(): Promise<CatalogRow[]> {
  const { knownNames, loadCatalog } = await import("./core/images/catalog.ts");
  const cat = loadCatalog();
  return knownNames(cat).map((n) => ({
    name: n,
    description: cat.images[n].description,
    arch: Object.keys(cat.images[n].arch),
    aliases: Object.entries(cat.aliases).filter(([, t]) => t === n).map(([a]) => a),
  }));
}

/** The download and OCI image caches' entries, most recently used first. */
export async function listImageCache(): Promise<CacheEntry[]> {
  return await (await import("./core/images/caches.ts")).listImageCache();
}

/** Removes image cache entries: all, by age, or the least recently used over a budget. */
export async function pruneImageCache(opts: PruneOptions): Promise<PruneResult> {
  return await (await import("./core/images/caches.ts")).pruneImageCache(opts);
}

/** Says what an image file is (raw, qcow2, ISO...) from its first bytes. */
export async function probeImage(path: string): Promise<ImageProbe> {
  return await (await import("./core/images/qcow2.ts")).probeImage(path);
}

/** Converts a qcow2 image to a sparse raw disk (natively: no qemu-img needed). */
export async function convertQcow2ToRaw(
  srcPath: string,
  dstPath: string,
  opts: ConvertOptions = {},
): Promise<ConvertResult> {
  return await (await import("./core/images/qcow2.ts")).convertQcow2ToRaw(srcPath, dstPath, opts);
}

/** Downloads a URL into the blob cache, resumably, optionally checking a checksum. */
export async function download(url: string, opts: DownloadOptions = {}): Promise<Downloaded> {
  return await (await import("./core/images/download.ts")).download(url, opts);
}

/** Where a running VM answers: its IP, or 127.0.0.1:PORT for user networking. */
export async function guestAddress(
  bundle: Bundle,
  spec: VmSpec,
  opts: AddressOptions = {},
): Promise<GuestAddress> {
  return await (await import("./core/access/address.ts")).guestAddress(bundle, spec, opts);
}

/** `cove ip`: the guest agent's report first, then DHCP leases, ARP or the port forward. */
export async function vmAddress(
  bundle: Bundle,
  spec: VmSpec,
  opts: AddressOptions = {},
): Promise<VmAddress> {
  return await (await import("./core/agent/address.ts")).vmAddress(bundle, spec, opts);
}

/** Runs ssh into a running VM (a shell, or `opts.command`); returns its exit code. */
export async function runSsh(bundle: Bundle, spec: VmSpec, opts: SshOptions): Promise<number> {
  return await (await import("./core/access/ssh.ts")).runSsh(bundle, spec, opts);
}

/**
 * Deletes VM `name`; with `force`, a running VM is powered off first.
 *
 * @param store The store holding the VM.
 * @param name The VM's name.
 * @param opts `force`: stop a running VM (power off) instead of refusing; `timeoutSeconds`:
 *   how long its supervisor may take to answer before cove kills the VM (default 10).
 * @returns `unresponsive`: what cove did when the supervisor did not answer.
 */
export async function deleteVm(
  store: Store,
  name: string,
  opts: { force?: boolean; timeoutSeconds?: number } = {},
): Promise<{ unresponsive?: string }> {
  const b = await store.get(name);
  let unresponsive: string | undefined;
  if (opts.force && (await b.isRunning())) {
    const r = await stopVm(b, { force: true, timeoutSeconds: opts.timeoutSeconds ?? 10 });
    unresponsive = r.unresponsive;
  }
  await store.delete(name);
  return unresponsive ? { unresponsive } : {};
}

/**
 * Runs VM `name` under this process (the supervisor of `cove run`) until
 * it stops. Loads the engine when called.
 *
 * @returns How the run ended.
 */
export async function runSupervisor(
  store: Store,
  name: string,
  opts: RunOptions = {},
): Promise<RunResult> {
  return await (await import("./core/supervisor/supervisor.ts")).runSupervisor(store, name, opts);
}

/**
 * Starts VM `name` under a detached supervisor (`cove start`) and waits
 * until it runs.
 *
 * @returns The supervisor's status once the VM runs.
 */
export async function startDetached(
  store: Store,
  name: string,
  opts: StartOptions = {},
): Promise<SupervisorStatus> {
  return await (await import("./core/supervisor/start.ts")).startDetached(store, name, opts);
}

/**
 * Says what a `--from` source is, without downloading anything.
 *
 * @param src A disk image, ISO, URL, catalog alias, `ipsw:...` or `oci://REF`.
 */
export async function resolveSource(
  src: string,
  opts: SourceOptions = {},
): Promise<ResolvedSource> {
  return await (await import("./core/images/source.ts")).resolveSource(src, opts);
}

/**
 * Resolves `src` now and returns the step that places it into a staging
 * bundle (see {@link createVm}'s `fromSource`).
 */
export async function prepareSource(
  src: string,
  opts: SourceOptions = {},
): Promise<(staging: Bundle, spec: VmSpec) => Promise<VmSpec>> {
  return await (await import("./core/images/source.ts")).prepareSource(src, opts);
}

/**
 * Pulls a VM image (Tart's OCI format) into the cache of `opts.home`.
 *
 * @param ref An image reference, e.g. `ghcr.io/cirruslabs/macos-sequoia-base:latest`.
 */
export async function pullImage(ref: string, opts: PullOptions): Promise<PulledImage> {
  return await (await import("./core/oci/pull.ts")).pullImage(ref, opts);
}

/**
 * Pushes stopped VM `name` to one or more registry references.
 *
 * @returns What was pushed and what the registry already had.
 */
export async function pushVm(
  store: Store,
  name: string,
  refs: string[],
  opts: PushOptions,
): Promise<PushResult> {
  return await (await import("./core/oci/push.ts")).pushVm(store, name, refs, opts);
}

/** Creates VM `name` from registry reference `ref` (pulling it unless cached). */
export async function createFromOci(
  store: Store,
  name: string,
  ref: string,
  opts: CreateFromOciOptions = {},
): Promise<CreatedFromOci> {
  return await (await import("./core/oci/create.ts")).createFromOci(store, name, ref, opts);
}

/**
 * Checks credentials against a registry and stores them in
 * `$COVE_HOME/auth.json` (mode 0600).
 *
 * @returns The normalised registry host.
 */
export async function loginRegistry(
  host: string,
  username: string,
  password: string,
  opts: LoginOptions,
): Promise<string> {
  return await (await import("./core/oci/mod.ts")).loginRegistry(host, username, password, opts);
}

/**
 * Forgets cove's stored login for a registry.
 *
 * @returns false when there was none.
 */
export async function logoutRegistry(host: string, home: string): Promise<boolean> {
  return await (await import("./core/oci/mod.ts")).logoutRegistry(host, home);
}

// The engine seam, and the bundle's files and state.
export {
  assertPrivatePath,
  BUNDLE_FILES,
  type BundleState,
  type DiskLocation,
  heldError,
  type LockHolder,
  type LockPurpose,
} from "./core/store/bundle.ts";
export type {
  EngineContext,
  GuestAccess,
  GuestRoute,
  InstallResult,
  PeerVm,
  RestoreImageInstaller,
  VmPaths,
} from "./engines/engine.ts";
export type { BaseEngine } from "./engines/base.ts";
export { restoreImageEngineId } from "./engines/select.ts";
export { runsAsYou } from "./core/vm.ts";
export type { LiveState } from "./core/supervisor/live.ts";
export { HttpTimeout } from "./core/supervisor/http.ts";
// Snapshots of disks and memory.
export {
  defaultTag,
  type GuestHooks,
  listVmSnapshots,
  NO_AGENT,
  removeVmSnapshots,
  restoreSnapshot,
  type RestoreSnapshotOptions,
  type RestoreSnapshotResult,
  type SaveResult,
  saveSnapshot,
  type SaveSnapshotOptions,
  type SnapshotInfo,
  type SnapshotMeta,
  TAG_RULE,
  validateTag,
} from "./core/snapshot/mod.ts";
// The guest agent (qemu-guest-agent over a virtio serial port).
export { QGA_PORT_NAME, QgaClient, QgaError } from "./core/agent/qga.ts";
export { AgentChannel, type AgentStatus } from "./core/agent/channel.ts";
export type { AgentTransport } from "./core/agent/transport.ts";
export { agentOf, agentStatus } from "./core/agent/remote.ts";
export {
  agentExec,
  type AgentExecOptions,
  type AgentExecResult,
  MAX_AGENT_OUTPUT,
  MAX_AGENT_STDIN,
  truncatedError,
} from "./core/agent/exec.ts";
export {
  copyFromGuest,
  copyToGuest,
  type CpEndpoint,
  type CpResult,
  parseCpEndpoint,
} from "./core/agent/cp.ts";
export { withFrozenGuest } from "./core/agent/freeze.ts";
export { type AgentAddress, agentAddresses, type VmAddress } from "./core/agent/address.ts";
export { chooseExecVia, sshAnswers } from "./core/agent/via.ts";
// macOS guests: unattended first boot, the install record (iCloud), ISO keyboards.
export type { InstallRecord, PasswordSource } from "./core/provision/macos.ts";

/** The macOS provisioning functions (first boot, passwords, install record), loaded when called. */
export async function macProvisioning(): Promise<typeof import("./core/provision/macos.ts")> {
  return await import("./core/provision/macos.ts");
}

/** Whether a `--from` source is a macOS restore image (`ipsw:`, or a path or URL ending .ipsw). */
export async function isIpswSource(src: string): Promise<boolean> {
  return (await import("./core/images/ipsw.ts")).isIpswSource(src);
}

// Jobs: one job in a fresh VM (`cove job run`), host slots, and the GitLab Runner executor.
export type { ArtifactRecord, JobArtifact, JobOptions, JobRecord } from "./core/job/run.ts";
export type { SlotKind, SlotReport } from "./core/job/slots.ts";
export type { ExecOptions, ExecResult, GuestChannel } from "./core/job/channel.ts";
export type { PrepareOptions, StageEnv } from "./core/ci/gitlab.ts";

/**
 * Runs one job in a fresh ephemeral VM cloned from `opts.from` and removes
 * the VM afterwards; cove's own failures end it with exit codes 200-208.
 *
 * @returns The job's record (exit code, phase times, artifacts).
 */
export async function runJob(store: Store, opts: JobOptions): Promise<JobRecord> {
  return await (await import("./core/job/run.ts")).runJob(store, opts);
}

/** Reads `--env K=V` and `--artifact GUEST_PATH:HOST_DIR` (usage errors name the flag). */
export async function parseJobArgs(
  env: string[],
  artifacts: string[],
): Promise<{ env: Record<string, string>; artifacts: JobArtifact[] }> {
  const m = await import("./core/job/run.ts");
  return {
    env: Object.fromEntries(env.map(m.parseEnvPair)),
    artifacts: artifacts.map(m.parseArtifact),
  };
}

/** Free and used job slots of every pool (`cove job slots`). */
export async function jobSlots(store: Store): Promise<SlotReport[]> {
  const m = await import("./core/job/slots.ts");
  const out: SlotReport[] = [];
  for (const k of m.SLOT_KINDS) out.push(await m.slotReport(store.home, k));
  return out;
}

/** The GitLab Runner custom executor's stages (see core/ci/gitlab.ts). */
export async function gitlabExecutor(): Promise<typeof import("./core/ci/gitlab.ts")> {
  return await import("./core/ci/gitlab.ts");
}
