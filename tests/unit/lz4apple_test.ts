// Known-answer tests for Apple's LZ4 framing (core/oci/lz4apple.ts). The
// vectors are written out byte by byte from the framing description and the
// LZ4 block specification, not produced by the code under test.
import assert from "node:assert/strict";
import { assertCoveError } from "../helpers/assert.ts";
import {
  AppleLz4Decoder,
  AppleLz4Encoder,
  BLOCK_SIZE,
  decodeAppleLz4,
  encodeAppleLz4,
} from "../../core/oci/lz4apple.ts";

const te = new TextEncoder();
const td = new TextDecoder();

/** Builds a byte array from strings (ASCII) and numbers (single bytes). */
function bytes(...parts: (string | number | number[])[]): Uint8Array {
  const out: number[] = [];
  for (const p of parts) {
    if (typeof p === "string") out.push(...te.encode(p));
    else if (typeof p === "number") out.push(p);
    else out.push(...p);
  }
  return new Uint8Array(out);
}

/** A little-endian u32 as four bytes. */
function u32(n: number): number[] {
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];
}

function decodeBytewise(data: Uint8Array): Uint8Array {
  const dec = new AppleLz4Decoder();
  const parts: number[] = [];
  for (let i = 0; i < data.length; i++) {
    for (const o of dec.push(data.subarray(i, i + 1))) parts.push(...o);
  }
  for (const o of dec.finish()) parts.push(...o);
  return new Uint8Array(parts);
}

function assertCorrupt(data: Uint8Array, pattern: RegExp): void {
  assertCoveError(() => decodeAppleLz4(data), { code: "oci.lz4_corrupt", message: pattern });
}

// "abc" then a match of 12 at offset 3, then the 5 final literals "xyz12".
const COMPRESSED_ABC = bytes(
  "bv41",
  u32(20),
  u32(12),
  0x38, // 3 literals, match length 8 + 4
  "abc",
  [0x03, 0x00], // offset 3
  0x50, // 5 literals, no match
  "xyz12",
  "bv4$",
);

Deno.test("lz4apple decodes a hand-made bv41 compressed block", () => {
  assert.equal(td.decode(decodeAppleLz4(COMPRESSED_ABC)), "abcabcabcabcabcxyz12");
});

Deno.test("lz4apple decodes a stream fed one byte at a time", () => {
  assert.equal(td.decode(decodeBytewise(COMPRESSED_ABC)), "abcabcabcabcabcxyz12");
});

Deno.test("lz4apple decodes a bv4- uncompressed block", () => {
  const data = bytes("bv4-", u32(5), "hello", "bv4$");
  assert.equal(td.decode(decodeAppleLz4(data)), "hello");
});

Deno.test("lz4apple decodes an empty stream that is only the end marker", () => {
  assert.equal(decodeAppleLz4(bytes("bv4$")).length, 0);
});

Deno.test("lz4apple lets a block copy from the previous block's output", () => {
  const data = bytes(
    "bv4-",
    u32(11),
    "hello world",
    "bv41",
    u32(12),
    u32(5),
    0x07, // no literals, match length 7 + 4 = 11
    [0x0b, 0x00], // offset 11: the start of the previous block
    0x10, // 1 literal
    "!",
    "bv4$",
  );
  assert.equal(td.decode(decodeAppleLz4(data)), "hello worldhello world!");
  assert.equal(td.decode(decodeBytewise(data)), "hello worldhello world!");
});

Deno.test("lz4apple decodes extended literal and match lengths", () => {
  // 20 literals (15 + 5), then a 300-byte run at offset 1 (4 + 15 + 255 + 26).
  const lits = "ABCDEFGHIJKLMNOPQRST";
  const data = bytes(
    "bv41",
    u32(20 + 300 + 5),
    u32(1 + 1 + 20 + 2 + 2 + 1 + 5),
    0xff,
    5,
    lits,
    [0x01, 0x00],
    [255, 26],
    0x50,
    "12345",
    "bv4$",
  );
  const out = td.decode(decodeAppleLz4(data));
  assert.equal(out, lits + "T".repeat(300) + "12345");
});

Deno.test("lz4apple encoder stores short input as a bv4- block", () => {
  assert.deepEqual(encodeAppleLz4(te.encode("hello")), bytes("bv4-", u32(5), "hello", "bv4$"));
});

Deno.test("lz4apple encoder writes the end marker alone for empty input", () => {
  assert.deepEqual(encodeAppleLz4(new Uint8Array(0)), bytes("bv4$"));
});

Deno.test("lz4apple encoder compresses a zero block into a small bv41 block", () => {
  const enc = encodeAppleLz4(new Uint8Array(BLOCK_SIZE));
  assert.deepEqual([...enc.subarray(0, 8)], [...te.encode("bv41"), ...u32(BLOCK_SIZE)]);
  const encoded = enc[8] | (enc[9] << 8) | (enc[10] << 16) | (enc[11] << 24);
  assert.equal(enc.length, 12 + encoded + 4);
  assert.ok(encoded < 300, `zero block is ${encoded} bytes`);
  assert.deepEqual([...enc.subarray(enc.length - 4)], [...te.encode("bv4$")]);
  assert.deepEqual(decodeAppleLz4(enc), new Uint8Array(BLOCK_SIZE));
});

