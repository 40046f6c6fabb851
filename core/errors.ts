/**
 * The one error type of cove. Every failure a user can cause or meet is a
 * {@link CoveError}: a stable machine code, a one-line message, an optional
 * hint saying what to do, and the process exit code the CLI uses.
 *
 * @example
 * ```ts
 * throw new CoveError("vm.not_found", "no VM named 'dev'", {
 *   hint: "run 'cove list' to see your VMs",
 *   exit: ExitCode.NotFound,
 * });
 * ```
 * @module
 */

/** Documented process exit codes (see README, "Exit codes"). */
export const ExitCode = {
  /** Success. */
  Ok: 0,
  /** A generic failure: I/O, an engine error, a guest failure. */
  Failure: 1,
  /** Usage or validation error: bad flags, a bad spec, a bad name. */
  Usage: 2,
  /** The named VM, image or reference does not exist. */
  NotFound: 3,
  /** The VM is in the wrong state for this (running, not running, locked). */
  State: 4,
  /** The host cannot do this: missing binary, firmware, entitlement, engine. */
  Host: 5,
  /** A network or registry failure: unreachable host, auth, a dropped download. */
  Network: 6,
  /** Interrupted by a signal. */
  Interrupted: 130,
  /**
   * `cove job run` and `cove ci`: cove's own failures exit 200-208, apart
   * from the job's own codes (see README, "Jobs: exit codes").
   * 200: an infrastructure failure not listed below.
   */
  JobSystem: 200,
  /** 201: the job's REF is not a VM and cannot be pulled. */
  JobSource: 201,
  /** 202: the job's VM did not boot, or stopped before it was ready. */
  JobBoot: 202,
  /** 203: the job's VM never answered ssh in time. */
  JobReady: 203,
  /** 204: the artifacts could not be copied back (a full disk). */
  JobArtifacts: 204,
  /** 205: no host slot freed within --queue-timeout. */
  JobQueueTimeout: 205,
  /** 206: the job ran past --timeout and was stopped. */
  JobTimeout: 206,
  /** 207: the job was interrupted (SIGINT, SIGTERM, SIGHUP). */
  JobInterrupted: 207,
  /** 208: the job's VM or its connection died while the job ran. */
  JobLost: 208,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/**
 * Every error code cove uses, once, with what it means. `cove` prints the
 * code with `--format json`; scripts may branch on it. The README lists this
 * table (a test keeps them equal), and a test fails when the tree throws a
 * code that is not here.
 */
export const ERROR_CODES: Readonly<Record<string, string>> = {
  "agent.closed": "the guest agent channel closed",
  "agent.disabled": "the VM's guest agent is turned off (agent: false in its spec)",
  "agent.exec_timeout": "a guest command over the agent ran past --timeout",
  "agent.exec_usage": "a guest command is empty or cannot be run through the agent",
  "agent.guest_failed": "the guest agent refused or failed a command",
  "agent.output_truncated": "a guest command's output is over the agent's bound",
  "agent.reserved": "a guest agent command is the supervisor's own (it keeps the channel in sync)",
  "agent.stdin_too_large":
    "the standard input for a guest command over the agent is over its bound",
  "agent.thaw_failed": "the guest's filesystems could not be thawed",
  "agent.timeout": "the guest agent did not answer in time",
  "agent.unavailable":
    "the VM's guest agent does not answer (is qemu-guest-agent installed and running?)",
  "boot.bad_kernel": "a --kernel or --initrd file is not what the engine can boot",
  "boot.not_found": "a --kernel or --initrd file does not exist",
  "cache.digest": "a cache key is not a sha256 digest",
  "catalog.arch": "the catalog image has no build for the guest architecture",
  "catalog.checksum_missing": "the catalog's checksum file does not list the image",
  "catalog.invalid": "the image catalog (COVE_CATALOG) cannot be read or is invalid",
  "catalog.unknown": "no catalog image has that alias",
  "config.not_file": "the --config path is a directory",
  "config.not_found": "the --config file does not exist",
  "cp.checksum": "the copy does not match its source's checksum",
  "cp.guest_stat": "a guest path cannot be inspected through the agent",
  "cp.guest_write": "the guest file cannot be written through the agent",
  "cp.host_tar": "the host's tar failed while copying a directory",
  "cp.is_directory": "the path to copy is a directory (use -r)",
  "cp.no_parent": "the destination's directory does not exist",
  "cp.not_found": "the path to copy does not exist",
  "cp.usage": "cove cp needs NAME:PATH on exactly one side",
  "disk.format": "the root disk is not raw, so it cannot be resized",
  "disk.none": "the VM has no disk to resize",
  "disk.not_found": "a disk named in the spec does not exist",
  "disk.outside": "a disk outside the bundle cannot be created or resized here",
  "disk.path": "a disk or variable-store path leaves the bundle or names a file cove keeps there",
  "disk.shrink": "a disk size is smaller than the image it holds; disks only grow",
  "download.changed": "the file changed on the server while it was downloaded",
  "download.checksum": "the download does not match its checksum",
  "download.denied": "the server refused access to the download",
  "download.http": "the server answered the download with an HTTP error",
  "download.interrupted": "the download was cut off (run the same command again to resume)",
  "download.not_found": "the server has no such file",
  "download.range": "the server answered a resumed download with the wrong range",
  "download.server": "the download server failed with a server error (retried, then given up)",
  "download.timeout": "the server sent no data for the stall timeout (the download can be resumed)",
  "download.too_large": "the download is larger than allowed",
  "download.unreachable": "the download's host cannot be reached",
  "download.url": "the source is not a valid URL",
  "edit.aborted": "`cove edit` ended without saving",
  "edit.editor": "the editor ($VISUAL or $EDITOR) could not be run",
  "home.unsafe": "COVE_HOME, its vms/ or a bundle is owned by another user or writable by others",
  "home.unset": "neither COVE_HOME nor HOME is set",
  "home.unwritable": "COVE_HOME is not writable",
  "http.bad_input": "a control API request has the wrong fields",
  "http.bad_json": "a control API request body is not JSON",
  "http.bad_request": "a control API request is malformed",
  "http.not_found": "the control API has no such route",
  "http.too_large": "a control API request body is too large",
  "http.upgrade": "a console upgrade request of the control API is malformed",
  "image.corrupt": "a qcow2 image is damaged",
  "image.create": "the raw disk for a converted image cannot be created",
  "image.not_file": "an image path is not a regular file",
  "image.not_qcow2": "an image is not in qcow2 format",
  "ci.env": "a variable the GitLab Runner stage needs is missing or invalid",
  "ci.stage": "a GitLab Runner stage was called out of order (no VM prepared for the job)",
  "internal": "an unexpected failure (a bug: please report it with --debug output)",
  "internal.pool_size": "a worker pool was given a size that is not a whole number of at least 1",
  "interrupted": "the operation was interrupted",
  "io.no_space": "the disk is full",
  "io.not_found": "a file or directory does not exist",
  "io.permission": "permission denied on a file or directory",
  "ipsw.host": "installing macOS from an IPSW needs a Mac with Apple silicon",
  "ipsw.no_disk": "a macOS guest from an IPSW needs a root disk",
  "ipsw.not_found": "the IPSW file does not exist",
  "ipsw.os": "an IPSW source makes a macOS guest; --os linux contradicts it",
  "job.artifact": "an --artifact is not GUEST_PATH:HOST_DIR",
  "job.artifacts": "the job's artifacts could not be copied back",
  "job.boot": "the job's VM did not boot or stopped before it was ready",
  "job.env": "an --env is not K=V with a valid variable name",
  "job.interrupted": "the job was interrupted by a signal and its VM removed",
  "job.lost": "the job's VM or its connection died while the job ran",
  "job.queue_timeout": "no host slot freed for the job within --queue-timeout",
  "job.ready": "the job's VM did not answer ssh in time",
  "job.slots": "COVE_JOB_SLOTS is not a whole number of at least 1",
  "job.source": "the job's REF is neither a VM nor a pullable registry reference",
  "job.timeout": "the job ran past --timeout and was stopped",
  "net.bad_address": "a forwarded address is not an address of this host",
  "net.bad_name": "the cove network name is not valid",
  "net.bad_subnet": "a network subnet is not an IPv4 CIDR cove can use",
  "net.bind": "a forward cannot listen on its host address and port",
  "net.exists": "a cove network with that name already exists",
  "net.forward_conflict": "two forwards want the same host port",
  "net.full": "the cove network has no free address left",
  "net.in_use": "the cove network still has member VMs",
  "net.no_subnet": "no free subnet is left for a new cove network",
  "net.not_found": "no cove network has that name",
  "net.port_denied": "a forwarded host port needs privileges",
  "net.port_in_use": "a forwarded host port is already in use",
  "net.subnet_overlap": "the subnet overlaps another cove network or a host route",
  "net.switch": "the cove network's switch could not be started or reached",
  "oci.auth_failed": "getting a registry token failed",
  "oci.auth_file": "the registry credentials file is not valid JSON",
  "oci.auth_realm": "the registry's token realm is not a URL",
  "oci.auth_scheme": "the registry asks for an unsupported authentication scheme",
  "oci.bad_blob": "a blob is larger than its manifest says",
  "oci.bad_manifest": "the image manifest is invalid or too large",
  "oci.bad_reference": "the argument is not an image reference",
  "oci.bad_registry": "the argument is not a registry host",
  "oci.blob_missing": "the registry lacks a blob the manifest names",
  "oci.blocked_port": "the registry's port is one the runtime blocks",
  "oci.cancelled": "the layer transfers were stopped",
  "oci.cred_helper": "the Docker credential helper named in the Docker config is not installed",
  "oci.denied": "the registry denied access to the repository",
  "oci.digest_mismatch": "the manifest does not match its digest",
  "oci.disk_format": "the VM's disk format cannot be pushed as a Tart image",
  "oci.dropped": "the registry dropped the connection",
  "oci.http": "the registry answered with an HTTP error",
  "oci.incomplete_pull":
    "a pulled layer lacks its completion record, so the image is not published",
  "oci.login": "the login needs a username or a password",
  "oci.login_failed": "the registry refused the username or password",
  "oci.lz4_corrupt": "a compressed layer is damaged",
  "oci.no_disk": "the VM has no disk to push",
  "oci.no_reference": "push needs at least one reference",
  "oci.not_found": "the registry has no such image or tag",
  "oci.not_vm": "the image is not a VM image in Tart's format",
  "oci.protocol": "the registry broke the distribution protocol",
  "oci.push_source": "a file of the VM to push cannot be read",
  "oci.reauth": "the registry asked to authenticate again during a transfer",
  "oci.server": "the registry failed with a server error",
  "oci.timeout": "the registry stopped responding",
  "oci.tls": "TLS with the registry failed",
  "oci.truncated": "a blob from the registry is truncated",
  "oci.unauthorized": "the registry requires authentication",
  "oci.unknown_host": "the registry host name does not resolve",
  "oci.unreachable": "the registry refused the connection",
  "oci.unsupported": "the image uses a Tart disk format cove does not read",
  "password.both": "give --password-file or --password-stdin, not both",
  "password.empty": "the password file is empty",
  "password.invalid": "the password has characters macOS does not take",
  "password.lines": "the password file has more than one line",
  "password.missing": "the password file does not exist",
  "password.mode": "the password file is readable by others (mode wider than 0600)",
  "provision.first_boot": "the first boot's provisioning failed",
  "provision.key_install": "installing cove's key over the first ssh session failed",
  "provision.key_login": "cove's key does not log in after it was installed",
  "provision.ssh_timeout": "the guest's ssh did not answer within the first boot's bound",
  "provision.stopped": "the VM stopped before its first boot finished",
  "qemu.bad_accel": "COVE_QEMU_ACCEL names no accelerator",
  "qemu.bad_loader": "the qemu engine cannot boot with that loader",
  "qemu.failed": "QEMU failed",
  "qemu.forward": "QEMU adds forwards only on user networking or a cove network NIC",
  "qemu.network": "the QEMU engine cannot join this cove network",
  "qemu.no_audio": "the qemu engine has no audio device",
  "qemu.no_firmware": "no EFI firmware for the guest architecture was found",
  "qemu.no_kvm": "KVM was asked for but cannot be used",
  "qemu.no_macos": "the qemu engine cannot run macOS guests",
  "qemu.no_rosetta": "Rosetta sharing needs the vz engine",
  "qemu.no_virtiofsd": "virtiofs shares were asked for but no usable virtiofsd was found",
  "qemu.not_found": "QEMU is not installed for the guest architecture",
  "qemu.state": "QEMU failed to save or load the machine state",
  "qemu.state_path": "a machine-state path cannot be passed to QEMU's migration",
  "qemu.virtiofsd": "virtiofsd failed to serve a share",
  "runtime.unsafe_dir": "the runtime directory is not safe to use",
  "share.not_found": "a shared directory does not exist or is not a directory",
  "share.tag": "a share tag is used twice",
  "snapshot.bad_tag": "a snapshot tag is empty, too long, or has '/' or '..'",
  "snapshot.disk_format": "a disk is not raw, so it cannot be snapshotted",
  "snapshot.exists": "the VM already has a snapshot with that tag",
  "snapshot.no_memory": "the snapshot holds no memory (restore it with --disk-only)",
  "snapshot.no_space": "there is not enough free space for the snapshot",
  "snapshot.not_found": "the VM has no snapshot with that tag",
  "snapshot.resume_failed":
    "a snapshot's memory could not be resumed (the next start boots the restored disks)",
  "snapshot.spec_mismatch":
    "a memory snapshot was taken under a different spec than the VM has now",
  "source.elsewhere": "this --from source is handled by another command or engine",
  "source.not_file": "the --from path is not a file",
  "source.not_found": "the --from path does not exist",
  "source.not_image": "the --from data is not a disk image",
  "source.scheme": "the --from URL scheme is not supported",
  "spec.invalid": "the VM spec (cove.yaml, --config or flags) is invalid",
  "ssh.keygen": "ssh-keygen failed to make cove's key",
  "ssh.keygen_missing": "ssh-keygen is not installed",
  "ssh.missing": "ssh is not installed",
  "usage": "the command line is wrong: an unknown command or option, a missing argument",
  "usage.checksum": "a checksum is not sha256 or sha512",
  "usage.conflict": "two flags, or a flag and the source, contradict each other",
  "usage.duration": "a duration flag is not a duration",
  "usage.format": "--format is not text or json",
  "usage.mode": "--mode is not host or shared",
  "usage.number": "a count flag is not a whole number in its range",
  "usage.password": "--password-file and --password-stdin need a macOS guest (--from ipsw:)",
  "usage.shell": "the shell is not bash, zsh or fish",
  "usage.size": "a size flag is not a size",
  "usage.via": "--via is not auto, agent or ssh",
  "vm.bad_name": "the VM name is not valid",
  "vm.broken": "the VM's bundle has no readable cove.yaml",
  "vm.busy": "another cove command (a push, a delete, a create) holds the VM",
  "vm.console": "cove cannot attach to the VM's console",
  "vm.control": "the VM's supervisor does not answer",
  "vm.crashed": "the VM stopped unexpectedly",
  "vm.exists": "a VM with that name already exists",
  "vm.lock": "the VM's lock file cannot be opened or locked",
  "vm.no_address": "the VM has no IP address yet",
  "vm.no_network": "the VM has no network",
  "vm.no_ssh_forward": "the VM has no host port forwarded to its SSH port",
  "vm.not_found": "no VM has that name",
  "vm.not_running": "the VM is not running",
  "vm.running": "the VM is running, and this needs it stopped",
  "vm.spec_locked": "another command is changing the VM's cove.yaml",
  "vm.ssh_timeout": "the VM did not accept ssh in time",
  "vm.start_failed": "the VM's supervisor failed to start it",
  "vm.start_timeout": "the VM did not start in time",
  "vm.state": "the VM is in the wrong state for this",
  "vm.unresponsive": "the VM's supervisor accepts connections but does not answer",
  "vz.arch": "vz runs arm64 guests only",
  "vz.bridged": "a bridged network needs an interface",
  "vz.cancelled": "the macOS install was cancelled",
  "vz.config": "Virtualization.framework rejected the VM configuration",
  "vz.console": "the VM has no serial console",
  "vz.cpus": "the CPU count is outside what VZ allows on this Mac",
  "vz.disk": "the disk format needs the qemu engine",
  "vz.entitlement": "the cove binary lacks the virtualization entitlement",
  "vz.error": "Virtualization.framework reported an error",
  "vz.identity": "an installed macOS VM has lost its hardware model or machine identifier",
  "vz.input": "the Mac keyboard and trackpad are for macOS guests",
  "vz.install": "the macOS install failed",
  "vz.internal": "Virtualization.framework failed internally",
  "vz.io": "Virtualization.framework met an I/O error",
  "vz.ipsw_unsupported": "this macOS version cannot be installed on this Mac",
  "vz.kernel": "the kernel is in a format VZ cannot boot",
  "vz.limit": "macOS allows no more macOS VMs at once",
  "vz.limit_leaked": "VZ refuses a third macOS VM while fewer than two run (a leaked slot)",
  "vz.memory": "the memory size is outside what VZ allows on this Mac",
  "vz.nested": "nested virtualization is not available for this guest",
  "vz.network": "the network mode is not available with vz",
  "vz.not_installed": "the macOS VM has no installed macOS",
  "vz.provisioning": "VZ refused the guest provisioning options",
  "vz.restore": "VZ cannot restore this machine state",
  "vz.rosetta": "Rosetta is for Linux guests only",
  "vz.save": "VZ cannot save this VM's machine state",
  "vz.share": "a shared directory is not a directory",
  "vz.state": "Virtualization.framework refused the operation in the VM's current state",
  "vz.suspend": "VZ cannot suspend this VM",
  "vz.timeout": "Virtualization.framework did not finish an operation in time",
  "vz.unsupported": "vz needs macOS on Apple silicon",
};

/** Options for a {@link CoveError}. */
export interface CoveErrorOptions {
  /** What the user can do about it; printed after the message. */
  hint?: string;
  /** Process exit code; defaults to {@link ExitCode.Failure}. */
  exit?: ExitCode;
  /** The underlying error, kept for `--debug`. */
  cause?: unknown;
}

/** What a failing command prints on stderr under `--format json`: `{"error": ErrorJson}`. */
export interface ErrorJson {
  /** A key of {@link ERROR_CODES}. */
  code: string;
  /** The one-line message. */
  message: string;
  /** What the user can do about it, or null. */
  hint: string | null;
  /** The process exit code. */
  exit: number;
}

/** A failure with a stable code, a one-line message and a hint. */
export class CoveError extends Error {
  readonly code: string;
  readonly hint?: string;
  readonly exit: ExitCode;

  constructor(code: string, message: string, opts: CoveErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "CoveError";
    this.code = code;
    this.hint = opts.hint;
    this.exit = opts.exit ?? ExitCode.Failure;
  }

  /** The single line shown to users: message, then the hint if any. */
  line(): string {
    return this.hint ? `${this.message} (${this.hint})` : this.message;
  }

  /**
   * Stable JSON shape of `--format json` error output (inside `{"error": ...}`).
   * `hint` is null when there is none, so every key is always present.
   */
  toJSON(): ErrorJson {
    return { code: this.code, message: this.message, hint: this.hint ?? null, exit: this.exit };
  }
}

/** Shorthand for a usage/validation error (exit code 2). */
export function usageError(code: string, message: string, hint?: string): CoveError {
  return new CoveError(code, message, { hint, exit: ExitCode.Usage });
}

/** Turns any thrown value into a CoveError, mapping common OS errors to clear lines. */
export function toCoveError(err: unknown, context?: string): CoveError {
  if (err instanceof CoveError) return err;
  const where = context ? `${context}: ` : "";
  if (err instanceof Deno.errors.NotFound) {
    return new CoveError("io.not_found", `${where}${firstLine(err.message)}`, {
      exit: ExitCode.NotFound,
      cause: err,
    });
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return new CoveError("io.permission", `${where}permission denied: ${firstLine(err.message)}`, {
      hint: "check the ownership and permissions of the path",
      cause: err,
    });
  }
  if (err instanceof Error && /ENOSPC|No space left/i.test(err.message)) {
    return new CoveError("io.no_space", `${where}the disk is full`, {
      hint: "free some space and retry; nothing partial was kept",
      cause: err,
    });
  }
  const msg = err instanceof Error ? err.message : String(err);
  return new CoveError("internal", `${where}${firstLine(msg)}`, { cause: err });
}

function firstLine(s: string): string {
  return s.split("\n")[0];
}
