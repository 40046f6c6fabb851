/**
 * `cove ssh` and `cove exec`: run the system `ssh` against a running VM
 * with cove's key ({@link ./keys.ts}), a known_hosts file kept in the
 * bundle (host keys are pinned per VM through `HostKeyAlias`, so a new
 * forwarded port or DHCP address does not trip host key checking), and the
 * user and port from the spec. The guest command's exit status is
 * returned, to become cove's.
 *
 * Command arguments are quoted one by one for the guest's shell, so
 * `cove exec vm -- echo "a b"` passes one argument; write
 * `-- sh -c 'a | b'` for shell syntax.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import type { VmSpec } from "../spec/schema.ts";
import type { Bundle } from "../store/bundle.ts";
import { type AddressOptions, type GuestAddress, guestAddress } from "./address.ts";
import { coveKeyPaths } from "./keys.ts";
import { hasSeedDisk, SEED_STATE } from "../provision/seed.ts";

/**
 * A guest command that succeeds once cloud-init has finished booting the
 * seed's instance (its `boot-finished` marker), or at once in a guest
 * without cloud-init. Polled: `cloud-init status --wait` returns early for
 * non-root users on some releases.
 */
async function cloudInitDone(bundle: Bundle): Promise<string[]> {
  let id: string | undefined;
  try {
    id =
      (JSON.parse(await Deno.readTextFile(join(bundle.dir, SEED_STATE))) as { instanceId?: string })
        .instanceId;
  } catch { /* no state: any finished instance */ }
  const marker = id && /^[A-Za-z0-9_.-]+$/.test(id)
    ? `/var/lib/cloud/instances/${id}/boot-finished`
    : "/var/lib/cloud/instance/boot-finished";
  return ["sh", "-c", `test ! -d /var/lib/cloud || test -e ${marker}`];
}

/** The alias a VM's host key is pinned under in its known_hosts. */
export function hostKeyAlias(bundle: Bundle): string {
  return `cove-${bundle.name}`;
}

/**
 * The ssh options of every cove session with a guest: the VM's own
 * known_hosts, its host key pinned under `alias` (accepted the first time),
 * quiet logs and a 10 s connect timeout.
 */
export function hostOptions(knownHosts: string, alias: string): string[] {
  return [
    "-o",
    `UserKnownHostsFile=${knownHosts}`,
    "-o",
    "StrictHostKeyChecking=accept-new",
    "-o",
    `HostKeyAlias=${alias}`,
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=10",
  ];
}

/** Spawns ssh (`bin`); an ssh that is not installed is the one-line `ssh.missing`. */
export function spawnSshProcess(bin: string, options: Deno.CommandOptions): Deno.ChildProcess {
  try {
    return new Deno.Command(bin, options).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new CoveError("ssh.missing", "cannot run ssh: it is not installed", {
        hint: "install OpenSSH's client (the openssh-client package)",
        exit: ExitCode.Host,
        cause: e,
      });
    }
    throw e;
  }
}

/** Options of {@link sshArgs} and {@link runSsh}. */
export interface SshOptions extends AddressOptions {
  /** The command to run; none for an interactive shell. */
  command?: string[];
  /** auto: a TTY for interactive use only; never: no TTY (cove exec). */
  tty?: "auto" | "never";
  /** Where cove's key lives; default $COVE_HOME. */
  home?: string;
  /** The ssh binary; default `ssh`. */
  ssh?: string;
}

/** Quotes one argument for a POSIX shell. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/** The ssh argument list (without the binary) for an address. */
export async function sshArgs(
  bundle: Bundle,
  spec: VmSpec,
  addr: GuestAddress,
  opts: SshOptions = {},
): Promise<string[]> {
  const key = coveKeyPaths(opts.home).privateKey;
  const haveKey = await Deno.stat(key).then(() => true, () => false);
  const a = [
    ...hostOptions(bundle.knownHostsPath, hostKeyAlias(bundle)),
    "-o",
    "ServerAliveInterval=30",
    "-p",
    String(addr.port),
  ];
  if (haveKey) a.push("-i", key);
  if (opts.tty === "never") a.push("-T", "-o", "BatchMode=yes");
  else if (!opts.command?.length && Deno.stdin.isTerminal()) a.push("-t");
  a.push(`${spec.provision.user}@${addr.host}`);
  if (opts.command?.length) a.push("--", opts.command.map(shellQuote).join(" "));
  return a;
}

async function spawnSsh(bin: string, args: string[], quiet: boolean): Promise<number> {
  const io = quiet ? "null" : "inherit";
  const child = spawnSshProcess(bin, { args, stdin: io, stdout: io, stderr: io });
  return (await child.status).code;
}

/**
 * Runs ssh against the VM and returns its exit status. With `waitSeconds`,
 * first waits for an address and for the SSH server to accept cove's key,
 * and, on a VM with a cloud-init seed, for cloud-init's first boot to
 * finish (users, mounts and provision.commands are then in place).
 */
export async function runSsh(bundle: Bundle, spec: VmSpec, opts: SshOptions = {}): Promise<number> {
  const bin = opts.ssh ?? "ssh";
  const wait = opts.waitSeconds ?? 0;
  const deadline = Date.now() + wait * 1000;
  let addr = await guestAddress(bundle, spec, opts);
  if (wait > 0) {
    // Probe until the guest's sshd lets us in and cloud-init is done (exit 0).
    const command = hasSeedDisk(spec) ? await cloudInitDone(bundle) : ["true"];
    let ready = false;
    while (Date.now() < deadline) {
      const probe = await sshArgs(bundle, spec, addr, { ...opts, command, tty: "never" });
      if ((await spawnSsh(bin, probe, true)) === 0) {
        ready = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 2000));
      const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
      addr = await guestAddress(bundle, spec, { ...opts, waitSeconds: left });
    }
    if (!ready) {
      throw new CoveError(
        "vm.ssh_timeout",
        `VM '${bundle.name}' did not accept ssh${
          hasSeedDisk(spec) ? " (or finish cloud-init)" : ""
        } within ${wait}s`,
        { hint: "wait longer with --wait, or check the guest boots", exit: ExitCode.State },
      );
    }
  }
  if (wait === 0) {
    // Without --wait, a guest whose sshd is not up yet gets cove's one line, not ssh's raw
    // kex_exchange_identification error (exit 255).
    const { sshAnswers } = await import("../agent/via.ts");
    if (!(await sshAnswers(bundle, spec, opts.status, 3000))) {
      throw new CoveError(
        "vm.ssh_timeout",
        `VM '${bundle.name}' does not answer ssh at ${addr.host}:${addr.port} yet (its sshd is not up)`,
        { hint: `wait for it: cove ssh ${bundle.name} --wait 2m`, exit: ExitCode.State },
      );
    }
  }
  return await spawnSsh(bin, await sshArgs(bundle, spec, addr, opts), false);
}
