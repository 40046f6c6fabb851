/**
 * cove's own SSH key pair, `$COVE_HOME/ssh/id_ed25519{,.pub}`: generated
 * once with the system `ssh-keygen`, put into every cloud-init seed whose
 * spec lists no keys of its own, and used by `cove ssh` / `cove exec`.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import { coveHome } from "../store/store.ts";
import { withFileLock } from "../store/fsutil.ts";

/** The paths of cove's key pair. */
export interface CoveKey {
  privateKey: string;
  publicKey: string;
}

/** Where the key pair lives (whether or not it exists yet). */
export function coveKeyPaths(home = coveHome()): CoveKey {
  const dir = join(home, "ssh");
  return { privateKey: join(dir, "id_ed25519"), publicKey: join(dir, "id_ed25519.pub") };
}

/** Whether both halves of the pair exist. */
async function havePair(k: CoveKey): Promise<boolean> {
  const have = await Promise.all(
    [k.privateKey, k.publicKey].map((p) => Deno.stat(p).then(() => true, () => false)),
  );
  return have[0] && have[1];
}

/**
 * Returns cove's key pair, generating it with ssh-keygen on first use.
 * Processes that start at once take `ssh/.lock` in turn; the pair is made
 * under a temporary name and renamed into place (public half last), so
 * nobody sees or clobbers a half-made pair.
 */
export async function ensureCoveKey(home = coveHome()): Promise<CoveKey> {
  const k = coveKeyPaths(home);
  if (await havePair(k)) return k;
  const dir = join(home, "ssh");
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  return await withFileLock(join(dir, ".lock"), async () => {
    if (await havePair(k)) return k; // made by another process meanwhile
    const tmp = join(dir, `.id_ed25519.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}`);
    try {
      await generate(tmp);
      await Deno.chmod(tmp, 0o600);
      // A half-made pair (one file) is replaced.
      await Deno.rename(tmp, k.privateKey);
      await Deno.rename(`${tmp}.pub`, k.publicKey);
    } finally {
      await Deno.remove(tmp).catch(() => {});
      await Deno.remove(`${tmp}.pub`).catch(() => {});
    }
    return k;
  });
}

/** Runs ssh-keygen to make a new pair at `path` and `path.pub`. */
async function generate(path: string): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("ssh-keygen", {
      args: ["-q", "-t", "ed25519", "-N", "", "-C", "cove", "-f", path],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new CoveError(
      "ssh.keygen_missing",
      "cannot generate cove's SSH key: ssh-keygen is not installed",
      {
        hint:
          "install OpenSSH (the openssh-client package), or list your keys in provision.sshKeys",
        exit: ExitCode.Host,
        cause: e,
      },
    );
  }
  if (!out.success) {
    const msg = new TextDecoder().decode(out.stderr).trim().split("\n")[0];
    throw new CoveError("ssh.keygen", `ssh-keygen failed: ${msg}`, { exit: ExitCode.Host });
  }
}

/** The public key line of cove's key pair, generating the pair if needed. */
export async function coveAuthorizedKey(home = coveHome()): Promise<string> {
  const k = await ensureCoveKey(home);
  return (await Deno.readTextFile(k.publicKey)).trim();
}
