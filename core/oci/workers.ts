/**
 * A small pool of layer workers (core/oci/layer_worker.ts) for one pull or
 * push, and main-thread handles that look like the in-thread versions:
 * {@link WorkerPool.openSink} is a LayerSink, {@link WorkerPool.compressStream}
 * has the same shape as layer.ts's. Chunks cross threads by transfer (no
 * copy) and each job keeps at most a few MiB in flight, so memory stays
 * bounded. With `COVE_OCI_WORKERS=0`, or when workers cannot start, callers
 * use the in-thread versions instead.
 * @module
 */
import { CoveError, type ExitCode } from "../errors.ts";
import type { LayerPlace, LayerSink } from "./layer.ts";
import type { Request, WireError } from "./layer_worker.ts";
import type { Descriptor } from "./tart.ts";

/** Compressed bytes a pull job may have queued in its worker. */
const IN_FLIGHT = 8 * 1024 * 1024;

type Reply =
  | { id: number; type: "ok" }
  | { id: number; type: "ack"; bytes: number }
  | { id: number; type: "digest"; digest: string }
  | { id: number; type: "zip-data"; chunk: Uint8Array; read: number }
  | { id: number; type: "zip-done"; desc: Descriptor; read: number }
  | { id: number; type: "progress"; read: number }
  | { id: number; type: "patched"; location: string; desc: Descriptor }
  | { id: number; type: "error"; error: WireError };

function revive(e: WireError): CoveError {
  return new CoveError(e.code, e.message, { hint: e.hint, exit: e.exit as ExitCode | undefined });
}

interface Job {
  /** Resolvers of requests awaiting a reply, in order. */
  waiting: { resolve: (r: Reply) => void; reject: (e: unknown) => void }[];
  onAck?: (bytes: number) => void;
  onProgress?: (bytes: number) => void;
  onError?: () => void;
  error?: CoveError;
}

/** Layer workers for one operation; `close()` them when done. */
export class WorkerPool {
  #workers: Worker[] = [];
  #jobs = new Map<number, { worker: Worker; job: Job }>();
  #nextId = 1;
  #nextWorker = 0;

