/**
 * A small pool of layer workers (core/oci/layer_worker.ts) for one pull or
 * push, and main-thread handles that look like the in-thread versions:
 * {@link WorkerPool.openSink} is a LayerSink and
 * {@link WorkerPool.patchCompressed} uploads a compressed chunk. Chunks cross
 * threads by transfer (no copy) and each job keeps at most a few MiB in
 * flight, so memory stays bounded. With `COVE_OCI_WORKERS=0`, or when
 * workers cannot start, callers use the in-thread versions instead; a worker
 * that dies takes no new jobs, and its jobs (and new ones once none is left)
 * fail with {@link WORKER_LOST}, which callers answer by doing the work in
 * this thread.
 * @module
 */
import { checkPoolSize } from "../pool.ts";
import { CoveError, type ExitCode } from "../errors.ts";
import type { LayerPlace, LayerSink } from "./layer.ts";
import type { Request, WireError } from "./layer_worker.ts";
import type { Descriptor } from "./tart.ts";

/** Error code of a job whose worker died, or of a new job when every worker has died. */
export const WORKER_LOST = "oci.worker_lost";

/** True when `e` says the work should be redone in this thread. */
export function workerLost(e: unknown): boolean {
  return e instanceof CoveError && e.code === WORKER_LOST;
}

/** Compressed bytes a pull job may have queued in its worker. */
const IN_FLIGHT = 8 * 1024 * 1024;

type Reply =
  | { id: number; type: "ok" }
  | { id: number; type: "ack"; bytes: number }
  | { id: number; type: "digest"; digest: string }
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
  #dead = new Set<Worker>();
  #jobs = new Map<number, { worker: Worker; job: Job }>();
  #nextId = 1;
  #nextWorker = 0;

  private constructor(workers: Worker[]) {
    this.#workers = workers;
    for (const w of workers) {
      w.onmessage = (e: MessageEvent<Reply>) => this.#reply(e.data);
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        // A dead worker takes no new jobs, and its jobs will never be answered.
        this.#dead.add(w);
        this.#workers = this.#workers.filter((x) => x !== w);
        w.terminate();
        for (const [id, { worker, job }] of this.#jobs) {
          if (worker !== w) continue;
          job.error = new CoveError(WORKER_LOST, `a layer worker failed: ${e.message}`);
          for (const r of job.waiting.splice(0)) r.reject(job.error);
          job.onError?.();
          this.#jobs.delete(id);
        }
      };
    }
  }

  /**
   * Starts `size` workers for `workBytes` of layer data, or returns
   * undefined when workers are off (`COVE_OCI_WORKERS=0`, or a size of 0), unavailable, or
   * not worth starting for so little data (below 128 MiB, unless
   * `COVE_OCI_WORKERS=1`).
   */
  static start(size: number, workBytes: number): WorkerPool | undefined {
    const env = Deno.env.get("COVE_OCI_WORKERS");
    if (env === "0" || size === 0) return undefined;
    checkPoolSize(size); // NaN or a fraction must not start a pool of no workers
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
      throw this.#dead.size
        ? new CoveError(WORKER_LOST, "every layer worker failed")
        : new CoveError("oci.cancelled", "the layer workers were stopped");
    }
    const id = this.#nextId++;
    const worker = this.#workers[this.#nextWorker++ % this.#workers.length];
    const job: Job = { waiting: [] };
    this.#jobs.set(id, { worker, job });
    return { id, worker, job };
  }

  #ask(worker: Worker, job: Job, msg: Request, transfer: Transferable[] = []): Promise<Reply> {
    if (job.error) return Promise.reject(job.error);
    if (this.#dead.has(worker)) {
      return Promise.reject(new CoveError(WORKER_LOST, "a layer worker failed"));
    }
    return new Promise<Reply>((resolve, reject) => {
      job.waiting.push({ resolve, reject });
      worker.postMessage(msg, transfer);
    });
  }

  /** A LayerSink whose work happens in a worker. */
  async openSink(diskPath: string, layer: LayerPlace, fresh: boolean): Promise<LayerSink> {
    const { id, worker, job } = this.#open();
    try {
      await this.#ask(worker, job, {
        id,
        op: "sink-open",
        diskPath,
        layer: {
          index: layer.index,
          offset: layer.offset,
          uncompressedSize: layer.uncompressedSize,
        },
        fresh,
      });
    } catch (e) {
      this.#jobs.delete(id);
      if (!this.#dead.has(worker)) worker.postMessage({ id, op: "sink-close" } satisfies Request);
      throw e;
    }
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
    signal?: AbortSignal,
  ): Promise<{ location: string; desc: Descriptor }> {
    signal?.throwIfAborted();
    const { id, worker, job } = this.#open();
    job.onProgress = onBytes;
    const abort = () => {
      worker.postMessage({ id, op: "zip-abort" } satisfies Request);
      job.error ??= signal?.reason instanceof CoveError
        ? signal.reason
        : new CoveError("oci.cancelled", "the upload was cancelled");
      for (const r of job.waiting.splice(0)) r.reject(job.error);
    };
    signal?.addEventListener("abort", abort, { once: true });
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
      signal?.removeEventListener("abort", abort);
      this.#jobs.delete(id);
    }
  }
}
