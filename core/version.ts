/**
 * cove's version: the one place it is written. `make build` and the release
 * script read it from here.
 * @module
 */

/** The cove version (semver). */
export const VERSION = "0.1.0";
