/**
 * Progress for downloads and conversions, as the CLI shows it: a one-line
 * bar on stderr when stderr is a TTY and the format is text; one JSON
 * object per line on stderr under `--format json` (stdout keeps the
 * command's result); nothing otherwise.
 * @module
 */
import type { SourceEvent } from "../core/images/source.ts";
import { displayUrl } from "../core/images/url.ts";
import { formatSize } from "../core/units.ts";
import type { Format } from "./output.ts";

const enc = new TextEncoder();

/** Returns the onProgress callback for a format, or undefined to stay quiet. */
export function progressReporter(format: Format): ((e: SourceEvent) => void) | undefined {
  if (format === "json") {
    return (e) => {
      const shown = "url" in e ? { ...e, url: displayUrl(e.url) } : e;
      Deno.stderr.writeSync(enc.encode(JSON.stringify({ progress: shown }) + "\n"));
    };
  }
  if (!Deno.stderr.isTerminal()) return undefined;
  let started = 0;
  let label = "";
  let drawn = false;
  const draw = (text: string) => {
    const width = Math.max(20, (safeColumns() ?? 80) - 1);
    Deno.stderr.writeSync(enc.encode(`\r\x1b[K${text.slice(0, width)}`));
    drawn = true;
  };
  const end = () => {
    if (drawn) Deno.stderr.writeSync(enc.encode("\r\x1b[K"));
    drawn = false;
  };
  return (e) => {
    switch (e.type) {
      case "resolve":
        end();
        Deno.stderr.writeSync(enc.encode(`${e.source}: ${e.description}\n`));
        break;
      case "start":
        started = Date.now();
        label = basename(e.url);
        draw(`downloading ${label}${e.offset ? ` (resuming at ${formatSize(e.offset)})` : ""}`);
        break;
      case "progress": {
        const secs = Math.max(0.001, (Date.now() - started) / 1000);
        draw(
          `downloading ${label} ${bar(e.received, e.total)} ${formatSize(e.received)}${
            e.total ? `/${formatSize(e.total)}` : ""
          } ${formatSize(Math.round(e.received / secs))}/s`,
        );
        break;
      }
      case "retry":
        draw(`download interrupted (${e.reason}); retrying (${e.attempt})`);
        break;
      case "stalled":
        draw(
          `downloading ${label}: waiting, no data for ${Math.round(e.idleMs / 1000)}s at ${
            formatSize(e.received)
          }`,
        );
        break;
      case "verify":
        draw(`verifying ${label}`);
        break;
      case "convert":
        draw(
          `converting to raw ${bar(e.done, e.total)} ${formatSize(e.done)}/${formatSize(e.total)}`,
        );
        if (e.done >= e.total) end();
        break;
      case "install":
        draw(`installing macOS ${bar(e.fraction, 1)}`);
        if (e.fraction >= 1) end();
        break;
      case "done":
        end();
        break;
    }
  };
}

function bar(done: number, total: number | undefined): string {
  if (!total) return "";
  const w = 24;
  const f = Math.min(w, Math.round((done / total) * w));
  return `[${"#".repeat(f)}${" ".repeat(w - f)}] ${Math.floor((done / total) * 100)}%`;
}

function basename(url: string): string {
  try {
    return decodeURIComponent(new URL(url).pathname.split("/").pop() || url);
  } catch {
    return url;
  }
}

function safeColumns(): number | undefined {
  try {
    return Deno.consoleSize().columns;
  } catch {
    return undefined;
  }
}
