/**
 * The version `cove --version` prints, read from deno.json (where it is
 * written once, see core/version.ts) without loading the library.
 * @module
 */
import meta from "../deno.json" with { type: "json" };

/** The cove version (semver). */
export const VERSION: string = meta.version;
