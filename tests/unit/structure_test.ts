/**
 * Structural rules of the tree (DESIGN.md, "The house"): core never names
 * an engine (engines/select.ts is the one place that chooses), and every
 * file name of a VM bundle is spelled in core/store/bundle.ts alone.
 */
import { join, relative } from "node:path";
import { assertEquals } from "../helpers/assert.ts";
import { ROOT } from "../helpers/cli.ts";
import { BUNDLE_FILES } from "../../core/store/bundle.ts";

/** Every .ts file under `dir` (relative to the repository root), tests excluded. */
function sources(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of Deno.readDirSync(d)) {
      const p = join(d, e.name);
      if (e.isDirectory) {
        if (e.name !== "node_modules" && !e.name.startsWith(".")) walk(p);
      } else if (e.name.endsWith(".ts") && !e.name.endsWith("_test.ts")) {
        out.push(relative(ROOT, p));
      }
    }
  };
  walk(join(ROOT, dir));
  return out.sort();
}

/**
 * The code of a file without its comments (strings are kept as they are,
 * regular expression literals are dropped: their quotes are not strings).
 */
export function stripComments(text: string): string {
  let out = "";
  let i = 0;
  let quote: string | null = null;
  let last = ""; // the last character of code that is not white space
  while (i < text.length) {
    const c = text[i];
    if (
      !quote && c === "/" && text[i + 1] !== "/" && text[i + 1] !== "*" &&
      (last === "" || "(,=:[!&|?{};".includes(last))
    ) {
      // A regular expression literal: skip to its closing slash.
      let j = i + 1;
      let inClass = false;
      while (j < text.length && text[j] !== "\n") {
        if (text[j] === "\\") j++;
        else if (text[j] === "[") inClass = true;
        else if (text[j] === "]") inClass = false;
        else if (text[j] === "/" && !inClass) break;
        j++;
      }
      out += "/re/";
      last = "/";
      i = j + 1;
      continue;
    }
    if (!quote && !/\s/.test(c)) last = c;
    if (quote) {
      out += c;
      if (c === "\\") {
        out += text[i + 1] ?? "";
        i += 2;
        continue;
      }
      if (c === quote) quote = null;
      i++;
      continue;
    }
    if (c === '"' || c === "'" || c === "`") {
      quote = c;
      out += c;
      i++;
    } else if (c === "/" && text[i + 1] === "/") {
      while (i < text.length && text[i] !== "\n") i++;
    } else if (c === "/" && text[i + 1] === "*") {
      const end = text.indexOf("*/", i + 2);
      const skipped = text.slice(i, end < 0 ? text.length : end + 2);
      out += skipped.replace(/[^\n]/g, "");
      i = end < 0 ? text.length : end + 2;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/** Lines of `files` whose code matches `re`, as "path:line: text". */
function offending(files: string[], re: RegExp): string[] {
  const hits: string[] = [];
  for (const f of files) {
    const lines = stripComments(Deno.readTextFileSync(join(ROOT, f))).split("\n");
    lines.forEach((l, i) => {
      if (re.test(l)) hits.push(`${f}:${i + 1}: ${l.trim()}`);
    });
  }
  return hits;
}

const ENGINE = `["'\`](?:qemu|vz)["'\`]`;
/** A comparison with, or a switch case on, an engine name; or an import of one engine's modules. */
const NAMES_ENGINE = new RegExp(
  [
    `[=!]==?\\s*${ENGINE}`,
    `${ENGINE}\\s*[=!]==?`,
    `\\bcase\\s+${ENGINE}`,
    `engines/(?:qemu|vz)/`,
  ].join("|"),
);

Deno.test("structure: core names no engine: no comparison or case with 'qemu' or 'vz', no import of an engine's modules", () => {
  // The spec schema's enum lists the names (a definition, not a comparison): it is not matched.
  assertEquals(offending([...sources("core"), "mod.ts"], NAMES_ENGINE), []);
});

Deno.test("structure: the engine-name check catches what it is meant to catch", () => {
  for (
    const bad of [
      `if (id === "vz") {`,
      `x !== 'qemu'`,
      `case "qemu":`,
      `import "../engines/vz/mod.ts"`,
    ]
  ) {
    assertEquals(NAMES_ENGINE.test(bad), true, bad);
  }
  for (const fine of [`engine: z.enum(["auto", "vz", "qemu"])`, `export const a = "vz";`]) {
    assertEquals(NAMES_ENGINE.test(fine), false, fine);
  }
  assertEquals(stripComments(`a // if (x === "vz")\nb /* case "qemu": */ c`), "a \nb  c");
});

/**
 * A bundle file name as a whole string literal ("cove.yaml"), or as the last
 * part of a path in one (`${dir}/console.log`). Generic words (run, lock)
 * count only as a path part.
 */
function bundleNamePattern(): RegExp {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const parts: string[] = [];
  for (const name of Object.values(BUNDLE_FILES)) {
    const n = esc(name);
    parts.push(`/${n}["'\`]`);
    if (name.includes(".") || name.includes("-")) parts.push(`["'\`]${n}["'\`]`);
  }
  return new RegExp(parts.join("|"));
}

Deno.test("structure: bundle file names are spelled only in core/store/bundle.ts", () => {
  const files = ["core", "engines", "ffi", "cli"].flatMap(sources).concat("mod.ts")
    .filter((f) => f !== "core/store/bundle.ts");
  assertEquals(offending(files, bundleNamePattern()), []);
});

Deno.test("structure: the bundle-name check catches literals and path parts", () => {
  const re = bundleNamePattern();
  for (
    const bad of [`"cove.yaml"`, "`${dir}/console.log`", `join(d, "x/run")`, `'auxiliary-storage'`]
  ) {
    assertEquals(re.test(bad), true, bad);
  }
  for (const fine of [`"no readable cove.yaml here"`, `"run"`, `program.command("lock")`]) {
    assertEquals(re.test(fine), false, fine);
  }
});