  private constructor(workers: Worker[]) {
    this.#workers = workers;
    for (const w of workers) {
      w.onmessage = (e: MessageEvent<Reply>) => this.#reply(e.data);
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        for (const { worker, job } of this.#jobs.values()) {
          if (worker !== w) continue;
          job.error = new CoveError("internal", `a layer worker failed: ${e.message}`);
          for (const r of job.waiting.splice(0)) r.reject(job.error);
          job.onError?.();
        }
      };
    }
  }

  /**
   * Starts `size` workers for `workBytes` of layer data, or returns
   * undefined when workers are off (`COVE_OCI_WORKERS=0`), unavailable, or
   * not worth starting for so little data (below 128 MiB, unless
   * `COVE_OCI_WORKERS=1`).
   */
  static start(size: number, workBytes: number): WorkerPool | undefined {
    const env = Deno.env.get("COVE_OCI_WORKERS");
    if (env === "0" || size < 1) return undefined;
    if (env !== "1" && workBytes < 128 * 1024 * 1024) return undefined;
    const workers: Worker[] = [];
    try {
      for (let i = 0; i < size; i++) {
        workers.push(new Worker(new URL("./layer_worker.ts", import.meta.url), { type: "module" }));
      }
    } catch {
      for (const w of workers) w.terminate();
      return undefined;
    }
    return new WorkerPool(workers);
  }

  /**
   * How many workers suit this machine: one per core, at most `max` and at
   * most 2 (each worker is a V8 isolate of some 50 MiB; two keep a pull or
   * push under 300 MiB peak RSS, and the registry connection, not the CPU,
   * limits more of them).
   */
  static defaultSize(max: number): number {
    return Math.max(1, Math.min(max, 2, navigator.hardwareConcurrency || 1));
  }

  close(): void {
    for (const w of this.#workers) w.terminate();
    this.#workers = [];
    for (const { job } of this.#jobs.values()) {
      for (const r of job.waiting.splice(0)) {
        r.reject(new CoveError("oci.cancelled", "the layer workers were stopped"));
      }
    }
    this.#jobs.clear();
  }

  #reply(r: Reply): void {
    const entry = this.#jobs.get(r.id);
    if (!entry) return;
    const { job } = entry;
    if (r.type === "error") {
      job.error ??= revive(r.error);
      for (const w of job.waiting.splice(0)) w.reject(job.error);
      job.onError?.();
      return;
    }
    if (r.type === "ack") {
      job.onAck?.(r.bytes);
      return;
    }
    if (r.type === "progress") {
      job.onProgress?.(r.read);
      return;
    }
    job.waiting.shift()?.resolve(r);
  }

  #open(): { id: number; worker: Worker; job: Job } {
    if (this.#workers.length === 0) {
      throw new CoveError("oci.cancelled", "the layer workers were stopped");
    }
    const id = this.#nextId++;
    const worker = this.#workers[this.#nextWorker++ % this.#workers.length];
    const job: Job = { waiting: [] };
    this.#jobs.set(id, { worker, job });
    return { id, worker, job };
  }

  #ask(worker: Worker, job: Job, msg: Request, transfer: Transferable[] = []): Promise<Reply> {
    if (job.error) return Promise.reject(job.error);
    return new Promise<Reply>((resolve, reject) => {
      job.waiting.push({ resolve, reject });
      worker.postMessage(msg, transfer);
    });
  }

  /** A LayerSink whose work happens in a worker. */
  async openSink(diskPath: string, layer: LayerPlace, fresh: boolean): Promise<LayerSink> {
    const { id, worker, job } = this.#open();
    await this.#ask(worker, job, {
      id,
      op: "sink-open",
      diskPath,
      layer: { index: layer.index, offset: layer.offset, uncompressedSize: layer.uncompressedSize },
      fresh,
    });
    let inFlight = 0;
    let wake: (() => void) | undefined;
    const wakeUp = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    job.onAck = (n) => {
      inFlight -= n;
      if (inFlight <= IN_FLIGHT / 2) wakeUp();
    };
    job.onError = wakeUp;
    const jobs = this.#jobs;
    return {
      async push(chunk: Uint8Array): Promise<void> {
        if (job.error) throw job.error;
        const owned = chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength &&
            chunk.buffer instanceof ArrayBuffer
          ? chunk
          : chunk.slice();
        inFlight += owned.length;
        worker.postMessage({ id, op: "sink-push", chunk: owned } satisfies Request, [
          owned.buffer as ArrayBuffer,
        ]);
        while (inFlight > IN_FLIGHT && !job.error) await new Promise<void>((r) => (wake = r));
        if (job.error) throw job.error;
      },
      digest: async () => {
        const r = await this.#ask(worker, job, { id, op: "sink-digest" });
        return (r as { digest: string }).digest;
      },
      complete: async () => {
        await this.#ask(worker, job, { id, op: "sink-complete" });
      },
      close(): Promise<void> {
        worker.postMessage({ id, op: "sink-close" } satisfies Request);
        jobs.delete(id);
        return Promise.resolve();
      },
    };
  }

  /**
   * Reads, hashes and compresses a disk chunk and sends it as the body of
   * a PATCH to `url`, all in a worker. Resolves with the next upload
   * location and the layer's descriptor.
   */
  async patchCompressed(
    chunk: { diskPath: string; offset: number; length: number },
    url: string,
    headers: Record<string, string>,
    registry: { host: string; insecure: boolean },
    onBytes?: (n: number) => void,
  ): Promise<{ location: string; desc: Descriptor }> {
    const { id, worker, job } = this.#open();
    job.onProgress = onBytes;
    try {
      const r = await this.#ask(worker, job, {
        id,
        op: "zip-patch",
        diskPath: chunk.diskPath,
        offset: chunk.offset,
        length: chunk.length,
        url,
        headers,
        host: registry.host,
        insecure: registry.insecure,
      });
      const p = r as { location: string; desc: Descriptor };
      return { location: p.location, desc: p.desc };
    } finally {
      this.#jobs.delete(id);
    }
  }

  /** Like layer.ts's compressStream, with the reading, hashing and compressing in a worker. */
  compressStream(
    diskPath: string,
    offset: number,
    length: number,
    onBytes?: (n: number) => void,
  ): { body: ReadableStream<Uint8Array>; done: Promise<Descriptor> } {
    const { id, worker, job } = this.#open();
    let resolve!: (d: Descriptor) => void;
    let reject!: (e: unknown) => void;
    const done = new Promise<Descriptor>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const jobs = this.#jobs;
    let opened = false;
    const body = new ReadableStream<Uint8Array>({
      pull: async (ctl) => {
        try {
          if (!opened) {
            opened = true;
            worker.postMessage({ id, op: "zip-open", diskPath, offset, length } satisfies Request);
          }
          const r = await this.#ask(worker, job, { id, op: "zip-next" });
          if (r.type === "zip-data") {
            if (r.read) onBytes?.(r.read);
            ctl.enqueue(r.chunk);
          } else if (r.type === "zip-done") {
            if (r.read) onBytes?.(r.read);
            jobs.delete(id);
            ctl.close();
            resolve(r.desc);
          }
        } catch (e) {
          jobs.delete(id);
          reject(e);
          ctl.error(e);
        }
      },
      cancel: () => {
        worker.postMessage({ id, op: "zip-close" } satisfies Request);
        jobs.delete(id);
        reject(new CoveError("oci.cancelled", "the upload was cancelled"));
      },
    }, { highWaterMark: 2 });
    return { body, done };
  }
}
