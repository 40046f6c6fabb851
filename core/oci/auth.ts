/**
 * Registry credentials: where they come from and how they are kept.
 *
 * Looked up in order: `COVE_REGISTRY_USERNAME`/`COVE_REGISTRY_PASSWORD`
 * (for CI), cove's own logins in `$COVE_HOME/auth.json` (mode 0600, written
 * by `cove login`), then Docker's `~/.docker/config.json` (or
 * `$DOCKER_CONFIG/config.json`): `credHelpers`, inline `auths`, then
 * `credsStore`. Credential helpers (`docker-credential-<name> get`) get the
 * host on stdin, never in argv.
 *
 * Secrets never reach logs, argv or error messages: errors name the host and
 * the source, and {@link redact} scrubs any text that came back from a
 * registry or a helper.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import { writeFileAtomic } from "../store/fsutil.ts";
import { DOCKER_HUB } from "./reference.ts";

/** A username and secret for one registry. */
export interface Credentials {
  username: string;
  /** Password or token. When `username` is `<token>`, an identity (refresh) token. */
  secret: string;
  /** Where they came from, for messages: "cove login", "docker config", "docker-credential-pass". */
  source: string;
}

/** A place credentials can come from; tests inject their own. */
export type CredentialLookup = (registry: string) => Promise<Credentials | undefined>;

interface AuthFile {
  version: 1;
  auths: Record<string, { username: string; password: string }>;
}

/** `$COVE_HOME/auth.json`. */
export function authFilePath(home: string): string {
  return join(home, "auth.json");
}

async function readAuthFile(path: string): Promise<AuthFile> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { version: 1, auths: {} };
    throw e;
  }
  try {
    const parsed = JSON.parse(text) as Partial<AuthFile>;
    return { version: 1, auths: parsed.auths ?? {} };
  } catch (e) {
    throw new CoveError("oci.auth_file", `${path} is not valid JSON`, {
      hint: "fix or delete it, then run 'cove login' again",
      cause: e,
    });
  }
}

/** Stores a login in `$COVE_HOME/auth.json` (0600). */
export async function saveLogin(
  home: string,
  registry: string,
  username: string,
  password: string,
): Promise<void> {
  await Deno.mkdir(home, { recursive: true, mode: 0o700 });
  const path = authFilePath(home);
  const f = await readAuthFile(path);
  f.auths[registry] = { username, password };
  await writeFileAtomic(path, JSON.stringify(f, null, 2) + "\n");
  await Deno.chmod(path, 0o600);
}

/** Removes a login; returns false when there was none. */
export async function removeLogin(home: string, registry: string): Promise<boolean> {
  const path = authFilePath(home);
  const f = await readAuthFile(path);
  if (!(registry in f.auths)) return false;
  delete f.auths[registry];
  await writeFileAtomic(path, JSON.stringify(f, null, 2) + "\n");
  return true;
}

/** The registries cove has logins for. */
export async function listLogins(home: string): Promise<string[]> {
  return Object.keys((await readAuthFile(authFilePath(home))).auths).sort();
}

/** The keys Docker's config may use for a registry. */
function dockerKeys(registry: string): string[] {
  if (registry === DOCKER_HUB) {
    return ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"];
  }
  return [registry, `https://${registry}`, `http://${registry}`];
}

