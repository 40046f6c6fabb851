/**
 * Fast all-zero tests for byte ranges, used to keep pulled disks sparse and
 * to store zero blocks compactly. Compares against a shared zero buffer with
 * `Buffer.compare` (a native memcmp, about 30 GB/s here) instead of a
 * JavaScript loop (about 4 GB/s). The same buffer gives {@link zeroChunks},
 * to hash or write runs of zeros without allocating them.
 * @module
 */
import { Buffer } from "node:buffer";

const ZEROS = new Uint8Array(1024 * 1024);
const ZEROS_BUF = Buffer.from(ZEROS.buffer, 0, ZEROS.length);

/** True when every byte of `b` is zero. */
export function isAllZero(b: Uint8Array): boolean {
  let off = 0;
  while (off < b.length) {
    const n = Math.min(ZEROS.length, b.length - off);
    const view = Buffer.from(b.buffer, b.byteOffset + off, n);
    if (Buffer.compare(view, n === ZEROS.length ? ZEROS_BUF : ZEROS_BUF.subarray(0, n)) !== 0) {
      return false;
    }
    off += n;
  }
  return true;
}

/**
 * Splits `b` into runs of `granule`-sized pieces (the last may be shorter)
 * and calls `onData(start, end)` for each maximal run that is not all zero.
 * `start` and `end` are offsets within `b`.
 */
export function forEachNonZeroRun(
  b: Uint8Array,
  granule: number,
  onData: (start: number, end: number) => void,
): void {
  let runStart = -1;
  for (let off = 0; off < b.length; off += granule) {
    const end = Math.min(off + granule, b.length);
    if (isAllZero(b.subarray(off, end))) {
      if (runStart >= 0) {
        onData(runStart, off);
        runStart = -1;
      }
    } else if (runStart < 0) {
      runStart = off;
    }
  }
  if (runStart >= 0) onData(runStart, b.length);
}

/**
 * `n` zero bytes as views of the shared zero buffer, at most 1 MiB each (to
 * hash or write a run of zeros). The views are read-only by contract: never
 * write into them.
 */
export function* zeroChunks(n: number): Generator<Uint8Array> {
  for (; n > 0; n -= ZEROS.length) yield ZEROS.subarray(0, Math.min(n, ZEROS.length));
}