Deno.test("lz4apple encoder round-trips mixed data of several blocks and odd sizes", () => {
  const n = 5 * BLOCK_SIZE + 12345;
  const data = new Uint8Array(n);
  let s = 42;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const region = Math.floor(i / 50000) % 4;
    data[i] = region === 0
      ? s >>> 24
      : region === 1
      ? 0
      : region === 2
      ? i % 7
      : te.encode("pattern!")[i % 8];
  }
  const enc = new AppleLz4Encoder(100_000);
  const parts: Uint8Array[] = [];
  // Push in uneven pieces to cross block boundaries.
  for (let i = 0; i < n; i += 9999) {
    for (const p of enc.push(data.subarray(i, i + 9999))) parts.push(p.slice());
  }
  for (const p of enc.finish()) parts.push(p.slice());
  assert.equal(enc.bytesIn, n);
  const dec = new AppleLz4Decoder();
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    for (const d of dec.push(p)) {
      out.set(d, o);
      o += d.length;
    }
  }
  for (const d of dec.finish()) {
    out.set(d, o);
    o += d.length;
  }
  assert.equal(o, n);
  assert.deepEqual(out, data);
  assert.ok(enc.bytesOut < n, "mixed data compresses");
});

Deno.test("lz4apple encoder output has only bv41/bv4- blocks of at most 64 KiB and one end marker", () => {
  const data = new Uint8Array(3 * BLOCK_SIZE + 7);
  crypto.getRandomValues(data.subarray(0, BLOCK_SIZE));
  const enc = encodeAppleLz4(data);
  let i = 0;
  const kinds: string[] = [];
  while (i < enc.length) {
    const magic = td.decode(enc.subarray(i, i + 4));
    kinds.push(magic);
    if (magic === "bv4$") {
      i += 4;
      break;
    }
    const size = enc[i + 4] | (enc[i + 5] << 8) | (enc[i + 6] << 16) | (enc[i + 7] << 24);
    assert.ok(size <= BLOCK_SIZE);
    if (magic === "bv41") {
      i += 12 + (enc[i + 8] | (enc[i + 9] << 8) | (enc[i + 10] << 16) | (enc[i + 11] << 24));
    } else if (magic === "bv4-") i += 8 + size;
    else assert.fail(`unexpected block ${magic}`);
  }
  assert.equal(i, enc.length);
  assert.deepEqual(kinds, ["bv4-", "bv41", "bv41", "bv4-", "bv4$"]);
});

Deno.test("lz4apple rejects an unknown block magic with a CoveError", () => {
  assertCorrupt(bytes("bv42", u32(1), u32(1), 0x10, "a", "bv4$"), /unknown block header/);
  assertCorrupt(bytes("\x04\x22\x4d\x18", 0, 0, 0), /unknown block header/);
});

Deno.test("lz4apple rejects a stream without its end marker as truncated", () => {
  assertCorrupt(bytes("bv4-", u32(5), "hello"), /truncated/);
  assertCorrupt(COMPRESSED_ABC.subarray(0, 10), /truncated/);
  assertCorrupt(bytes("bv4-", u32(5), "hel"), /truncated/);
});

Deno.test("lz4apple rejects data after the end marker", () => {
  assertCorrupt(bytes("bv4$", "x"), /after the end/);
});

Deno.test("lz4apple rejects a zero match offset and an offset before the data", () => {
  assertCorrupt(
    bytes("bv41", u32(9), u32(8), 0x10, "a", [0x00, 0x00], 0x10, "b", "bv4$"),
    /offset/,
  );
  assertCorrupt(
    bytes("bv41", u32(9), u32(8), 0x10, "a", [0x05, 0x00], 0x10, "b", "bv4$"),
    /offset/,
  );
});

Deno.test("lz4apple rejects a block whose decoded size differs from its header", () => {
  // Declares 21 bytes but decodes to 20.
  const short = COMPRESSED_ABC.slice();
  short[4] = 21;
  assertCorrupt(short, /less than its declared size/);
  // Declares 19 bytes but decodes to 20.
  const long = COMPRESSED_ABC.slice();
  long[4] = 19;
  assertCorrupt(long, /more than its declared size/);
});

Deno.test("lz4apple rejects literals that run past the end of the block", () => {
  assertCorrupt(bytes("bv41", u32(9), u32(3), 0x90, "ab", "bv4$"), /literals run past/);
});

Deno.test("lz4apple rejects an oversized block header instead of allocating it", () => {
  assertCorrupt(bytes("bv41", u32(0x7fffffff), u32(16), "bv4$"), /too large/);
  assertCorrupt(bytes("bv4-", u32(0xffffffff), "x"), /too large/);
});

// --- Interop with the reference LZ4 implementation (Debian's `lz4` tool). ---
// Apple's framing wraps plain LZ4 blocks, so the block codec is checked
// against liblz4 by re-wrapping blocks in LZ4's own frame formats.

