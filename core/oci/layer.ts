/**
 * The per-layer work of pulls and pushes, shared by the main thread and the
 * layer workers (core/oci/layer_worker.ts): writing a decoded layer into a
 * sparse disk ({@link LayerWriter}), the pull pipeline of one layer (sha256
 * of the compressed bytes, Apple-LZ4 decoding, hole-preserving writes:
 * {@link InlineSink}) and the push pipeline of one chunk (read, sha256,
 * compress, sha256: {@link compressStream}).
 * @module
 */
import { createHash } from "node:crypto";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import { AppleLz4Decoder, AppleLz4Encoder } from "./lz4apple.ts";
import {
  ANN_UNCOMPRESSED_DIGEST,
  ANN_UNCOMPRESSED_SIZE,
  type Descriptor,
  TART_DISK_V2,
} from "./tart.ts";
import { forEachNonZeroRun, isAllZero, zeroChunks } from "../zero.ts";

/** Granularity of hole detection when writing a pulled disk. */
export const HOLE_GRANULE = 64 * 1024;
/** Bytes read from the disk at a time when pushing. */
const READ_SIZE = 1024 * 1024;

/** Where a disk layer goes: what {@link LayerWriter} needs to know. */
export interface LayerPlace {
  index: number;
  offset: number;
  uncompressedSize: number;
}

export async function writeAll(f: Deno.FsFile, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await f.write(b.subarray(off));
}

export async function readFull(f: Deno.FsFile, b: Uint8Array): Promise<number> {
  let off = 0;
  while (off < b.length) {
    const n = await f.read(b.subarray(off));
    if (n === null) break;
    off += n;
  }
  return off;
}

/**
 * Writes one disk layer's decoded bytes at its offset, leaving all-zero
 * ranges as holes. When the range is not known to be holes (a resumed
 * pull), zero ranges overwrite whatever non-zero bytes were there.
 */
export class LayerWriter {
  written = 0;
  #check?: Uint8Array;
  constructor(readonly file: Deno.FsFile, readonly layer: LayerPlace, fresh: boolean) {
    if (!fresh) this.#check = new Uint8Array(HOLE_GRANULE);
  }

  async place(out: Uint8Array): Promise<void> {
    if (this.written + out.length > this.layer.uncompressedSize) {
      throw new CoveError(
        "oci.lz4_corrupt",
        `disk layer ${
          this.layer.index + 1
        } decodes to more than its ${this.layer.uncompressedSize} bytes`,
        {
          hint: "the image is damaged; ask its publisher to push it again",
          exit: ExitCode.Network,
        },
      );
    }
    try {
      await this.#placeAt(out, this.layer.offset + this.written);
    } catch (e) {
      throw toCoveError(e, "writing the disk");
    }
    this.written += out.length;
  }

  async #placeAt(out: Uint8Array, base: number): Promise<void> {
    const runs: [number, number][] = [];
    forEachNonZeroRun(out, HOLE_GRANULE, (s, e) => runs.push([s, e]));
    let pos = 0;
    for (const [s, e] of runs) {
      if (this.#check && s > pos) await this.#clearStale(base + pos, base + s);
      await this.file.seek(base + s, Deno.SeekMode.Start);
      await writeAll(this.file, out.subarray(s, e));
      pos = e;
    }
    if (this.#check && pos < out.length) await this.#clearStale(base + pos, base + out.length);
  }

  async #clearStale(from: number, to: number): Promise<void> {
    const check = this.#check!;
    for (let p = from; p < to; p += HOLE_GRANULE) {
      const n = Math.min(HOLE_GRANULE, to - p);
      await this.file.seek(p, Deno.SeekMode.Start);
      const got = await readFull(this.file, check.subarray(0, n));
      if (!isAllZero(check.subarray(0, got))) {
        await this.file.seek(p, Deno.SeekMode.Start);
        await writeAll(this.file, new Uint8Array(n));
      }
    }
  }

  /** Throws unless exactly the layer's uncompressed size was written. */
  complete(): void {
    if (this.written !== this.layer.uncompressedSize) {
      throw new CoveError(
        "oci.lz4_corrupt",
        `disk layer ${
          this.layer.index + 1
        } decodes to ${this.written} bytes, not the ${this.layer.uncompressedSize} its manifest says`,
        {
          hint: "the image is damaged; ask its publisher to push it again",
          exit: ExitCode.Network,
        },
      );
    }
  }
}

/**
 * One disk layer being pulled: compressed bytes in, a sha256 of them, and
 * the decoded bytes written into the disk. LZ4 errors are held back until
 * {@link complete}, so that a digest mismatch (checked first by the caller)
 * explains damaged data better than the decoder can.
 */
export interface LayerSink {
  push(chunk: Uint8Array): Promise<void>;
  /** `sha256:<hex>` of everything pushed. */
  digest(): Promise<string>;
  /** Ends the stream: throws decode errors, checks the decoded size. */
  complete(): Promise<void>;
  close(): Promise<void>;
}

/** A {@link LayerSink} that works on the calling thread. */
export class InlineSink implements LayerSink {
  #hash = createHash("sha256");
  #dec = new AppleLz4Decoder();
  #w: LayerWriter;
  #decodeError: unknown;

