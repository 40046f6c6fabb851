/**
 * VM-level operations that combine the spec and the store: what `cove
 * create`, `get`, `set` and `clone` do, as a library API. The CLI calls
 * these and only prints their results. The source modules (images, IPSW,
 * OCI) are imported when a source needs them, so a plain create or get
 * loads none of them.
 * @module
 */
import { resolve } from "node:path";
import { CoveError, ExitCode } from "./errors.ts";
import type { SpecFlags } from "./spec/compose.ts";
import type { SourceEvent } from "./images/source.ts";
import { looksLikeReference } from "./oci/reference.ts";
import type { SpecParsed, VmSpec } from "./spec/schema.ts";
import type { Bundle, MachineIdentity } from "./store/bundle.ts";
import type { Store, VmSummary } from "./store/store.ts";
import { parseFlag } from "./flags.ts";
import { detectHost } from "./host.ts";
import { type AgentStatus, agentStatus } from "./agent/remote.ts";
import { type LiveStatus, withLive } from "./supervisor/live.ts";
import { formatSize, parseSize } from "./units.ts";

/** Registry options, for sources and clones from `oci://` references. */
export interface RegistryFlags {
  /** Allow plain http to the registry. */
  insecure?: boolean;
  /** Layers transferred at once (default 4). */
  concurrency?: number;
}

/** Options of {@link createVm}. */
export interface CreateVmOptions extends SpecFlags, RegistryFlags {
  /** A cove.yaml to start from. */
  config?: string;
  /**
   * Where the VM comes from (`--from`): a disk image, an ISO, a URL, a
   * catalog alias, `ipsw:...` (macOS, the default OS then) or `oci://REF`.
   */
  from?: string;
  /** Progress of downloads, conversions and installs. */
  onProgress?: (e: SourceEvent) => void;
  /**
   * Prepares files from a source; called with the staging bundle. Returns
   * the spec to use. (For sources cove does not know; `from` covers the rest.)
   */
  fromSource?: (staging: Bundle, spec: VmSpec) => Promise<VmSpec | void>;
  /**
   * macOS guests (`ipsw:` sources): the first account's password, from a
   * file (mode 0600) or stdin; without either a password is generated.
   * Either needs an `ipsw:` source.
   */
  passwordFile?: string;
  passwordStdin?: boolean;
  /**
   * macOS guests: provision the first account and see the first boot
   * through (the VM is started and left running once cove's ssh key is in),
   * when this host and the installed image can do it unattended; as
   * `cove create` does. Without it the VM is only installed.
   */
  firstBoot?: boolean;
  /** macOS guests with `firstBoot`: bound in seconds on the wait for ssh (default 600). */
  waitSeconds?: number;
  /** Hears how a macOS guest's first boot goes, for the caller to show. */
  onFirstBoot?: (e: FirstBootEvent) => void;
}

/** What {@link createVm} tells about a macOS guest's first boot. */
export type FirstBootEvent =
  /** One line: the first boot will not be (or was not) unattended, and what to do instead. */
  | { type: "notice"; message: string }
  /** The generated password of the first account: the only time it is told. */
  | { type: "password"; user: string; password: string }
  /** The VM is starting to create the account and install cove's ssh key. */
  | { type: "first-boot"; user: string }
  /** The first boot installed cove's key: the VM runs and ssh reaches it. */
  | { type: "ready" };

/** Flags an `oci://` image decides itself: giving them is a contradiction. */
const IMAGE_DECIDES = ["os", "arch", "kernel", "initrd", "cmdline"] as const;

/**
 * Creates a VM from a source, a config file and flags, atomically: the VM
 * appears only when complete. The flags win over the config file, and both
 * win over what an `oci://` image says (its OS, architecture, boot and root
 * disk file stay the image's).
 */
export async function createVm(store: Store, name: string, opts: CreateVmOptions): Promise<Bundle> {
  store.bundle(name); // validates the name before any work
  // Before the long install: the password (refused at once when bad), and what the host allows.
  const firstBoot = await prepareFirstBoot(opts);
  if (opts.from?.startsWith("oci://")) return await createVmFromOci(store, name, opts.from, opts);
  let fromSource = opts.fromSource;
  let os = opts.os;
  if (opts.from !== undefined) {
    const { isIpswSource, assertCanInstallMacOS } = await import("./images/ipsw.ts");
    if (isIpswSource(opts.from)) {
      assertCanInstallMacOS();
      os ??= "macos"; // an IPSW makes a macOS guest
    }
    const { prepareSource } = await import("./images/source.ts");
    fromSource = await prepareSource(opts.from, { onProgress: opts.onProgress });
  }
  const { applyFlags, readConfigFile } = await import("./spec/compose.ts");
  const base: SpecParsed = opts.config
    ? await readConfigFile(opts.config)
    : applyFlags({} as SpecParsed, {});
  const spec = applyFlags(base, { ...opts, os });
  const b = await store.create(name, {
    spec,
    populate: async (staging, full) => {
      let s = full;
      if (fromSource) {
        s = (await fromSource(staging, s)) ?? s;
        if (opts.diskSize !== undefined) refuseSmallerThanImage(opts.diskSize, s);
      }
      return await importBootFiles(staging, s);
    },
  });
  await firstBoot?.(store, b);
  return b;
}

