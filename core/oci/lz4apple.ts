/**
 * Apple's LZ4 framing, as written by Apple's Compression library
 * (`COMPRESSION_LZ4`, `NSData.compressed(using: .lz4)`) and therefore by Tart
 * for its `disk.v2` layers. A stream is a sequence of blocks, each starting
 * with a four-byte magic:
 *
 * - `bv41` + u32le decoded size + u32le encoded size + a raw LZ4 block;
 *   a block may copy from up to 64 KiB of output produced by earlier blocks;
 * - `bv4-` + u32le size + that many bytes stored as they are;
 * - `bv4$` ends the stream; nothing may follow it.
 *
 * The encoder writes independent 64 KiB blocks (the size Apple's own encoder
 * uses), stores a block as `bv4-` when LZ4 would not make it smaller, and
 * emits a precomputed block for all-zero input, which is most of a VM disk.
 * The decoder keeps a 64 KiB history so it reads Apple's linked blocks too.
 * Both stream with bounded memory: the decoder holds at most one block's
 * payload plus its output buffer, the encoder one block plus its output.
 *
 * Written by hand rather than taken from npm: the maintained LZ4 packages
 * either only speak the standard LZ4 frame, prepend their own size header,
 * cannot decode against a prefix dictionary (needed for Apple's linked
 * blocks), or compress incompressible data at about 150 MB/s (lz4-wasm-nodejs
 * and the native lz4-napi both measured so here), which would make pushing a
 * disk of random data slower than this encoder with its skip acceleration.
 * The block format follows the public LZ4 block specification.
 *
 * @example
 * ```ts
 * const enc = new AppleLz4Encoder();
 * const parts = [...enc.push(data), ...enc.finish()].map((p) => p.slice());
 * const dec = new AppleLz4Decoder();
 * for (const part of parts) for (const out of dec.push(part)) use(out);
 * for (const out of dec.finish()) use(out);
 * ```
 * @module
 */
import { CoveError, ExitCode } from "../errors.ts";
import { concatBytes } from "../bytes.ts";
import { isAllZero } from "../zero.ts";

/** `bv41`: an LZ4-compressed block. */
export const MAGIC_COMPRESSED = 0x31347662;
/** `bv4-`: a block stored uncompressed. */
export const MAGIC_RAW = 0x2d347662;
/** `bv4$`: the end of the stream. */
export const MAGIC_END = 0x24347662;

/** Decoded size of the blocks the encoder writes (Apple's encoder uses the same). */
export const BLOCK_SIZE = 64 * 1024;
/** How far back a match may reach (LZ4's window). */
const WINDOW = 64 * 1024;
/** The largest decoded size the decoder accepts for one block. */
export const MAX_BLOCK = 4 * 1024 * 1024;

const MIN_MATCH = 4;
const LAST_LITERALS = 5;
const MF_LIMIT = 12;
const HASH_LOG = 13;
const SKIP_TRIGGER = 6;

function corrupt(detail: string): CoveError {
  return new CoveError("oci.lz4_corrupt", `corrupt LZ4 data: ${detail}`, {
    hint: "the layer is damaged; pull again, or re-push the image",
    exit: ExitCode.Network,
  });
}

