/**
 * OCI image references: `[host[:port]/]repository[:tag][@sha256:hex]`, with
 * an optional `oci://` prefix, and Docker Hub's defaults (`docker.io`,
 * `library/` for one-word names, tag `latest`). The first path component is
 * a registry host when it has a `.` or a `:`, or is `localhost`, as in
 * Docker's grammar.
 *
 * @example
 * ```ts
 * const r = parseReference("ghcr.io/cirruslabs/macos-sequoia-base:latest");
 * r.registry; // "ghcr.io"
 * r.repository; // "cirruslabs/macos-sequoia-base"
 * formatReference(r); // "ghcr.io/cirruslabs/macos-sequoia-base:latest"
 * ```
 * @module
 */
import { usageError } from "../errors.ts";

/** A parsed image reference. */
export interface Reference {
  /** Registry host as written, with port: `ghcr.io`, `localhost:5000`, `docker.io`. */
  registry: string;
  /** Repository path: `cirruslabs/macos-sequoia-base`, `library/debian`. */
  repository: string;
  /** Tag, when given or defaulted (`latest` when there is no digest). */
  tag?: string;
  /** Manifest digest (`sha256:<64 hex>`), when given. */
  digest?: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const HOST =
  /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]{1,5})?$/;

/** Docker Hub's name as users write it. */
export const DOCKER_HUB = "docker.io";

function bad(input: string, why: string): never {
  throw usageError(
    "oci.bad_reference",
    `'${input}' is not an image reference: ${why}`,
    "write it as host/repository:tag, e.g. ghcr.io/cirruslabs/macos-sequoia-base:latest",
  );
}

/**
 * True when `s` names a registry reference rather than a VM or a path: it
 * starts with `oci://`, or it has a `/` and is not a path (`/...`, `./...`).
 * No VM name has a `/`, so a malformed reference is still one, and parsing
 * it says what is wrong. `cove clone` decides with this.
 */
export function looksLikeReference(s: string): boolean {
  if (s.startsWith("oci://")) return true;
  return s.includes("/") && !s.startsWith("/") && !s.startsWith(".");
}

/** Parses a reference; throws a usage error naming what is wrong. */
export function parseReference(input: string): Reference {
  let s = input.trim();
  if (s.startsWith("oci://")) s = s.slice("oci://".length);
  if (s === "") bad(input, "it is empty");
  if (/\s/.test(s)) bad(input, "it contains spaces");
  if (/^[a-z]+:\/\//i.test(s)) bad(input, "leave out the URL scheme");

  let digest: string | undefined;
  const at = s.indexOf("@");
  if (at >= 0) {
    digest = s.slice(at + 1);
    s = s.slice(0, at);
    if (!DIGEST.test(digest)) bad(input, `'${digest}' is not a sha256 digest`);
  }

  let registry = DOCKER_HUB;
  const slash = s.indexOf("/");
  if (slash > 0) {
    const first = s.slice(0, slash);
    if (
      first.includes(".") || first.includes(":") || first === "localhost" || first.startsWith("[")
    ) {
      if (!HOST.test(first)) bad(input, `'${first}' is not a host name`);
      registry = first;
      s = s.slice(slash + 1);
    }
  }

  let tag: string | undefined;
  const lastSlash = s.lastIndexOf("/");
  const colon = s.lastIndexOf(":");
  if (colon > lastSlash) {
    tag = s.slice(colon + 1);
    s = s.slice(0, colon);
    if (!TAG.test(tag)) bad(input, `'${tag}' is not a valid tag`);
  }

  if (s === "") bad(input, "the repository name is missing");
  const parts = s.split("/");
  for (const p of parts) {
    if (!COMPONENT.test(p)) {
      bad(
        input,
        `'${p}' is not a valid repository name component (lower case letters, digits, '.', '_', '-')`,
      );
    }
  }
  let repository = s;
  if (registry === DOCKER_HUB && parts.length === 1) repository = `library/${s}`;
  if (repository.length > 255) bad(input, "the repository name is too long");

  if (!tag && !digest) tag = "latest";
  return { registry, repository, tag, digest };
}

/** The canonical text of a reference: `host/repo:tag`, `host/repo@digest` or both. */
export function formatReference(r: Reference): string {
  let s = `${r.registry}/${r.repository}`;
  if (r.tag) s += `:${r.tag}`;
  if (r.digest) s += `@${r.digest}`;
  return s;
}

/** What a manifest is fetched by: the digest when known, else the tag. */
export function manifestReference(r: Reference): string {
  return r.digest ?? r.tag ?? "latest";
}

/** The host the Registry HTTP API is served from (Docker Hub's differs from its name). */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB || registry === "index.docker.io"
    ? "registry-1.docker.io"
    : registry;
}

/** Normalises a registry given to `login`/`logout` (accepts URLs and Docker Hub aliases). */
export function normalizeRegistry(input: string): string {
  let s = input.trim().replace(/^[a-z]+:\/\//i, "");
  s = s.split("/")[0];
  if (s === "index.docker.io" || s === "registry-1.docker.io") s = DOCKER_HUB;
  if (!s || !HOST.test(s)) {
    throw usageError(
      "oci.bad_registry",
      `'${input}' is not a registry host`,
      "give a host such as ghcr.io or localhost:5000",
    );
  }
  return s.toLowerCase();
}