/**
 * Checks the macOS provisioning options before anything is installed, says
 * when the host cannot provision unattended, and takes the password. Returns
 * what to do once the VM is installed (keep the password, start the first
 * boot and wait for it), or undefined when there is nothing to do.
 */
async function prepareFirstBoot(
  opts: CreateVmOptions,
): Promise<((store: Store, b: Bundle) => Promise<void>) | undefined> {
  const asked = opts.passwordFile !== undefined || opts.passwordStdin === true;
  const ipsw = opts.from !== undefined &&
    (await import("./images/ipsw.ts")).isIpswSource(opts.from);
  if (asked && !ipsw) {
    throw new CoveError(
      "usage.password",
      "--password-file and --password-stdin set a macOS guest's first account; they need --from ipsw:…",
      { hint: "Linux guests get cove's key through cloud-init", exit: ExitCode.Usage },
    );
  }
  if (!ipsw || !opts.firstBoot) return undefined;
  const mac = await import("./provision/macos.ts");
  const host = detectHost();
  const tell = opts.onFirstBoot ?? (() => {});
  const before = mac.provisioningPlan(host, undefined, asked);
  if (before.notice) tell({ type: "notice", message: before.notice });
  if (!before.unattended) return undefined;
  const secret = await mac.resolvePassword(opts);
  return async (store, b) => {
    const plan = await mac.applyMacProvisioning(b, {
      password: secret.password,
      host,
      waitSeconds: opts.waitSeconds,
    });
    if (plan.notice) return tell({ type: "notice", message: plan.notice });
    const user = (await b.readSpec()).provision.user;
    if (secret.generated) tell({ type: "password", user, password: secret.password });
    tell({ type: "first-boot", user });
    const { startDetached } = await import("./supervisor/start.ts");
    await startDetached(store, b.name, { timeoutMs: 120_000 });
    await mac.waitFirstBoot(b, (opts.waitSeconds ?? mac.FIRST_BOOT_WAIT_S) + 30);
    tell({ type: "ready" });
  };
}

async function createVmFromOci(
  store: Store,
  name: string,
  ref: string,
  opts: CreateVmOptions,
): Promise<Bundle> {
  for (const key of IMAGE_DECIDES) {
    if (opts[key] !== undefined) {
      const flag = `--${key}`;
      throw new CoveError("usage.conflict", `${flag}: an oci:// image decides this itself`, {
        hint: `leave out ${flag}, or create the VM from another source`,
        exit: ExitCode.Usage,
      });
    }
  }
  const { createFromOci } = await import("./oci/create.ts");
  const emit = opts.onProgress;
  let started = false;
  const { bundle } = await createFromOci(store, name, ref, {
    insecure: opts.insecure,
    concurrency: opts.concurrency,
    config: opts.config,
    flags: {
      cpus: opts.cpus,
      memory: opts.memory,
      diskSize: opts.diskSize,
      engine: opts.engine,
      display: opts.display,
    },
    onProgress: emit
      ? (p) => {
        if (!started) emit({ type: "start", url: ref, total: p.total, offset: 0 });
        started = true;
        emit({ type: "progress", url: ref, received: p.done, total: p.total });
      }
      : undefined,
  });
  return bundle;
}

/** Options of {@link cloneVm}. */
export interface CloneVmOptions extends RegistryFlags {
  /**
   * Hears that SRC was running, so the clone was made from a copy of its
   * disks, and whether its file systems were frozen for it (see {@link copyNote}).
   */
  onRunningCopy?: (frozen: boolean) => void;
}

/** The line `cove push` prints on stderr for a VM that boots a kernel file (PushResult.kernelBoot). */
export function kernelBootNote(name: string): string {
  return `'${name}' boots a kernel file (boot.loader: kernel), which a Tart image does not carry: where it is pulled it boots its disk with EFI, so the disk needs a bootloader for that`;
}

/** The line that says how a running VM's disks were copied (for a clone or a push). */
export function copyNote(name: string, frozen: boolean): string {
  return frozen
    ? `'${name}' is running: its disks were copied with its file systems frozen (through its guest agent)`
    : `'${name}' is running and no guest agent answered: its disks were copied unfrozen, as after a power cut`;
}

/**
 * `cove clone SRC NEW`: when SRC is a registry reference (see
 * {@link looksLikeReference}), pulls it and creates NEW from it; else
 * clones the VM SRC (copy-on-write disks, a new MAC address and machine
 * identity); a running SRC is cloned from a consistent copy of its disks
 * that its supervisor takes, freezing the guest's file systems through its
 * agent when one answers.
 */