function readU32(b: Uint8Array, i: number): number {
  return (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;
}

function writeU32(b: Uint8Array, i: number, v: number): void {
  b[i] = v & 0xff;
  b[i + 1] = (v >>> 8) & 0xff;
  b[i + 2] = (v >>> 16) & 0xff;
  b[i + 3] = (v >>> 24) & 0xff;
}

/** The worst-case size of one LZ4 block for `n` input bytes. */
export function compressBound(n: number): number {
  return n + Math.floor(n / 255) + 16;
}

/**
 * Compresses `src[start, end)` into one raw LZ4 block at `dst[dstStart...]`,
 * with no dictionary. Returns the encoded length, or 0 if the block would not
 * fit in `dstLimit` (callers then store the block uncompressed).
 * `table` is a scratch hash table of 2^13 entries, reused between calls.
 */
export function compressBlock(
  src: Uint8Array,
  start: number,
  end: number,
  dst: Uint8Array,
  dstStart: number,
  dstLimit: number,
  table: Int32Array,
): number {
  const len = end - start;
  let op = dstStart;
  let anchor = start;
  if (len >= MF_LIMIT + 1) {
    table.fill(-1);
    const mfLimit = end - MF_LIMIT;
    const matchLimit = end - LAST_LITERALS;
    let ip = start;
    while (true) {
      // Find a match; the step grows on misses so incompressible data is skipped fast.
      let step = 1;
      let searches = 1 << SKIP_TRIGGER;
      let ref = -1;
      let seq = 0;
      while (true) {
        if (ip > mfLimit) break;
        seq = src[ip] | (src[ip + 1] << 8) | (src[ip + 2] << 16) | (src[ip + 3] << 24);
        const h = Math.imul(seq, -1640531535) >>> (32 - HASH_LOG);
        ref = table[h];
        table[h] = ip;
        if (
          ref >= 0 && ip - ref <= 65535 &&
          (src[ref] | (src[ref + 1] << 8) | (src[ref + 2] << 16) | (src[ref + 3] << 24)) === seq
        ) break;
        ref = -1;
        ip += step;
        step = searches++ >> SKIP_TRIGGER;
      }
      if (ref < 0) break;
      // Extend backwards over bytes that also match.
      while (ip > anchor && ref > start && src[ip - 1] === src[ref - 1]) {
        ip--;
        ref--;
      }
      // Extend forwards.
      let mEnd = ip + MIN_MATCH;
      let rEnd = ref + MIN_MATCH;
      while (mEnd < matchLimit && src[mEnd] === src[rEnd]) {
        mEnd++;
        rEnd++;
      }
      const litLen = ip - anchor;
      const matchLen = mEnd - ip - MIN_MATCH;
      // token + literal length bytes + literals + offset + match length bytes
      const need = 1 + (litLen >= 15 ? 1 + Math.floor((litLen - 15) / 255) : 0) + litLen + 2 +
        (matchLen >= 15 ? 1 + Math.floor((matchLen - 15) / 255) : 0);
      if (op + need + LAST_LITERALS + 1 > dstLimit) return 0;
      const tokenPos = op++;
      let token: number;
      if (litLen >= 15) {
        token = 0xf0;
        let r = litLen - 15;
        while (r >= 255) {
          dst[op++] = 255;
          r -= 255;
        }
        dst[op++] = r;
      } else {
        token = litLen << 4;
      }
      if (litLen > 32) {
        dst.set(src.subarray(anchor, ip), op);
        op += litLen;
      } else {
        for (let i = anchor; i < ip; i++) dst[op++] = src[i];
      }
      const offset = ip - ref;
      dst[op++] = offset & 0xff;
      dst[op++] = offset >>> 8;
      if (matchLen >= 15) {
        token |= 0x0f;
        let r = matchLen - 15;
        while (r >= 255) {
          dst[op++] = 255;
          r -= 255;
        }
        dst[op++] = r;
      } else {
        token |= matchLen;
      }
      dst[tokenPos] = token;
      ip = mEnd;
      anchor = ip;
      if (ip > mfLimit) break;
      // Remember a position inside the match to help the next search.
      const p = ip - 2;
      const s2 = src[p] | (src[p + 1] << 8) | (src[p + 2] << 16) | (src[p + 3] << 24);
      table[Math.imul(s2, -1640531535) >>> (32 - HASH_LOG)] = p;
    }
  }
  // Last literals.
  const litLen = end - anchor;
  const need = 1 + (litLen >= 15 ? 1 + Math.floor((litLen - 15) / 255) : 0) + litLen;
  if (op + need > dstLimit) return 0;
  if (litLen >= 15) {
    dst[op++] = 0xf0;
    let r = litLen - 15;
    while (r >= 255) {
      dst[op++] = 255;
      r -= 255;
    }
    dst[op++] = r;
  } else {
    dst[op++] = litLen << 4;
  }
  dst.set(src.subarray(anchor, end), op);
  op += litLen;
  return op - dstStart;
}

/**
 * Decodes one raw LZ4 block from `src[ip, ipEnd)` into `out` at `op`, where
 * `out[lowest, op)` is history a match may reach into. Returns the new
 * output position; throws a CoveError on any malformed input.
 */
export function decompressBlock(
  src: Uint8Array,
  ip: number,
  ipEnd: number,
  out: Uint8Array,
  op: number,
  opEnd: number,
  lowest: number,
): number {
  while (true) {
    if (ip >= ipEnd) throw corrupt("block ends inside a sequence");
    const token = src[ip++];
    let litLen = token >>> 4;
    if (litLen === 15) {
      let b = 255;
      while (b === 255) {
        if (ip >= ipEnd) throw corrupt("block ends inside a literal length");
        b = src[ip++];
        litLen += b;
      }
    }
    if (litLen > 0) {
      if (ip + litLen > ipEnd) throw corrupt("literals run past the block");
      if (op + litLen > opEnd) throw corrupt("block decodes to more than its declared size");
      if (litLen > 16) {
        out.set(src.subarray(ip, ip + litLen), op);
        op += litLen;
        ip += litLen;
      } else {
        for (let i = 0; i < litLen; i++) out[op++] = src[ip++];
      }
    }
    if (ip === ipEnd) return op; // the last sequence has no match
    if (ip + 2 > ipEnd) throw corrupt("block ends inside a match offset");
    const offset = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    if (offset === 0 || op - offset < lowest) throw corrupt("match offset points before the data");
    let matchLen = (token & 0x0f) + MIN_MATCH;
    if ((token & 0x0f) === 15) {
      let b = 255;
      while (b === 255) {
        if (ip >= ipEnd) throw corrupt("block ends inside a match length");
        b = src[ip++];
        matchLen += b;
      }
    }
    if (op + matchLen > opEnd) throw corrupt("block decodes to more than its declared size");
    let from = op - offset;
    if (matchLen <= 32) {
      for (let i = 0; i < matchLen; i++) out[op++] = out[from++];
    } else if (offset >= matchLen) {
      out.copyWithin(op, from, from + matchLen);
      op += matchLen;
    } else if (offset === 1) {
      out.fill(out[from], op, op + matchLen);
      op += matchLen;
    } else {
      // An overlapping match repeats the last `offset` bytes; copy in doubling
      // steps, each a whole number of periods back.
      let done = 0;
      while (done < matchLen) {
        const span = Math.floor((done + offset) / offset) * offset;
        const n = Math.min(span, matchLen - done);
        out.copyWithin(op + done, op + done - span, op + done - span + n);
        done += n;
      }
      op += matchLen;
    }
  }
}

const HEADER_COMPRESSED = 12;
const HEADER_RAW = 8;

let zeroBlockCache: Uint8Array | undefined;

/** The framed `bv41` block for 64 KiB of zeros (computed once). */
function zeroBlock(): Uint8Array {
  if (!zeroBlockCache) {
    const src = new Uint8Array(BLOCK_SIZE);
    const dst = new Uint8Array(compressBound(BLOCK_SIZE) + HEADER_COMPRESSED);
    const n = compressBlock(
      src,
      0,
      BLOCK_SIZE,
      dst,
      HEADER_COMPRESSED,
      dst.length,
      new Int32Array(1 << HASH_LOG),
    );
    writeU32(dst, 0, MAGIC_COMPRESSED);
    writeU32(dst, 4, BLOCK_SIZE);
    writeU32(dst, 8, n);
    zeroBlockCache = dst.slice(0, HEADER_COMPRESSED + n);
  }
  return zeroBlockCache;
}

/**
 * Streaming encoder. `push()` and `finish()` yield views into an internal
 * buffer that stay valid only until the generator is resumed: consume (or
 * copy) each before asking for the next.
 */
export class AppleLz4Encoder {
  #in = new Uint8Array(BLOCK_SIZE);
  #inLen = 0;
  #out: Uint8Array;
  #outLen = 0;
  #table = new Int32Array(1 << HASH_LOG);
  #done = false;
  /** Total bytes accepted. */
  bytesIn = 0;
  /** Total bytes produced. */
  bytesOut = 0;

  /** `outputSize` is how much compressed output is gathered before it is yielded. */
  constructor(outputSize = 1024 * 1024) {
    this.#out = new Uint8Array(
      Math.max(outputSize, compressBound(BLOCK_SIZE) + HEADER_COMPRESSED) + 4,
    );
  }

  /** Adds input; yields compressed output as the output buffer fills. */
  *push(data: Uint8Array): Generator<Uint8Array> {
    if (this.#done) throw new Error("AppleLz4Encoder: push after finish");
    this.bytesIn += data.length;
    let i = 0;
    // Fill a partly filled block first.
    if (this.#inLen > 0) {
      const n = Math.min(BLOCK_SIZE - this.#inLen, data.length);
      this.#in.set(data.subarray(0, n), this.#inLen);
      this.#inLen += n;
      i = n;
      if (this.#inLen === BLOCK_SIZE) {
        yield* this.#block(this.#in, 0, BLOCK_SIZE);
        this.#inLen = 0;
      }
    }
    // Whole blocks straight from the caller's buffer.
    while (data.length - i >= BLOCK_SIZE) {
      yield* this.#block(data, i, i + BLOCK_SIZE);
      i += BLOCK_SIZE;
    }
    if (i < data.length) {
      this.#in.set(data.subarray(i), 0);
      this.#inLen = data.length - i;
    }
  }

  /**
   * Adds `n` zero bytes without reading them: whole 64 KiB blocks become the
   * precomputed zero block. Same output as pushing `n` zeros.
   */
  *pushZeros(n: number): Generator<Uint8Array> {
    if (this.#done) throw new Error("AppleLz4Encoder: push after finish");
    this.bytesIn += n;
    if (this.#inLen > 0) {
      const k = Math.min(BLOCK_SIZE - this.#inLen, n);
      this.#in.fill(0, this.#inLen, this.#inLen + k);
      this.#inLen += k;
      n -= k;
      if (this.#inLen === BLOCK_SIZE) {
        yield* this.#block(this.#in, 0, BLOCK_SIZE);
        this.#inLen = 0;
      }
    }
    const z = zeroBlock();
    while (n >= BLOCK_SIZE) {
      if (this.#outLen + z.length + 4 > this.#out.length) yield* this.#flush();
      this.#out.set(z, this.#outLen);
      this.#outLen += z.length;
      n -= BLOCK_SIZE;
    }
    if (n > 0) {
      this.#in.fill(0, 0, n);
      this.#inLen = n;
    }
  }

  /** Flushes the last partial block and the end marker. */
  *finish(): Generator<Uint8Array> {
    if (this.#done) return;
    if (this.#inLen > 0) yield* this.#block(this.#in, 0, this.#inLen);
    this.#inLen = 0;
    this.#done = true;
    writeU32(this.#out, this.#outLen, MAGIC_END);
    this.#outLen += 4;
    yield* this.#flush();
  }

  *#flush(): Generator<Uint8Array> {
    if (this.#outLen === 0) return;
    const view = this.#out.subarray(0, this.#outLen);
    this.bytesOut += this.#outLen;
    this.#outLen = 0;
    yield view;
  }

  *#block(src: Uint8Array, start: number, end: number): Generator<Uint8Array> {
    const len = end - start;
    if (this.#outLen + compressBound(len) + HEADER_COMPRESSED + 4 > this.#out.length) {
      yield* this.#flush();
    }
    const out = this.#out;
    const at = this.#outLen;
    if (len === BLOCK_SIZE && isAllZero(src.subarray(start, end))) {
      const z = zeroBlock();
      out.set(z, at);
      this.#outLen += z.length;
      return;
    }
    // Compressed only if it saves space; otherwise stored as it is.
    const limit = at + HEADER_COMPRESSED + len - (HEADER_COMPRESSED - HEADER_RAW) - 1;
    const n = compressBlock(src, start, end, out, at + HEADER_COMPRESSED, limit, this.#table);
    if (n > 0) {
      writeU32(out, at, MAGIC_COMPRESSED);
      writeU32(out, at + 4, len);
      writeU32(out, at + 8, n);
      this.#outLen += HEADER_COMPRESSED + n;
    } else {
      writeU32(out, at, MAGIC_RAW);
      writeU32(out, at + 4, len);
      out.set(src.subarray(start, end), at + HEADER_RAW);
      this.#outLen += HEADER_RAW + len;
    }
  }
}

const enum State {
  Magic,
  Header,
  Payload,
  Raw,
  End,
}

/**
 * Streaming decoder. `push()` yields decoded output in pieces of up to
 * `outputSize` bytes; each view stays valid only until the generator is
 * resumed. Throws a CoveError (`oci.lz4_corrupt`) on malformed input,
 * including a stream that stops before its end marker (at `finish()`).
 */
export class AppleLz4Decoder {
  #state = State.Magic;
  #hdr = new Uint8Array(12);
  #hdrLen = 0;
  #hdrNeed = 4;
  #magic = 0;
  #decoded = 0;
  #encoded = 0;
  #payload: Uint8Array = new Uint8Array(0);
  #payloadLen = 0;
  #rawLeft = 0;
  /** Output: [0, #base) is history, [#base, #op) is not yet yielded. */
  #out: Uint8Array;
  #base = 0;
  #op = 0;
  /** How much of the stream's output precedes #out[0] plus history available. */
  #lowest = 0;
  /** Total decoded bytes. */
  bytesOut = 0;
  /** Total encoded bytes consumed. */
  bytesIn = 0;

  /** `outputSize` (at least {@link MAX_BLOCK}) is how much output is gathered before it is yielded. */
  constructor(outputSize = MAX_BLOCK) {
    this.#out = new Uint8Array(WINDOW + Math.max(outputSize, MAX_BLOCK));
    this.#base = WINDOW;
    this.#op = WINDOW;
    this.#lowest = WINDOW;
  }

  /** True once the end marker has been read. */
  get ended(): boolean {
    return this.#state === State.End;
  }

  /** Feeds encoded bytes; yields decoded output as it becomes available. */
  *push(chunk: Uint8Array): Generator<Uint8Array> {
    let i = 0;
    const n = chunk.length;
    this.bytesIn += n;
    while (i < n) {
      switch (this.#state) {
        case State.End:
          throw corrupt("data after the end-of-stream marker");
        case State.Magic:
        case State.Header: {
          const take = Math.min(this.#hdrNeed - this.#hdrLen, n - i);
          this.#hdr.set(chunk.subarray(i, i + take), this.#hdrLen);
          this.#hdrLen += take;
          i += take;
          if (this.#hdrLen < this.#hdrNeed) break;
          if (this.#state === State.Magic) {
            this.#magic = readU32(this.#hdr, 0);
            if (this.#magic === MAGIC_END) {
              this.#state = State.End;
              yield* this.#flush(true);
              break;
            }
            if (this.#magic === MAGIC_COMPRESSED) this.#hdrNeed = HEADER_COMPRESSED;
            else if (this.#magic === MAGIC_RAW) this.#hdrNeed = HEADER_RAW;
            else throw corrupt("unknown block header (not bv41, bv4- or bv4$)");
            this.#state = State.Header;
            break;
          }
          this.#decoded = readU32(this.#hdr, 4);
          this.#hdrLen = 0;
          this.#hdrNeed = 4;
          if (this.#decoded > MAX_BLOCK) {
            throw corrupt(`block of ${this.#decoded} bytes is too large`);
          }
          if (this.#magic === MAGIC_RAW) {
            this.#rawLeft = this.#decoded;
            this.#state = this.#rawLeft > 0 ? State.Raw : State.Magic;
            break;
          }
          this.#encoded = readU32(this.#hdr, 8);
          if (this.#encoded === 0 || this.#encoded > compressBound(this.#decoded)) {
            throw corrupt("block's encoded size does not fit its decoded size");
          }
          yield* this.#room(this.#decoded);
          this.#payloadLen = 0;
          this.#state = State.Payload;
          // The whole payload in this chunk: decode in place without copying.
          if (n - i >= this.#encoded) {
            this.#decode(chunk, i, i + this.#encoded);
            i += this.#encoded;
            this.#state = State.Magic;
          } else if (this.#payload.length < this.#encoded) {
            this.#payload = new Uint8Array(Math.max(this.#encoded, 256 * 1024));
          }
          break;
        }
        case State.Payload: {
          const take = Math.min(this.#encoded - this.#payloadLen, n - i);
          this.#payload.set(chunk.subarray(i, i + take), this.#payloadLen);
          this.#payloadLen += take;
          i += take;
          if (this.#payloadLen === this.#encoded) {
            this.#decode(this.#payload, 0, this.#encoded);
            this.#state = State.Magic;
          }
          break;
        }
        case State.Raw: {
          if (this.#op === this.#out.length) yield* this.#room(1);
          const take = Math.min(this.#rawLeft, n - i, this.#out.length - this.#op);
          this.#out.set(chunk.subarray(i, i + take), this.#op);
          this.#op += take;
          i += take;
          this.#rawLeft -= take;
          if (this.#rawLeft === 0) this.#state = State.Magic;
          break;
        }
      }
    }
  }

  /** Ends the input: throws if the end marker was not seen; yields what is left. */
  *finish(): Generator<Uint8Array> {
    if (this.#state !== State.End) {
      throw corrupt("the stream ends before its end-of-stream marker (truncated)");
    }
    yield* this.#flush(true);
  }

  #decode(src: Uint8Array, start: number, end: number): void {
    const op = decompressBlock(
      src,
      start,
      end,
      this.#out,
      this.#op,
      this.#op + this.#decoded,
      this.#lowest,
    );
    if (op !== this.#op + this.#decoded) {
      throw corrupt("block decodes to less than its declared size");
    }
    this.#op = op;
  }

  /** Makes room for `need` more output bytes, yielding pending output first. */
  *#room(need: number): Generator<Uint8Array> {
    if (this.#op + need <= this.#out.length) return;
    yield* this.#flush(false);
  }

  /** Yields pending output, then keeps the last 64 KiB as history. */
  *#flush(final: boolean): Generator<Uint8Array> {
    if (this.#op > this.#base) {
      const view = this.#out.subarray(this.#base, this.#op);
      this.bytesOut += view.length;
      this.#base = this.#op;
      yield view;
    }
    if (final) return;
    if (this.#op > WINDOW) {
      const keep = Math.min(WINDOW, this.#op - this.#lowest);
      this.#out.copyWithin(WINDOW - keep, this.#op - keep, this.#op);
      this.#lowest = WINDOW - keep;
      this.#op = WINDOW;
      this.#base = WINDOW;
    }
  }
}

/** Compresses a whole buffer (for small blobs and tests). */
export function encodeAppleLz4(data: Uint8Array): Uint8Array<ArrayBuffer> {
  const enc = new AppleLz4Encoder();
  const parts: Uint8Array[] = [];
  for (const p of enc.push(data)) parts.push(p.slice());
  for (const p of enc.finish()) parts.push(p.slice());
  return concatBytes(parts);
}

/** Decompresses a whole buffer (for small blobs and tests). */
export function decodeAppleLz4(data: Uint8Array): Uint8Array<ArrayBuffer> {
  const dec = new AppleLz4Decoder();
  const parts: Uint8Array[] = [];
  for (const p of dec.push(data)) parts.push(p.slice());
  for (const p of dec.finish()) parts.push(p.slice());
  return concatBytes(parts);
}
