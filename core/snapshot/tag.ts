/**
 * The shape of a snapshot tag, in a module of its own (no imports), so that
 * the supervisor client can check a tag a supervisor sent without loading
 * the snapshot code.
 * @module
 */

/** The rule for snapshot tags, shown in errors. */
export const TAG_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit";

/** The characters and length of a tag (see {@link isTag} for the whole rule). */
export const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** True when `tag` is a valid snapshot tag: it names a directory in snapshots/ and no other path. */
export function isTag(tag: unknown): tag is string {
  return typeof tag === "string" && TAG_RE.test(tag) && !tag.includes("..");
}