async function lz4Tool(args: string[], input: Uint8Array): Promise<Uint8Array> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("lz4", { args, stdin: "piped", stdout: "piped", stderr: "piped" })
      .spawn();
  } catch (e) {
    throw new Error(`the 'lz4' tool is required for this test (apt-get install lz4): ${e}`);
  }
  const w = child.stdin.getWriter();
  const [out] = await Promise.all([child.output(), w.write(input).then(() => w.close())]);
  if (!out.success) throw new Error(`lz4 ${args.join(" ")} failed: ${td.decode(out.stderr)}`);
  return out.stdout;
}

function mixedData(n: number, seed: number): Uint8Array {
  const data = new Uint8Array(n);
  let s = seed;
  const words = te.encode("virtual machine disk image sector boot loader kernel ");
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const region = Math.floor(i / 70000) % 4;
    data[i] = region === 0
      ? s >>> 24
      : region === 1
      ? 0
      : region === 2
      ? words[(i + (s >>> 29)) % words.length]
      : i % 13;
  }
  return data;
}

Deno.test("lz4apple blocks decode with the reference lz4 tool", async () => {
  const data = mixedData(6 * BLOCK_SIZE + 999, 7);
  const apple = encodeAppleLz4(data);
  // Re-wrap as LZ4's legacy frame: magic, then (u32 size, block) pairs.
  const legacy: number[] = [...u32(0x184c2102)];
  let i = 0;
  for (;;) {
    const magic = td.decode(apple.subarray(i, i + 4));
    if (magic === "bv4$") break;
    const size = apple[i + 4] | (apple[i + 5] << 8) | (apple[i + 6] << 16) | (apple[i + 7] << 24);
    if (magic === "bv41") {
      const enc = apple[i + 8] | (apple[i + 9] << 8) | (apple[i + 10] << 16) |
        (apple[i + 11] << 24);
      legacy.push(...u32(enc), ...apple.subarray(i + 12, i + 12 + enc));
      i += 12 + enc;
    } else {
      // A stored block becomes an all-literal LZ4 block.
      const lit: number[] = [];
      if (size >= 15) {
        lit.push(0xf0);
        let r = size - 15;
        while (r >= 255) {
          lit.push(255);
          r -= 255;
        }
        lit.push(r);
      } else lit.push(size << 4);
      lit.push(...apple.subarray(i + 8, i + 8 + size));
      legacy.push(...u32(lit.length), ...lit);
      i += 8 + size;
    }
  }
  const out = await lz4Tool(["-d", "-c"], new Uint8Array(legacy));
  assert.equal(out.length, data.length);
  assert.deepEqual(out, data);
});

Deno.test("lz4apple decodes linked blocks written by the reference lz4 encoder", async () => {
  const data = mixedData(5 * BLOCK_SIZE + 4321, 11);
  // 64 KiB linked blocks (like Apple's encoder may write), no checksums.
  const frame = await lz4Tool(["-c", "-B4", "-BD", "--no-frame-crc", "-1"], data);
  assert.deepEqual([...frame.subarray(0, 4)], u32(0x184d2204));
  const flg = frame[4];
  let i = 7 + ((flg & 0x08) ? 8 : 0) + ((flg & 0x01) ? 4 : 0);
  const apple: number[] = [];
  let left = data.length;
  for (;;) {
    const word = (frame[i] | (frame[i + 1] << 8) | (frame[i + 2] << 16) | (frame[i + 3] << 24)) >>>
      0;
    i += 4;
    if (word === 0) break;
    const size = word & 0x7fffffff;
    const decoded = Math.min(BLOCK_SIZE, left);
    left -= decoded;
    if (word & 0x80000000) {
      apple.push(...te.encode("bv4-"), ...u32(size), ...frame.subarray(i, i + size));
    } else {apple.push(
        ...te.encode("bv41"),
        ...u32(decoded),
        ...u32(size),
        ...frame.subarray(i, i + size),
      );}
    i += size + ((flg & 0x10) ? 4 : 0);
  }
  apple.push(...te.encode("bv4$"));
  const out = decodeAppleLz4(new Uint8Array(apple));
  assert.deepEqual(out, data);
});

Deno.test("lz4apple pushZeros writes the same stream as pushing zero bytes", () => {
  const pieces: (number | Uint8Array)[] = [
    1000,
    te.encode("data in between"),
    3 * BLOCK_SIZE + 17,
    new Uint8Array([1, 2, 3]),
    BLOCK_SIZE - 3,
  ];
  const a = new AppleLz4Encoder(50_000);
  const b = new AppleLz4Encoder(50_000);
  const outA: number[] = [];
  const outB: number[] = [];
  for (const p of pieces) {
    if (typeof p === "number") {
      for (const o of a.pushZeros(p)) outA.push(...o);
      for (const o of b.push(new Uint8Array(p))) outB.push(...o);
    } else {
      for (const o of a.push(p)) outA.push(...o);
      for (const o of b.push(p)) outB.push(...o);
    }
  }
  for (const o of a.finish()) outA.push(...o);
  for (const o of b.finish()) outB.push(...o);
  assert.deepEqual(outA, outB);
  assert.equal(a.bytesIn, b.bytesIn);
});
