/**
 * A layer worker: runs the CPU-heavy half of pulls and pushes (sha256,
 * Apple-LZ4 decoding or encoding, disk reads and writes) off the main
 * thread, so layers use every core while the main thread does the HTTP.
 * Spoken to only by core/oci/workers.ts; each message names a job id, and
 * the messages of one job are handled strictly in order.
 * @module
 */
import { stallTimeoutMs } from "../retry.ts";
import { CoveError, ExitCode } from "../errors.ts";
import { compressStream, InlineSink, type LayerPlace } from "./layer.ts";
import { networkError } from "./registry.ts";

/** The worker's side of the message port. */
const port = self as unknown as {
  onmessage: ((e: MessageEvent<Request>) => void) | null;
  postMessage(msg: unknown, transfer?: Transferable[]): void;
};

/** Messages the main thread sends. */
export type Request =
  | { id: number; op: "sink-open"; diskPath: string; layer: LayerPlace; fresh: boolean }
  | { id: number; op: "sink-push"; chunk: Uint8Array }
  | { id: number; op: "sink-digest" }
  | { id: number; op: "sink-complete" }
  | { id: number; op: "sink-close" }
  | { id: number; op: "zip-abort" }
  | {
    id: number;
    op: "zip-patch";
    diskPath: string;
    offset: number;
    length: number;
    url: string;
    headers: Record<string, string>;
    host: string;
    insecure: boolean;
  };

/** A CoveError (or anything thrown) as plain data. */
export interface WireError {
  code: string;
  message: string;
  hint?: string;
  exit?: number;
}

function wire(e: unknown): WireError {
  if (e instanceof CoveError) {
    return { code: e.code, message: e.message, hint: e.hint, exit: e.exit };
  }
  return { code: "internal", message: e instanceof Error ? e.message : String(e) };
}

/** No bytes sent (or answer) for this long ends an upload attempt: the shared stall timeout. */
const IDLE_MS = stallTimeoutMs();

const sinks = new Map<number, InlineSink>();
const chains = new Map<number, Promise<void>>();
/** Uploads in progress, to abort when the main thread gives up on them. */
const uploads = new Map<number, AbortController>();

async function handle(m: Request): Promise<void> {
  switch (m.op) {
    case "sink-open":
      sinks.set(m.id, await InlineSink.open(m.diskPath, m.layer, m.fresh));
      port.postMessage({ id: m.id, type: "ok" });
      return;
    case "sink-push":
      await sinks.get(m.id)!.push(m.chunk);
      port.postMessage({ id: m.id, type: "ack", bytes: m.chunk.length });
      return;
    case "sink-digest":
      port.postMessage({ id: m.id, type: "digest", digest: await sinks.get(m.id)!.digest() });
      return;
    case "sink-complete":
      await sinks.get(m.id)!.complete();
      port.postMessage({ id: m.id, type: "ok" });
      return;
    case "zip-abort":
      return; // handled as it arrives, see onmessage
    case "sink-close":
      await sinks.get(m.id)?.close();
      sinks.delete(m.id);
      chains.delete(m.id);
      return;
    case "zip-patch": {
      // Read, hash, compress and upload in this thread: the bytes never cross to the main one.
      // An idle timer: restarted whenever the upload takes more of the disk.
      const ctl = new AbortController();
      uploads.set(m.id, ctl);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => ctl.abort(new DOMException("timed out", "TimeoutError")), IDLE_MS);
      };
      arm();
      const s = compressStream(m.diskPath, m.offset, m.length, (n) => {
        arm();
        port.postMessage({ id: m.id, type: "progress", read: n });
      });
      let producerError: unknown;
      s.done.catch((err) => {
        producerError = err;
      });
      let res: Response;
      try {
        res = await fetch(m.url, {
          method: "PATCH",
          headers: m.headers,
          body: s.body,
          signal: ctl.signal,
        });
      } catch (e) {
        await new Promise((r) => setTimeout(r, 0));
        // A failure reading the disk explains more than the upload's.
        throw producerError ?? networkError(m.host, e, m.insecure, true);
      } finally {
        clearTimeout(timer);
        uploads.delete(m.id);
      }
      await res.body?.cancel().catch(() => {});
      if (res.status === 401) {
        throw new CoveError("oci.reauth", "the registry asked to authenticate again");
      }
      if (res.status !== 202 && res.status !== 204) {
        throw new CoveError(
          res.status >= 500 ? "oci.server" : "oci.http",
          `registry '${m.host}' answered HTTP ${res.status} while uploading a layer`,
          { exit: ExitCode.Network },
        );
      }
      const location = res.headers.get("location");
      if (!location) {
        throw new CoveError("oci.protocol", `registry '${m.host}' sent no upload location`, {
          exit: ExitCode.Network,
        });
      }
      const desc = await s.done;
      port.postMessage({
        id: m.id,
        type: "patched",
        location: new URL(location, m.url).toString(),
        desc,
      });
      chains.delete(m.id);
      return;
    }
  }
}

port.onmessage = (e: MessageEvent<Request>) => {
  const m = e.data;
  if (m.op === "zip-abort") {
    uploads.get(m.id)?.abort(new CoveError("oci.cancelled", "the upload was cancelled"));
    return;
  }
  const prev = chains.get(m.id) ?? Promise.resolve();
  const next = prev.then(() => handle(m)).catch((err) => {
    port.postMessage({ id: m.id, type: "error", error: wire(err) });
  });
  chains.set(m.id, next);
};
