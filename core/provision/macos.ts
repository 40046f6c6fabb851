/**
 * macOS guests that are ready for work: the first account's password (never
 * in the spec or argv), the install record that says how and where macOS was
 * installed (and so what iCloud sign-in can do), what create says about a
 * guest that cannot be provisioned unattended, and the first-boot sequence
 * the supervisor runs:
 *
 * 1. {@link firstBootProvisioning}: on the first boot after install, the
 *    account (user, full name, password, auto login, Remote Login) for the
 *    engine's start options (VZMacGuestProvisioningOptions, macOS 27);
 * 2. {@link markGuestProvisioned} once the engine started with them;
 * 3. {@link completeFirstBoot}: waits (bounded) for ssh, installs cove's key
 *    and provision.sshKeys with the password over one ssh session through an
 *    askpass helper (../access/askpass.ts), with `keyboard: {layout: iso}`
 *    the hidutil LaunchAgent (./keyboard.ts), checks that the key alone now
 *    logs in, and deletes the password file.
 * @module
 */
import { CoveError, ExitCode } from "../errors.ts";
import type { VmSpec } from "../spec/schema.ts";
import { keyboardLayout } from "../spec/fields.ts";
import type { Bundle } from "../store/bundle.ts";
import type { GuestProvisioning } from "../../engines/engine.ts";
import { writeFileAtomic } from "../store/fsutil.ts";

/** How a VM's macOS was installed, and how far first-boot provisioning got. */
export interface InstallRecord {
  /** The restore image installed. */
  restoreImage: { version: string; build: string };
  /** sha256 (hex) of the installing host's hardware identity; never the identity itself. */
  hostIdentity: string;
  /** sha256 (hex) of the VZ machine identifier macOS was installed with. */
  machineIdentity?: string;
  /** When macOS was installed (ISO 8601). */
  installedAt: string;
  /** Whether create asked for an unattended first boot. */
  provisioning?: boolean;
  /** When the first boot started with provisioning options. */
  guestProvisionedAt?: string;
  /** When cove's key was installed in the guest. */
  keysInstalledAt?: string;
  /** When the ISO keyboard LaunchAgent was installed. */
  keyboardAgentAt?: string;
  /** The bound on the first boot's wait for ssh (seconds; create's --wait). */
  waitSeconds?: number;
  /** The last first-boot failure, one line. */
  lastProvisionError?: string;
}

/** Reads the install record; undefined when the VM has none (not a macOS install). */
export async function readInstallRecord(bundle: Bundle): Promise<InstallRecord | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(bundle.installRecordPath)) as InstallRecord;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** Writes the install record atomically (0600). */
export async function writeInstallRecord(bundle: Bundle, rec: InstallRecord): Promise<void> {
  await writeFileAtomic(bundle.installRecordPath, JSON.stringify(rec, null, 2) + "\n");
}

async function updateInstallRecord(
  bundle: Bundle,
  fields: Partial<InstallRecord>,
): Promise<InstallRecord | undefined> {
  const rec = await readInstallRecord(bundle);
  if (!rec) return undefined;
  const next = { ...rec, ...fields };
  await writeInstallRecord(bundle, next);
  return next;
}

/** sha256 hex of a string. */
export async function sha256Hex(s: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The hash of this host's hardware identity: IOPlatformUUID on macOS,
 * /etc/machine-id elsewhere; `COVE_HOST_IDENTITY` overrides it (tests, and
 * a person who moved a Mac's disk to a new board on purpose).
 */
export async function hostIdentityHash(): Promise<string> {
  const override = Deno.env.get("COVE_HOST_IDENTITY");
  let id = override ?? "";
  if (!id && Deno.build.os === "darwin") {
    try {
      const out = await new Deno.Command("ioreg", {
        args: ["-rd1", "-c", "IOPlatformExpertDevice"],
        stdout: "piped",
        stderr: "null",
      }).output();
      id = /"IOPlatformUUID"\s*=\s*"([^"]+)"/.exec(new TextDecoder().decode(out.stdout))?.[1] ??
        "";
    } catch { /* below */ }
  }
  if (!id) id = (await Deno.readTextFile("/etc/machine-id").catch(() => "")).trim();
  return await sha256Hex(`cove-host:${id || "unknown"}`);
}

