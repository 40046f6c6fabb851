/**
 * VM images in OCI registries, in Tart's format: the library API behind
 * `cove pull`, `cove push`, `cove login`/`logout`, `cove create --from
 * oci://REF` and `cove clone REF NEW`, and the OCI part of `cove image
 * ls`/`prune`.
 *
 * @example
 * ```ts
 * const store = new Store();
 * await createFromOci(store, "ci", "ghcr.io/cirruslabs/macos-sequoia-base:latest");
 * await pushVm(store, "ci", ["ghcr.io/me/ci:1"], { home: store.home });
 * ```
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import { defaultCredentialLookup, removeLogin, saveLogin } from "./auth.ts";
import { OciCache } from "./cache.ts";
import { normalizeRegistry } from "./reference.ts";
import { RegistryClient, type RegistryOptions } from "./registry.ts";

export { type PulledImage, pullImage, type PullOptions, type PullProgress } from "./pull.ts";
export { type PushOptions, type PushProgress, type PushResult, pushVm } from "./push.ts";
export {
  formatReference,
  looksLikeReference,
  normalizeRegistry,
  parseReference,
  type Reference,
} from "./reference.ts";
export { OciCache } from "./cache.ts";
export {
  type CreatedFromOci,
  createFromOci,
  type CreateFromOciOptions,
  ociSourceHandler,
} from "./create.ts";
export { specFromTart, type TartConfig, tartFromSpec } from "./tart.ts";

/** The OCI cache of a COVE_HOME, for `cove image ls`/`prune` (a CacheProvider). */
export function ociCache(home: string): OciCache {
  return new OciCache(join(home, "cache"));
}

/** Options of {@link loginRegistry}. */
export interface LoginOptions
  extends Pick<RegistryOptions, "insecure" | "retries" | "backoffMs" | "timeoutMs"> {
  home: string;
}

/**
 * Checks credentials against the registry, then stores them in
 * `$COVE_HOME/auth.json` (0600). Returns the normalised host.
 */
export async function loginRegistry(
  host: string,
  username: string,
  password: string,
  opts: LoginOptions,
): Promise<string> {
  const registry = normalizeRegistry(host);
  if (!username) {
    throw new CoveError("oci.login", "a username is required", {
      hint: "pass --username",
      exit: ExitCode.Usage,
    });
  }
  if (!password) {
    throw new CoveError("oci.login", "a password is required", {
      hint: "pipe it to --password-stdin",
      exit: ExitCode.Usage,
    });
  }
  const client = new RegistryClient(registry, "", {
    ...opts,
    credentials: () =>
      Promise.resolve({ username, secret: password, source: "the given password" }),
  });
  try {
    await client.ping();
  } catch (e) {
    if (e instanceof CoveError && (e.code === "oci.unauthorized" || e.code === "oci.denied")) {
      throw new CoveError(
        "oci.login_failed",
        `login to '${registry}' failed: the username or password was refused`,
        {
          hint: "check them; for GitHub and GitLab use a token as the password",
          exit: ExitCode.Network,
        },
      );
    }
    throw e;
  }
  await saveLogin(opts.home, registry, username, password);
  return registry;
}

/** Forgets cove's login for a registry; false when there was none. */
export async function logoutRegistry(host: string, home: string): Promise<boolean> {
  return await removeLogin(home, normalizeRegistry(host));
}

/** The credential lookup cove uses (environment, cove logins, Docker config). */
export { defaultCredentialLookup };