function normKey(k: string): string {
  return k.replace(/^[a-z]+:\/\//i, "").replace(/\/.*$/, "");
}

interface DockerConfig {
  auths?: Record<
    string,
    { auth?: string; username?: string; password?: string; identitytoken?: string }
  >;
  credsStore?: string;
  credHelpers?: Record<string, string>;
}

function findKey<T>(map: Record<string, T> | undefined, registry: string): T | undefined {
  if (!map) return undefined;
  for (const k of dockerKeys(registry)) if (k in map) return map[k];
  const target = normKey(dockerKeys(registry)[0]);
  for (const [k, v] of Object.entries(map)) if (normKey(k) === target) return v;
  return undefined;
}

/** Runs `docker-credential-<helper> get` with the host on stdin. */
export async function runCredentialHelper(
  helper: string,
  registry: string,
): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9_.-]+$/.test(helper)) return undefined;
  const bin = `docker-credential-${helper}`;
  const serverUrl = registry === DOCKER_HUB ? "https://index.docker.io/v1/" : registry;
  let out: Deno.CommandOutput;
  try {
    const child = new Deno.Command(bin, {
      args: ["get"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(serverUrl + "\n"));
    await w.close();
    out = await child.output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new CoveError(
        "oci.cred_helper",
        `credential helper '${bin}' named in your Docker config is not installed`,
        {
          hint: `install ${bin}, or log in with 'cove login ${registry}'`,
          exit: ExitCode.Host,
          cause: e,
        },
      );
    }
    throw e;
  }
  if (!out.success) return undefined; // "credentials not found" and the like
  try {
    const j = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      Username?: string;
      Secret?: string;
    };
    if (!j.Secret) return undefined;
    return { username: j.Username ?? "", secret: j.Secret, source: bin };
  } catch {
    throw new CoveError(
      "oci.cred_helper",
      `credential helper '${bin}' printed something that is not JSON`,
      {
        hint: `check '${bin} list', or log in with 'cove login ${registry}'`,
      },
    );
  }
}

/** Reads credentials for `registry` from Docker's config and helpers. */
export async function dockerCredentials(registry: string): Promise<Credentials | undefined> {
  const dir = Deno.env.get("DOCKER_CONFIG") ??
    (Deno.env.get("HOME") ? join(Deno.env.get("HOME")!, ".docker") : "");
  if (!dir) return undefined;
  let cfg: DockerConfig;
  try {
    cfg = JSON.parse(await Deno.readTextFile(join(dir, "config.json"))) as DockerConfig;
  } catch {
    return undefined;
  }
  const helper = findKey(cfg.credHelpers, registry);
  if (helper) return await runCredentialHelper(helper, registry);
  const entry = findKey(cfg.auths, registry);
  if (entry?.identitytoken) {
    return { username: "<token>", secret: entry.identitytoken, source: "docker config" };
  }
  if (entry?.auth) {
    try {
      const text = new TextDecoder().decode(
        Uint8Array.from(atob(entry.auth), (c) => c.charCodeAt(0)),
      );
      const i = text.indexOf(":");
      if (i > 0) {
        return { username: text.slice(0, i), secret: text.slice(i + 1), source: "docker config" };
      }
    } catch { /* not base64: ignore the entry */ }
  }
  if (entry?.username && entry.password) {
    return { username: entry.username, secret: entry.password, source: "docker config" };
  }
  if (cfg.credsStore) return await runCredentialHelper(cfg.credsStore, registry);
  return undefined;
}

/** The default lookup chain: environment, cove's logins, Docker's config. */
export function defaultCredentialLookup(home: string): CredentialLookup {
  return async (registry) => {
    const u = Deno.env.get("COVE_REGISTRY_USERNAME");
    const p = Deno.env.get("COVE_REGISTRY_PASSWORD");
    if (u && p) return { username: u, secret: p, source: "COVE_REGISTRY_USERNAME/PASSWORD" };
    const own = (await readAuthFile(authFilePath(home))).auths[registry];
    if (own) return { username: own.username, secret: own.password, source: "cove login" };
    return await dockerCredentials(registry);
  };
}

/** A parsed `WWW-Authenticate` challenge. */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses `Bearer realm="...",service="...",scope="..."` (quoted commas allowed). */
export function parseChallenge(header: string): Challenge | undefined {
  const m = /^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?/gy;
  const rest = m[2];
  let k: RegExpExecArray | null;
  while (re.lastIndex < rest.length && (k = re.exec(rest)) !== null) {
    params[k[1].toLowerCase()] = k[2] !== undefined ? k[2].replace(/\\(.)/g, "$1") : k[3];
  }
  return { scheme: m[1].toLowerCase(), params };
}

/** Replaces every occurrence of the given secrets (and their Basic encoding) in `text`. */
export function redact(text: string, secrets: (string | undefined)[]): string {
  let out = text;
  for (const s of secrets) {
    if (!s || s.length < 3) continue;
    out = out.split(s).join("***");
  }
  return out.replace(/(Bearer|Basic)\s+[A-Za-z0-9+/=._~-]{8,}/gi, "$1 ***");
}