  private constructor(readonly file: Deno.FsFile, layer: LayerPlace, fresh: boolean) {
    this.#w = new LayerWriter(file, layer, fresh);
  }

  static async open(diskPath: string, layer: LayerPlace, fresh: boolean): Promise<InlineSink> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(diskPath, { read: true, write: true });
    } catch (e) {
      throw toCoveError(e, "opening the disk");
    }
    return new InlineSink(file, layer, fresh);
  }

  async push(c: Uint8Array): Promise<void> {
    this.#hash.update(c);
    if (this.#decodeError !== undefined) return;
    try {
      for (const out of this.#dec.push(c)) await this.#w.place(out);
    } catch (e) {
      if (e instanceof CoveError && e.code === "oci.lz4_corrupt") this.#decodeError = e;
      else throw e;
    }
  }

  digest(): Promise<string> {
    return Promise.resolve(`sha256:${this.#hash.digest("hex")}`);
  }

  async complete(): Promise<void> {
    if (this.#decodeError !== undefined) throw this.#decodeError;
    for (const out of this.#dec.finish()) await this.#w.place(out);
    this.#w.complete();
  }

  close(): Promise<void> {
    try {
      this.file.close();
    } catch { /* closed */ }
    return Promise.resolve();
  }
}

function hashZeros(h: ReturnType<typeof createHash>, n: number): void {
  for (const z of zeroChunks(n)) h.update(z);
}

/** sha256 of `n` zero bytes, memoized: empty disk chunks are common. */
const zeroDigests = new Map<number, string>([
  // 512 MiB, the default chunk size.
  [512 * 1024 * 1024, "sha256:9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767"],
]);

export function zeroDigest(n: number): string {
  let d = zeroDigests.get(n);
  if (!d) {
    const h = createHash("sha256");
    hashZeros(h, n);
    d = `sha256:${h.digest("hex")}`;
    zeroDigests.set(n, d);
  }
  return d;
}

/**
 * Streams `[offset, offset+length)` of the disk as Apple-LZ4 compressed
 * bytes. `done` resolves with the layer's descriptor once the stream has
 * been read to its end.
 */
export function compressStream(
  diskPath: string,
  offset: number,
  length: number,
  onBytes?: (n: number) => void,
): { body: ReadableStream<Uint8Array>; done: Promise<Descriptor> } {
  const hu = createHash("sha256");
  /** Length of the all-zero prefix read so far; -1 once a non-zero byte was seen. */
  let zeroPrefix = 0;
  const hc = createHash("sha256");
  const enc = new AppleLz4Encoder(256 * 1024);
  const buf = new Uint8Array(Math.min(READ_SIZE, Math.max(length, 1)));
  let src: Deno.FsFile | undefined;
  let left = length;
  let size = 0;
  let resolve!: (d: Descriptor) => void;
  let reject!: (e: unknown) => void;
  const done = new Promise<Descriptor>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const close = () => {
    try {
      src?.close();
    } catch { /* already closed */ }
    src = undefined;
  };
  const emit = (ctl: ReadableStreamDefaultController<Uint8Array>, views: Iterable<Uint8Array>) => {
    for (const v of views) {
      hc.update(v);
      size += v.length;
      ctl.enqueue(v.slice());
    }
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      try {
        if (!src) {
          src = await Deno.open(diskPath, { read: true });
          await src.seek(offset, Deno.SeekMode.Start);
        }
        // A pull must enqueue something (or close), else the stream stalls:
        // zero runs compress into the encoder's buffer without output for a while.
        const before = size;
        while (size === before) {
          if (left === 0) {
            emit(ctl, enc.finish());
            close();
            ctl.close();
            resolve({
              mediaType: TART_DISK_V2,
              size,
              digest: `sha256:${hc.digest("hex")}`,
              annotations: {
                [ANN_UNCOMPRESSED_SIZE]: String(length),
                [ANN_UNCOMPRESSED_DIGEST]: zeroPrefix >= 0
                  ? zeroDigest(length)
                  : `sha256:${hu.digest("hex")}`,
              },
            });
            return;
          }
          const want = Math.min(left, buf.length);
          let filled = 0;
          while (filled < want) {
            const n = await src.read(buf.subarray(filled, want));
            if (n === null) break;
            filled += n;
          }
          if (filled < want) {
            throw new CoveError(
              "oci.push_source",
              "the disk became shorter while it was being pushed",
              {
                hint: "do not change the VM while pushing it",
              },
            );
          }
          const view = buf.subarray(0, filled);
          if (isAllZero(view)) {
            // Zeros need no reading by the encoder, and a leading zero run no hashing yet.
            if (zeroPrefix >= 0) zeroPrefix += filled;
            else hu.update(view);
            emit(ctl, enc.pushZeros(filled));
          } else {
            if (zeroPrefix > 0) hashZeros(hu, zeroPrefix);
            zeroPrefix = -1;
            hu.update(view);
            emit(ctl, enc.push(view));
          }
          left -= filled;
          onBytes?.(filled);
        }
      } catch (e) {
        close();
        const err = e instanceof CoveError ? e : toCoveError(e, "reading the disk");
        reject(err);
        ctl.error(err);
      }
    },
    cancel() {
      close();
      reject(new CoveError("oci.cancelled", "the upload was cancelled"));
    },
  });
  return { body, done };
}
