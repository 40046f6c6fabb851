/**
 * cove's own SSH key pair, `$COVE_HOME/ssh/id_ed25519{,.pub}`: generated
 * once with the system `ssh-keygen`, put into every cloud-init seed whose
 * spec lists no keys of its own, and used by `cove ssh` / `cove exec`.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import { coveHome } from "../store/store.ts";

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

/** Returns cove's key pair, generating it with ssh-keygen on first use. */
export async function ensureCoveKey(home = coveHome()): Promise<CoveKey> {
  const k = coveKeyPaths(home);
  const have = await Promise.all(
    [k.privateKey, k.publicKey].map((p) => Deno.stat(p).then(() => true, () => false)),
  );
  if (have[0] && have[1]) return k;
  await Deno.mkdir(join(home, "ssh"), { recursive: true, mode: 0o700 });
  // A half-made pair (one file) is replaced.
  await Deno.remove(k.privateKey).catch(() => {});
  await Deno.remove(k.publicKey).catch(() => {});
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("ssh-keygen", {
      args: ["-q", "-t", "ed25519", "-N", "", "-C", "cove", "-f", k.privateKey],
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
  await Deno.chmod(k.privateKey, 0o600);
  return k;
}

/** The public key line of cove's key pair, generating the pair if needed. */
export async function coveAuthorizedKey(home = coveHome()): Promise<string> {
  const k = await ensureCoveKey(home);
  return (await Deno.readTextFile(k.publicKey)).trim();
}