/** The major version of "27.0.1". */
export function majorOf(version: string | undefined): number {
  return Number((version ?? "").split(".")[0]) || 0;
}

/** What `cove get` says about iCloud / Apple ID sign-in in a macOS VM. */
export type IcloudStatus =
  | "available"
  | "needs sign-in again (cloned or moved from another Mac)"
  | `not available (installed from macOS ${number})`;

/**
 * macOS 15+ allows Apple ID sign-in only in a VM installed from a 15+
 * restore image, with the identity tied to the host it was installed on
 * (and to the VM's machine identifier).
 */
export function icloudStatus(
  rec: InstallRecord,
  here: { hostIdentity: string; machineIdentity?: string },
): IcloudStatus {
  const major = majorOf(rec.restoreImage.version);
  if (major < 15) return `not available (installed from macOS ${major})`;
  const moved = rec.hostIdentity !== here.hostIdentity;
  const cloned = rec.machineIdentity !== undefined && here.machineIdentity !== undefined &&
    rec.machineIdentity !== here.machineIdentity;
  return moved || cloned ? "needs sign-in again (cloned or moved from another Mac)" : "available";
}

// ---------------------------------------------------------------- passwords

const PASSWORD_MAX = 1024;

function checkPassword(text: string, where: string): string {
  const lines = text.replace(/\r?\n$/, "");
  if (lines.length === 0) {
    throw new CoveError("password.empty", `${where} is empty`, {
      hint: "put the password on its one line",
      exit: ExitCode.Usage,
    });
  }
  if (/[\r\n]/.test(lines)) {
    throw new CoveError("password.lines", `${where} has more than one line`, {
      hint: "put the password alone on one line",
      exit: ExitCode.Usage,
    });
  }
  // deno-lint-ignore no-control-regex -- refusing control characters is the point
  if (lines.length > PASSWORD_MAX || /[\x00-\x1f\x7f]/.test(lines)) {
    throw new CoveError(
      "password.invalid",
      `${where} holds control characters or more than ${PASSWORD_MAX} characters`,
      { hint: "use printable characters only", exit: ExitCode.Usage },
    );
  }
  return lines;
}

/**
 * Reads `--password-file FILE`: refused when missing, empty, more than one
 * line, or readable or writable by anyone but its owner (mode wider than 0600).
 */
export async function readPasswordFile(path: string): Promise<string> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (e) {
    throw new CoveError("password.missing", `--password-file: '${path}' does not exist`, {
      hint: "give a file that holds the password on one line (chmod 600)",
      exit: ExitCode.Usage,
      cause: e,
    });
  }
  if (!st.isFile) {
    throw new CoveError("password.missing", `--password-file: '${path}' is not a file`, {
      hint: "give a file that holds the password on one line (chmod 600)",
      exit: ExitCode.Usage,
    });
  }
  if (st.mode !== null && (st.mode & 0o077) !== 0) {
    throw new CoveError(
      "password.mode",
      `--password-file: '${path}' is readable by others (mode ${
        (st.mode & 0o777).toString(8).padStart(4, "0")
      }, wider than 0600)`,
      { hint: `run 'chmod 600 ${path}'`, exit: ExitCode.Usage },
    );
  }
  return checkPassword(await Deno.readTextFile(path), `--password-file '${path}'`);
}

/** Reads `--password-stdin`: one line from standard input. */
export async function readPasswordStdin(
  stream: ReadableStream<Uint8Array> = Deno.stdin.readable,
): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const c of stream) {
    chunks.push(c);
    size += c.length;
    if (size > PASSWORD_MAX + 2) break;
  }
  const all = new Uint8Array(size);
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.length;
  }
  return checkPassword(new TextDecoder().decode(all), "--password-stdin");
}

const PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

