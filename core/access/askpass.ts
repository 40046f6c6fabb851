/**
 * Installs public keys into a guest account that so far only has a password,
 * over one ssh session, the way a person would with ssh-copy-id, but with no
 * prompt and no password anywhere in argv: ssh asks an SSH_ASKPASS helper
 * (SSH_ASKPASS_REQUIRE=force), a two-line script that prints a 0600 file
 * named in its environment. Helper and file live in a 0700 directory that is
 * removed when the session ends. No sshpass.
 *
 * The keys go over stdin and are appended to ~/.ssh/authorized_keys unless
 * already there; an extra script (the ISO keyboard LaunchAgent) may run in the
 * same session. {@link verifyKeyLogin} then proves the key alone logs in.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import type { Bundle } from "../store/bundle.ts";
import { hostKeyAlias, hostOptions, spawnSshProcess } from "./ssh.ts";

/** Where and as whom to log in. */
export interface AskpassTarget {
  host: string;
  port: number;
  user: string;
  /** The known_hosts file and the alias the host key is pinned under. */
  knownHosts: string;
  hostKeyAlias: string;
}

/** Options of {@link installKeysWithPassword}. */
export interface InstallKeysOptions extends AskpassTarget {
  password: string;
  /** Public keys, one per entry (OpenSSH format). */
  keys: string[];
  /** Shell run after the keys, in the same session (POSIX sh). */
  remoteScript?: string;
  /** The ssh binary; default `ssh`. */
  ssh?: string;
  /** Give up at this time (ms since the epoch); default 60 s from now. */
  deadline?: number;
}

/** The ssh target of a bundle's VM. */
export function bundleTarget(
  bundle: Bundle,
  user: string,
  addr: { host: string; port: number },
): AskpassTarget {
  return {
    host: addr.host,
    port: addr.port,
    user,
    knownHosts: bundle.knownHostsPath,
    hostKeyAlias: hostKeyAlias(bundle),
  };
}

/** The shell that appends each key read from stdin once, then runs `extra`. */
export function authorizedKeysScript(extra?: string): string {
  const add = [
    "umask 077",
    'mkdir -p "$HOME/.ssh"',
    'touch "$HOME/.ssh/authorized_keys"',
    'while IFS= read -r k; do [ -n "$k" ] || continue; grep -qxF "$k" "$HOME/.ssh/authorized_keys" || printf \'%s\\n\' "$k" >> "$HOME/.ssh/authorized_keys"; done',
    'chmod 700 "$HOME/.ssh"',
    'chmod 600 "$HOME/.ssh/authorized_keys"',
  ].join(" && ");
  return extra ? `${add} && ${extra}` : add;
}

function commonArgs(t: AskpassTarget): string[] {
  return [...hostOptions(t.knownHosts, t.hostKeyAlias), "-p", String(t.port)];
}

async function runSsh(
  bin: string,
  args: string[],
  env: Record<string, string>,
  stdin: string,
  timeoutMs: number,
): Promise<{ code: number; stderr: string }> {
  const child = spawnSshProcess(bin, {
    args,
    env,
    stdin: "piped",
    stdout: "null",
    stderr: "piped",
  });
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, Math.max(1000, timeoutMs));
  try {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin)).catch(() => {});
    await w.close().catch(() => {});
    const out = await child.output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr).trim() };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Logs in with the password (through the askpass helper) and installs the
 * keys. Rejects with one line when ssh fails (refused, wrong password, no
 * such user yet).
 */
export async function installKeysWithPassword(opts: InstallKeysOptions): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cove-askpass-" });
  try {
    await Deno.chmod(dir, 0o700);
    const secret = join(dir, "password");
    await Deno.writeTextFile(secret, opts.password + "\n", { mode: 0o600 });
    await Deno.chmod(secret, 0o600);
    const helper = join(dir, "askpass");
    // Reads the password from the file its environment names; takes nothing from argv.
    await Deno.writeTextFile(helper, '#!/bin/sh\nexec cat "$COVE_ASKPASS_FILE"\n', { mode: 0o700 });
    await Deno.chmod(helper, 0o700);
    const args = [
      ...commonArgs(opts),
      "-o",
      "PreferredAuthentications=keyboard-interactive,password",
      "-o",
      "PubkeyAuthentication=no",
      "-o",
      "NumberOfPasswordPrompts=1",
      "-o",
      "BatchMode=no",
      "-T",
      `${opts.user}@${opts.host}`,
      "--",
      authorizedKeysScript(opts.remoteScript),
    ];
    const env = {
      SSH_ASKPASS: helper,
      SSH_ASKPASS_REQUIRE: "force",
      COVE_ASKPASS_FILE: secret,
      // Some ssh builds only use SSH_ASKPASS with a DISPLAY set.
      DISPLAY: Deno.env.get("DISPLAY") ?? ":0",
    };
    const deadline = opts.deadline ?? Date.now() + 60_000;
    const r = await runSsh(
      opts.ssh ?? "ssh",
      args,
      env,
      opts.keys.map((k) => k.trim()).filter(Boolean).join("\n") + "\n",
      Math.min(120_000, deadline - Date.now()),
    );
    if (r.code !== 0) {
      throw new CoveError(
        "provision.key_install",
        `installing ssh keys for '${opts.user}' at ${opts.host}:${opts.port} failed (ssh exit ${r.code}${
          r.stderr ? `: ${r.stderr.split("\n").pop()}` : ""
        })`,
        { hint: "check that the guest's account and Remote Login exist", exit: ExitCode.State },
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Proves that the private key alone (no password) logs in; rejects with one line if not. */
export async function verifyKeyLogin(
  t: AskpassTarget,
  privateKey: string,
  opts: { ssh?: string; timeoutMs?: number } = {},
): Promise<void> {
  const args = [
    ...commonArgs(t),
    "-o",
    "BatchMode=yes",
    "-o",
    "PasswordAuthentication=no",
    "-o",
    "KbdInteractiveAuthentication=no",
    "-o",
    "IdentitiesOnly=yes",
    "-i",
    privateKey,
    "-T",
    `${t.user}@${t.host}`,
    "--",
    "true",
  ];
  const r = await runSsh(opts.ssh ?? "ssh", args, {}, "", opts.timeoutMs ?? 30_000);
  if (r.code !== 0) {
    throw new CoveError(
      "provision.key_login",
      `cove's key does not log in as '${t.user}' at ${t.host}:${t.port} (ssh exit ${r.code})`,
      { hint: "check ~/.ssh/authorized_keys in the guest", exit: ExitCode.State },
    );
  }
}
