/**
 * URLs as cove shows and records them: a download URL may carry a password
 * (`https://user:pass@host/…`) or a token in its query string (signed S3
 * links, `?token=…`), which must not reach error lines, progress output,
 * `cove image ls` or index.json. The real URL is still what is fetched.
 * @module
 */
import { createHash } from "node:crypto";

/** The URL without userinfo, query string or fragment; non-URLs are returned as they are. */
export function displayUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return url;
  }
  if (!u.username && !u.password && !u.search && !u.hash) return url;
  const hidden = u.search || u.hash ? "?…" : "";
  u.username = "";
  u.password = "";
  u.search = "";
  u.hash = "";
  return u.toString() + hidden;
}

/**
 * The key a URL is recorded under: itself when it carries no secrets,
 * otherwise a hash of it (so the exact URL still finds its blob, but
 * index.json never holds the secret).
 */
export function urlKey(url: string): string {
  return displayUrl(url) === url
    ? url
    : `url-sha256:${createHash("sha256").update(url).digest("hex")}`;
}