export async function cloneVm(
  store: Store,
  src: string,
  dst: string,
  opts: CloneVmOptions = {},
): Promise<Bundle> {
  if (looksLikeReference(src)) {
    const { createFromOci } = await import("./oci/create.ts");
    return (await createFromOci(store, dst, src, opts)).bundle;
  }
  const { copyRunningDisks } = await import("./supervisor/client.ts");
  const r = await store.clone(src, dst, { copyRunning: copyRunningDisks });
  if (r.frozen !== undefined) opts.onRunningCopy?.(r.frozen);
  return r.bundle;
}

/**
 * A source's image sets the smallest root disk: `--disk-size` below it is
 * refused, as `cove set --disk-size` refuses to shrink (the source grew the
 * disk to the image's size, so a root disk bigger than asked means that).
 */
function refuseSmallerThanImage(diskSize: string, spec: VmSpec): void {
  const want = parseFlag("--disk-size", diskSize);
  const root = spec.disks.find((d) => d.media === "disk");
  const got = root?.size === undefined ? undefined : parseSize(root.size, "disk size");
  if (got !== undefined && got > want) {
    throw new CoveError(
      "disk.shrink",
      `--disk-size: ${formatSize(want)} is smaller than the image (${
        formatSize(got)
      }); disks only grow`,
      { hint: `use a size of at least ${formatSize(got)}`, exit: ExitCode.Usage },
    );
  }
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
      await Deno.copyFile(p, staging.resolve(name));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
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
  /** With `live`: the supervisor's details (see {@link withLive}). */
  live?: LiveStatus;
  /** With `live`: whether the guest agent answers, and why not when it does not. */
  agent?: AgentStatus;
}

/** Options of {@link getVm}. */
export interface GetVmOptions {
  /**
   * Ask the supervisor too, as `cove get` does: the live state (paused,
   * starting, the last crash...) and, for a running VM, its guest agent.
   */
  live?: boolean;
}

/** The details of one VM. */
export async function getVm(
  store: Store,
  name: string,
  opts: GetVmOptions = {},
): Promise<VmDetails> {
  const b = await store.get(name);
  const { summary, spec: read } = await store.summaryAndSpec(b);
  // A spec that cannot be read fails here with its own error, as it always has.
  const spec = read ?? await b.readSpec();
  const machine = await b.readMachine().catch(() => undefined);
  const macos = spec.os === "macos"
    ? await (await import("./provision/macos.ts")).macosDetails(
      b,
      spec,
      machine?.vzMachineIdentifier,
    )
    : undefined;
  const details: VmDetails = {
    ...summary,
    path: b.dir,
    spec,
    machine,
    ...(macos ? { macos } : {}),
  };
  if (!opts.live) return details;
  const d = await withLive(b, details);
  return { ...d, agent: await vmAgentStatus(b, spec, d.state) };
}

/** The guest agent of a VM in `state`: asked through the supervisor when it runs. */
async function vmAgentStatus(b: Bundle, spec: VmSpec, state: string): Promise<AgentStatus> {
  const enabled = spec.agent === true;
  if (!enabled || state !== "running") {
    return { enabled, answers: false, reason: enabled ? "the VM is not running" : "agent: false" };
  }
  return await agentStatus(b).catch((e) => ({
    enabled,
    answers: false,
    reason: e instanceof Error ? e.message : String(e),
  }));
}

/**
 * What a spec makes cove run as you beyond the engine's own choices
 * (`qemu.binary`, `qemu.args`), one line each, for `cove get` and
 * `cove start` to show. Empty for most specs. A pulled image never sets
 * these: its spec is made from the image's config, which has no such
 * fields, and the local flags and --config alone give them.
 */
export function runsAsYou(spec: Pick<VmSpec, "qemu">): string[] {
  const out: string[] = [];
  if (spec.qemu?.binary) out.push(`qemu.binary ${spec.qemu.binary} runs as you`);
  if (spec.qemu?.args?.length) {
    out.push(`qemu.args ${JSON.stringify(spec.qemu.args)} are passed to qemu, which runs as you`);
  }
  return out;
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
  // Read, change and write under the spec lock: concurrent sets each keep their change.
  const { applyFlags } = await import("./spec/compose.ts");
  await b.withSpecLock(async () => {
    const current = await b.readParsedSpec();
    const next = applyFlags(current, {
      cpus: opts.cpus,
      memory: opts.memory,
      display: opts.display,
    });
    if (opts.diskSize !== undefined) {
      await store.resizeRootDisk(name, parseFlag("--disk-size", opts.diskSize));
      const resized = await b.readParsedSpec();
      next.disks = resized.disks;
    }
    await b.writeSpec(next);
  });
  return await getVm(store, name);
}

/** A human summary of a size field (for tables). */
export function showSize(bytes: number | undefined): string {
  return bytes === undefined ? "-" : formatSize(bytes);
}
