/**
 * Every cache cove keeps, as one list for `cove image ls` and one budget
 * for `cove image prune`: downloaded images ({@link ./cache.ts}) and pulled
 * OCI images (core/oci/cache.ts).
 * @module
 */
import { OciCache } from "../oci/cache.ts";
import {
  BlobCache,
  cacheDir,
  type CacheEntry,
  type CacheProvider,
  listCaches,
  pruneCaches,
  type PruneOptions,
  type PruneResult,
} from "./cache.ts";

/** The cache providers under `$COVE_HOME/cache`. */
export function cacheProviders(dir = cacheDir()): CacheProvider[] {
  return [new BlobCache(dir), new OciCache(dir)];
}

/** Every cached entry, most recently used first. */
export function listImageCache(dir = cacheDir()): Promise<CacheEntry[]> {
  return listCaches(cacheProviders(dir));
}

/** Prunes every cache together (see {@link pruneCaches}). */
export function pruneImageCache(opts: PruneOptions, dir = cacheDir()): Promise<PruneResult> {
  return pruneCaches(cacheProviders(dir), opts);
}
