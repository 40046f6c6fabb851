/**
 * The image catalog: aliases such as `debian:12` or `ubuntu:24.04` mapped to
 * cloud images per architecture, with the checksum that verifies each one
 * (pinned in the catalog, or read from the distribution's SHA256SUMS /
 * SHA512SUMS / CHECKSUM file at download time). The data lives in
 * `catalog.json` beside this module so that updating a release is a
 * one-line data change.
 *
 * Overrides, for mirrors and tests: `COVE_CATALOG=/path/catalog.json`
 * replaces the built-in file; `COVE_CATALOG_BASE=URL` rewrites every mirror
 * to `URL/<mirror name>` (e.g. `URL/debian/bookworm/latest/...`).
 *
 * @example
 * ```ts
 * const img = resolveAlias("debian:12", "arm64");
 * const sum = await catalogChecksum(img); // from SHA512SUMS
 * ```
 * @module
 */
import { z } from "zod";
import builtin from "./catalog.json" with { type: "json" };
import { CoveError, ExitCode } from "../errors.ts";
import type { ArchName } from "../spec/schema.ts";
import { type Checksum, fetchText, parseChecksum } from "./download.ts";

const ArchImage = z.strictObject({
  url: z.string().min(1),
  checksum: z.string().optional(),
  checksumUrl: z.string().optional(),
}).refine((a) => a.checksum || a.checksumUrl, {
  error: "needs checksum or checksumUrl",
});

const CatalogSchema = z.object({
  version: z.literal(1),
  mirrors: z.record(z.string(), z.string()),
  images: z.record(
    z.string(),
    z.strictObject({
      description: z.string(),
      format: z.enum(["qcow2", "raw", "iso"]),
      arch: z.partialRecord(z.enum(["x86_64", "arm64"]), ArchImage),
    }),
  ),
  aliases: z.record(z.string(), z.string()).default({}),
});

/** The catalog data. */
export type Catalog = z.output<typeof CatalogSchema>;

/** One resolved catalog image for one architecture. */
export interface CatalogImage {
  /** What the user typed, e.g. `debian`. */
  alias: string;
  /** The catalog key, e.g. `debian:13`. */
  name: string;
  arch: ArchName;
  description: string;
  format: "qcow2" | "raw" | "iso";
  url: string;
  /** A pinned checksum, when the catalog has one. */
  checksum?: Checksum;
  /** The distribution's checksum file, when the checksum is read at download time. */
  checksumUrl?: string;
}

/** Loads the catalog: `COVE_CATALOG` if set, else the built-in one. */
export function loadCatalog(): Catalog {
  const path = Deno.env.get("COVE_CATALOG");
  let data: unknown = builtin;
  let where = "the built-in catalog";
  if (path) {
    where = path;
    try {
      data = JSON.parse(Deno.readTextFileSync(path));
    } catch (e) {
      throw new CoveError(
        "catalog.invalid",
        `COVE_CATALOG: cannot read ${path}: ${String(e).split("\n")[0]}`,
        {
          exit: ExitCode.Usage,
          cause: e,
        },
      );
    }
  }
  const r = CatalogSchema.safeParse(data);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new CoveError(
      "catalog.invalid",
      `${where}: ${issue.path.join(".") || "(root)"}: ${issue.message}`,
      { exit: ExitCode.Usage },
    );
  }
  return r.data;
}

/** Every name the catalog answers to (images and aliases), sorted. */
export function knownNames(cat: Catalog = loadCatalog()): string[] {
  return [...Object.keys(cat.images)].sort(compareNames);
}

function compareNames(a: string, b: string): number {
  return a.localeCompare(b, "en", { numeric: true });
}

/** True when `src` looks like a catalog name (`distro`, `distro:version`), not a path or URL. */
export function looksLikeAlias(src: string): boolean {
  return /^[a-z][a-z0-9-]*(:[A-Za-z0-9._-]+)?$/.test(src);
}

/** True when the catalog knows `name`. */
export function hasAlias(name: string, cat: Catalog = loadCatalog()): boolean {
  return name in cat.images || name in cat.aliases;
}

