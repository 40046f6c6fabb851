/**
 * Progress for downloads and conversions, as the CLI shows it: a one-line
 * bar on stderr when stderr is a TTY and the format is text; one JSON
 * object per line on stderr under `--format json` (stdout keeps the
 * command's result); nothing otherwise.
 * @module
 */
import { formatSize, type SourceEvent } from "../mod.ts";
import { type Format, log } from "./output.ts";

const enc = new TextEncoder();

/** A one-line status on stderr: drawn over itself, cleared, with log lines printed above it. */
export interface ProgressLine {
  /** Draws `text` now. */
  show(text: string): void;
  /** Draws `text` unless the line was drawn in the last 150 ms (for frequent updates). */
  update(text: string): void;
  /** Clears the line. */
  end(): void;
  /** Prints `cove: LINE` above the status line. */
  log(line: string): void;
}

/**
 * The one progress renderer: a line on stderr when it is a terminal (cut to
 * its width), nothing otherwise; log lines go above it.
 */
export function progressLine(): ProgressLine {
  const tty = Deno.stderr.isTerminal();
  let drawn = false;
  let last = 0;
  const show = (text: string) => {
    if (!tty) return;
    const width = Math.max(20, (safeColumns() ?? 80) - 1);
    Deno.stderr.writeSync(enc.encode(`\r\x1b[2K${text.slice(0, width)}`));
    drawn = true;
    last = Date.now();
  };
  const end = () => {
    if (drawn) Deno.stderr.writeSync(enc.encode("\r\x1b[2K"));
    drawn = false;
  };
  return {
    show,
    update(text) {
      if (Date.now() - last >= 150) show(text);
    },
    end,
    log(line) {
      end();
      log(`cove: ${line}`);
    },
  };
}

/** "37%" of done over total (100% when the total is 0). */
export function pct(done: number, total: number): string {
  return total > 0 ? `${Math.floor((done / total) * 100)}%` : "100%";
}

/** Returns the onProgress callback for a format, or undefined to stay quiet. */
export function progressReporter(format: Format): ((e: SourceEvent) => void) | undefined {
  if (format === "json") {
    // Download events carry URLs already shown without their secrets (see core/images/download.ts).
    return (e) => Deno.stderr.writeSync(enc.encode(JSON.stringify({ progress: e }) + "\n"));
  }
  if (!Deno.stderr.isTerminal()) return undefined;
  let started = 0;
  let label = "";
  const line = progressLine();
  const draw = line.show;
  const end = line.end;
  return (e) => {
    switch (e.type) {
      case "resolve":
        end();
        log(`${e.source}: ${e.description}`);
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
  return `[${"#".repeat(f)}${" ".repeat(w - f)}] ${pct(done, total)}`;
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
