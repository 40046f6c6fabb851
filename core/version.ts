/**
 * cove's version. It is written once, as `version` in deno.json; `make
 * build`, the release script and `cove --version` read it from there.
 * @module
 */
import meta from "../deno.json" with { type: "json" };

/** The cove version (semver). */
export const VERSION: string = meta.version;