/** A strong random password: 4 groups of 5 from 57 unambiguous characters (about 116 bits). */
export function generatePassword(): string {
  const out: string[] = [];
  const limit = 256 - (256 % PASSWORD_ALPHABET.length);
  while (out.length < 20) {
    for (const b of crypto.getRandomValues(new Uint8Array(32))) {
      if (b < limit && out.length < 20) out.push(PASSWORD_ALPHABET[b % PASSWORD_ALPHABET.length]);
    }
  }
  return [0, 5, 10, 15].map((i) => out.slice(i, i + 5).join("")).join("-");
}

/** Keeps the password 0600 in the bundle until the first boot has used it. */
export async function storePassword(bundle: Bundle, password: string): Promise<void> {
  await writeFileAtomic(bundle.provisionPasswordPath, password + "\n");
  await Deno.chmod(bundle.provisionPasswordPath, 0o600);
}

async function readStoredPassword(bundle: Bundle): Promise<string | undefined> {
  try {
    return (await Deno.readTextFile(bundle.provisionPasswordPath)).replace(/\r?\n$/, "");
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

// ------------------------------------------------------------ create notices

/** What create says about provisioning a macOS guest, before installing. */
export interface ProvisioningPlan {
  /** Whether the first boot will pass provisioning options. */
  unattended: boolean;
  /** One line for stderr, when the first boot will not be unattended. */
  notice?: string;
}

/**
 * Decides at create time whether the first boot can be unattended: it needs
 * a macOS 27 host (VZMacGuestProvisioningOptions) and a macOS 27 guest
 * (older guests ignore the options, silently). `image` is the restore
 * image's version when known (ipsw:latest on a 27 host is 27 or later).
 */
export function provisioningPlan(
  host: { macosVersion?: string },
  image: { version?: string; build?: string } | undefined,
  requested: boolean,
): ProvisioningPlan {
  const hostMajor = majorOf(host.macosVersion);
  const imageMajor = image?.version ? majorOf(image.version) : undefined;
  const manual =
    "the guest needs Setup Assistant by hand (cove run NAME --graphics), or build it with the README's Packer recipe";
  if (hostMajor < 27) {
    return {
      unattended: false,
      notice: `${
        requested ? "--user/--password: " : ""
      }unattended first boot needs a macOS 27 host (this Mac runs ${
        host.macosVersion ?? "not macOS"
      }); ${manual}`,
    };
  }
  if (imageMajor !== undefined && imageMajor < 27) {
    return {
      unattended: false,
      notice: `macOS ${image?.version}${
        image?.build ? ` (${image.build})` : ""
      } ignores unattended first boot (it needs a macOS 27 guest); ${manual}, or use --from ipsw:latest`,
    };
  }
  return { unattended: true };
}

// ------------------------------------------------------------- first boot

/**
 * The account for the engine's start options on the first boot after a
 * macOS install with provisioning: undefined on any other boot.
 */
export async function firstBootProvisioning(
  bundle: Bundle,
  spec: VmSpec,
): Promise<GuestProvisioning | undefined> {
  if (spec.os !== "macos") return undefined;
  const rec = await readInstallRecord(bundle);
  if (!rec?.provisioning || rec.guestProvisionedAt) return undefined;
  const password = await readStoredPassword(bundle);
  if (password === undefined) return undefined;
  return {
    username: spec.provision.user,
    fullName: spec.provision.fullName ?? spec.provision.user,
    password,
    logsInAutomatically: spec.provision.autoLogin,
    enablesRemoteLogin: spec.provision.ssh,
  };
}

/** Records that the engine started the guest with provisioning options. */
export async function markGuestProvisioned(bundle: Bundle): Promise<void> {
  await updateInstallRecord(bundle, { guestProvisionedAt: new Date().toISOString() });
}

/**
 * Whether a first-boot key install is still owed: the guest was started with
 * provisioning options and the password is still in the bundle. Only a macOS
 * create leaves such a bundle; the check itself is OS-neutral, so a Linux
 * test guest with a password runs the same supervisor path.
 */
export async function keyInstallPending(bundle: Bundle, spec: VmSpec): Promise<boolean> {
  if (!spec.provision.ssh) return false;
  const rec = await readInstallRecord(bundle);
  return !!rec?.guestProvisionedAt && !rec.keysInstalledAt &&
    (await readStoredPassword(bundle)) !== undefined;
}

/** Where the guest's sshd answers. */
export interface SshTarget {
  host: string;
  port: number;
}

/** What {@link completeFirstBoot} runs; the askpass install by default. */
export interface KeyInstaller {
  (req: {
    target: SshTarget;
    user: string;
    password: string;
    keys: string[];
    remoteScript?: string;
    deadline: number;
  }): Promise<void>;
}

/** Options of {@link completeFirstBoot}. */
export interface CompleteFirstBootOptions {
  /** Finds the guest's ssh address, waiting up to the seconds given. */
  address: (waitSeconds: number) => Promise<SshTarget>;
  /** The bound on the whole wait; default 600 s. */
  waitSeconds?: number;
  /** The public keys to install (cove's and provision.sshKeys). */
  keys: string[];
  /** Installs the keys with the password; default the askpass one. */
  install: KeyInstaller;
  /** Checks that the key alone logs in; rejects if not. */
  verify?: (target: SshTarget) => Promise<void>;
  /** Extra shell run in the same session (the ISO keyboard agent). */
  remoteScript?: string;
}

/** The default bound on the first boot's wait for ssh. */
export const FIRST_BOOT_WAIT_S = 600;

/**
 * Waits for ssh, installs the keys with the password over one session,
 * checks the key, then deletes the password. On a timeout the password is
 * kept (the next start tries again, without provisioning options) and the
 * error names the console log and the supervisor log.
 */
export async function completeFirstBoot(
  bundle: Bundle,
  spec: VmSpec,
  opts: CompleteFirstBootOptions,
): Promise<void> {
  const password = await readStoredPassword(bundle);
  if (password === undefined) return;
  const wait = opts.waitSeconds ?? FIRST_BOOT_WAIT_S;
  const deadline = Date.now() + wait * 1000;
  try {
    let lastError: unknown;
    while (true) {
      const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
      try {
        const target = await opts.address(left);
        await opts.install({
          target,
          user: spec.provision.user,
          password,
          keys: opts.keys,
          remoteScript: opts.remoteScript,
          deadline,
        });
        if (opts.verify) await opts.verify(target);
        break;
      } catch (e) {
        lastError = e;
        if (e instanceof CoveError && e.code === "ssh.missing") throw e;
        if (Date.now() >= deadline) {
          const why = lastError instanceof Error ? lastError.message.split("\n")[0] : "";
          throw new CoveError(
            "provision.ssh_timeout",
            `VM '${bundle.name}' did not accept ssh for '${spec.provision.user}' within ${wait}s${
              why ? ` (${why})` : ""
            }; see ${bundle.consoleLog} and ${bundle.supervisorLog}`,
            {
              hint:
                `the VM keeps running and its password stays in the bundle: 'cove stop ${bundle.name}' and 'cove start ${bundle.name}' try again; a guest older than macOS 27 needs Setup Assistant by hand`,
              exit: ExitCode.State,
              cause: e,
            },
          );
        }
        await new Promise((r) => setTimeout(r, Math.min(5000, Math.max(0, deadline - Date.now()))));
      }
    }
  } catch (e) {
    const line = e instanceof CoveError ? e.line() : String(e);
    await updateInstallRecord(bundle, { lastProvisionError: line });
    throw e;
  }
  const now = new Date().toISOString();
  await updateInstallRecord(bundle, {
    keysInstalledAt: now,
    ...(opts.remoteScript && keyboardLayout(spec.keyboard) === "iso"
      ? { keyboardAgentAt: now }
      : {}),
    lastProvisionError: undefined,
  });
  await Deno.remove(bundle.provisionPasswordPath).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
}

// ------------------------------------------------------------ create flow

/** Where create's password comes from. */
export interface PasswordSource {
  passwordFile?: string;
  passwordStdin?: boolean;
}

/** The password for the first account: from the file, stdin, or generated. */
export async function resolvePassword(
  src: PasswordSource,
): Promise<{ password: string; generated: boolean }> {
  if (src.passwordFile !== undefined && src.passwordStdin) {
    throw new CoveError("password.both", "give --password-file or --password-stdin, not both", {
      exit: ExitCode.Usage,
    });
  }
  if (src.passwordFile !== undefined) {
    return { password: await readPasswordFile(src.passwordFile), generated: false };
  }
  if (src.passwordStdin) return { password: await readPasswordStdin(), generated: false };
  return { password: generatePassword(), generated: true };
}

/**
 * After a macOS install: keeps the password for the first boot when the
 * installed image and this host can provision unattended, and returns the
 * one line to print when they cannot.
 */
export async function applyMacProvisioning(
  bundle: Bundle,
  opts: { password: string; host: { macosVersion?: string }; waitSeconds?: number },
): Promise<ProvisioningPlan> {
  const rec = await readInstallRecord(bundle);
  const plan = provisioningPlan(opts.host, rec?.restoreImage, true);
  if (!rec || !plan.unattended) return plan;
  await storePassword(bundle, opts.password);
  await writeInstallRecord(bundle, {
    ...rec,
    provisioning: true,
    ...(opts.waitSeconds !== undefined ? { waitSeconds: opts.waitSeconds } : {}),
  });
  return plan;
}

/** How far a macOS guest's first boot got, for `cove get` and create's wait. */
export function provisionState(rec: InstallRecord | undefined): string | undefined {
  if (!rec?.provisioning) return undefined;
  if (rec.keysInstalledAt) return `done (${rec.keysInstalledAt})`;
  if (rec.lastProvisionError) return `failed: ${rec.lastProvisionError}`;
  if (rec.guestProvisionedAt) return "waiting for ssh";
  return "at the first boot";
}

/**
 * Waits (bounded) until the first boot has installed cove's key, or failed,
 * or the VM stopped; throws one line naming the logs when it did not finish.
 */
export async function waitFirstBoot(bundle: Bundle, seconds: number): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (true) {
    const rec = await readInstallRecord(bundle);
    if (rec?.keysInstalledAt) return;
    if (rec?.lastProvisionError) {
      throw new CoveError("provision.first_boot", rec.lastProvisionError, {
        hint: `see ${bundle.consoleLog} and ${bundle.supervisorLog}`,
        exit: ExitCode.State,
      });
    }
    if (!(await bundle.isRunning())) {
      throw new CoveError(
        "provision.stopped",
        `VM '${bundle.name}' stopped before its first boot finished; see ${bundle.consoleLog} and ${bundle.supervisorLog}`,
        { hint: `start it again with 'cove start ${bundle.name}'`, exit: ExitCode.State },
      );
    }
    if (Date.now() >= deadline) {
      throw new CoveError(
        "provision.ssh_timeout",
        `VM '${bundle.name}' did not finish its first boot within ${seconds}s; see ${bundle.consoleLog} and ${bundle.supervisorLog}`,
        { hint: "it keeps running; 'cove get' shows how far it got", exit: ExitCode.State },
      );
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** The macOS lines of `cove get`: iCloud, first-boot provisioning, ISO keyboard. */
export async function macosDetails(
  bundle: Bundle,
  spec: VmSpec,
  machineIdentifier: string | undefined,
): Promise<{ icloud: string; provision?: string; keyboard?: string }> {
  const rec = await readInstallRecord(bundle);
  const icloud = rec
    ? icloudStatus(rec, {
      hostIdentity: await hostIdentityHash(),
      machineIdentity: machineIdentifier ? await sha256Hex(machineIdentifier) : undefined,
    })
    : "not known (no install record: installed by another tool)";
  const iso = keyboardLayout(spec.keyboard) === "iso";
  return {
    icloud,
    ...(provisionState(rec) ? { provision: provisionState(rec) } : {}),
    ...(iso
      ? {
        keyboard: rec?.keyboardAgentAt
          ? `iso (hidutil LaunchAgent installed ${rec.keyboardAgentAt})`
          : "iso (hidutil LaunchAgent installed at the first boot's key install)",
      }
      : {}),
  };
}