/**
 * Resolves an alias for an architecture. Unknown names throw one line
 * listing the known ones.
 */
export function resolveAlias(
  alias: string,
  arch: ArchName,
  cat: Catalog = loadCatalog(),
): CatalogImage {
  const name = cat.images[alias] ? alias : cat.aliases[alias];
  const img = name ? cat.images[name] : undefined;
  if (!name || !img) {
    throw new CoveError(
      "catalog.unknown",
      `unknown image '${alias}'; known images: ${knownNames(cat).join(", ")}`,
      { hint: "use one of those, a URL, or a local disk image", exit: ExitCode.NotFound },
    );
  }
  const a = img.arch[arch];
  if (!a) {
    const have = Object.keys(img.arch).join(", ");
    throw new CoveError("catalog.arch", `${name} has no ${arch} image (it has ${have})`, {
      hint: `pass --arch ${Object.keys(img.arch)[0]} or pick another image`,
      exit: ExitCode.NotFound,
    });
  }
  const mirrors = mirrorsOf(cat);
  return {
    alias,
    name,
    arch,
    description: img.description,
    format: img.format,
    url: expand(a.url, mirrors),
    checksum: a.checksum ? parseChecksum(a.checksum) : undefined,
    checksumUrl: a.checksumUrl ? expand(a.checksumUrl, mirrors) : undefined,
  };
}

function mirrorsOf(cat: Catalog): Record<string, string> {
  const base = Deno.env.get("COVE_CATALOG_BASE")?.replace(/\/+$/, "");
  if (!base) return cat.mirrors;
  return Object.fromEntries(Object.keys(cat.mirrors).map((k) => [k, `${base}/${k}`]));
}

function expand(tpl: string, mirrors: Record<string, string>): string {
  return tpl.replace(/\{([a-z0-9_-]+)\}/g, (_m, k: string) => {
    const v = mirrors[k];
    if (v === undefined) {
      throw new CoveError("catalog.invalid", `catalog URL ${tpl} names an unknown mirror {${k}}`, {
        exit: ExitCode.Usage,
      });
    }
    return v.replace(/\/+$/, "");
  });
}

/**
 * Finds the checksum of `filename` in a checksum file: GNU style
 * (`<hex>  name` or `<hex> *name`, as in SHA256SUMS/SHA512SUMS) or BSD style
 * (`SHA256 (name) = <hex>`, as in Fedora's CHECKSUM, possibly inside a PGP
 * clear-signed block). The algorithm follows from the digest length.
 */
export function findInChecksumFile(text: string, filename: string): Checksum | undefined {
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    const gnu = /^([0-9a-fA-F]{64}|[0-9a-fA-F]{128})\s+\*?(.+)$/.exec(line);
    if (gnu && baseName(gnu[2].trim()) === filename) return parseChecksum(gnu[1]);
    const bsd = /^(SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$/i.exec(line);
    if (bsd && baseName(bsd[2]) === filename) {
      return parseChecksum(`${bsd[1].toLowerCase()}:${bsd[3]}`);
    }
  }
  return undefined;
}

function baseName(p: string): string {
  return p.replace(/^\.\//, "").split("/").pop() ?? p;
}

/** The checksum that verifies a catalog image: pinned, or read from its checksum file. */
export async function catalogChecksum(img: CatalogImage): Promise<Checksum> {
  if (img.checksum) return img.checksum;
  if (!img.checksumUrl) {
    throw new CoveError("catalog.invalid", `${img.name} has no checksum`, { exit: ExitCode.Usage });
  }
  const text = await fetchText(img.checksumUrl);
  const file = decodeURIComponent(new URL(img.url).pathname.split("/").pop() ?? "");
  const sum = findInChecksumFile(text, file);
  if (!sum) {
    throw new CoveError(
      "catalog.checksum_missing",
      `${img.checksumUrl} does not list ${file}`,
      {
        hint: "the distribution published a new release; update the catalog",
        exit: ExitCode.Network,
      },
    );
  }
  return sum;
}
