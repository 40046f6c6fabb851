/**
 * Disk image probing and a native, streaming qcow2 -> raw converter.
 *
 * Hand-written rather than calling `qemu-img` so that `cove create --from
 * disk.qcow2` works on a Mac with no QEMU installed, and because no npm
 * package reads qcow2 as a stream with compressed clusters and extended L2
 * entries. The layout follows QEMU's docs/interop/qcow2.txt:
 *
 * - versions 2 and 3, cluster sizes 512 B .. 2 MiB;
 * - zero and unallocated clusters (and subclusters) become holes: the output
 *   is created sparse and only data is written. Data blocks that are all
 *   zeros are skipped too, as `qemu-img convert` does, so the result is
 *   byte-identical to `qemu-img convert -O raw` and no less sparse;
 * - zlib (raw deflate) and zstd compressed clusters (node:zlib);
 * - extended L2 entries (32 subclusters with allocation/zero bitmaps).
 *
 * Backing files, encryption, external data files, unknown incompatible
 * features and tables or clusters that point outside the file are refused
 * with one {@link CoveError} line. Memory is bounded whatever the image
 * size: the L1 table is read in chunks, one L2 table at a time, and data
 * moves through a small ring of fixed staging buffers; every size read from
 * the file is validated before it is used to allocate or loop.
 *
 * Speed: the main thread only walks the tables and writes a plan per 4 MiB
 * staging buffer; for big images a small pool of threads carries the plans
 * out in parallel (read, decompress, write), with the buffers in shared
 * memory so nothing is copied between threads. Reads and writes are large
 * and synchronous (Deno's async file ops copy through a fresh buffer each
 * call, which costs more than the I/O here); runs contiguous in both the
 * guest and the file take one read, neighbouring compressed clusters one
 * read, and one reusable native zlib/zstd stream per thread decompresses
 * straight into the staging buffer.
 *
 * @example
 * ```ts
 * const probe = await probeImage("debian.qcow2");
 * if (probe.format === "qcow2") {
 *   await convertQcow2ToRaw("debian.qcow2", "vms/dev/disk.img");
 * }
 * ```
 * @module
 */
import {
  constants as zc,
  createInflateRaw,
  createZstdDecompress,
  inflateRawSync,
  zstdDecompressSync,
} from "node:zlib";
import { basename, dirname, join } from "node:path";
import { CoveError, ExitCode, toCoveError } from "../errors.ts";
import {
  bytesAt,
  isoKind,
  otherFormat,
  QCOW_MAGIC as QCOW_SIGNATURE,
  rawContent,
} from "../magic.ts";
import { formatSize } from "../units.ts";

/** What {@link probeImage} recognised. */
export type ImageFormat = "raw" | "qcow2" | "iso" | "other";

/** The result of {@link probeImage}. */
export interface ImageProbe {
  format: ImageFormat;
  /** Size of the disk the guest sees, in bytes (the file size for raw and iso). */
  virtualSize: number;
  /** For `other` (and some `raw`): what the header looks like, e.g. "xz-compressed data". */
  detail?: string;
  /** Present when format is `qcow2` and the header could be read. */
  qcow2?: Qcow2Info;
}

/** The parts of a qcow2 header cove cares about. */
export interface Qcow2Info {
  version: 2 | 3;
  clusterSize: number;
  virtualSize: number;
  compression: "zlib" | "zstd";
  extendedL2: boolean;
  /** The backing file name, if the image has one (cove cannot convert it). */
  backingFile?: string;
  /** True if the image is encrypted (cove cannot convert it). */
  encrypted: boolean;
  /** True if guest data lives in an external data file (cove cannot convert it). */
  externalDataFile: boolean;
}

/** Options for {@link convertQcow2ToRaw}. */
export interface ConvertOptions {
  /** Called after each chunk with guest bytes done and the total. */
  onProgress?: (done: number, total: number) => void;
  /** Cancels the conversion; the partial output is removed. */
  signal?: AbortSignal;
  /** fsync the output before renaming it into place (qemu-img does not). Default false. */
  sync?: boolean;
  /** Mode of the output file. Default 0o600. */
  mode?: number;
  /** Work on a pool of threads (2..4). Default: for virtual sizes of 64 MiB and more. */
  threaded?: boolean;
}

/** What a conversion produced. */
export interface ConvertResult {
  /** Size of the raw file: the virtual size rounded up to 512 bytes. */
  size: number;
  /** Bytes actually written (everything else is a hole). */
  dataBytes: number;
}

const QCOW_MAGIC = 0x514649fb; // "QFI\xfb"
const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;
/** Staging buffer size: guest data is gathered and written in chunks this big. */
const STAGE_SIZE = 4 << 20;
/** Compressed clusters close together in the file are read with one read of at most this. */
const COMP_SPAN = 4 << 20;
/** A gap up to this many bytes between compressed clusters is read through rather than seeked over. */
const COMP_GAP = 64 << 10;
/** A hole up to this size between two data ranges is zero-filled in the stage, not flushed. */
const GAP_FILL = 1 << 20;
/** Images at least this big (virtual) are converted on a thread pool by default. */
const THREADED_MIN = 64 << 20;
/** L1 entries read per chunk. */
const L1_CHUNK = 4096;
const TWO32 = 2 ** 32;

// ---------------------------------------------------------------------------
// Errors

function corrupt(path: string, what: string): CoveError {
  return new CoveError("image.corrupt", `${basename(path)} is not a valid qcow2 image: ${what}`, {
    hint: "the file may be truncated or damaged; download or copy it again",
  });
}

function unsupported(path: string, code: string, what: string, hint: string): CoveError {
  return new CoveError(code, `cannot convert ${basename(path)}: ${what}`, { hint });
}

function interrupted(cause?: unknown): CoveError {
  return new CoveError("interrupted", "conversion interrupted", {
    exit: ExitCode.Interrupted,
    cause,
  });
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

// ---------------------------------------------------------------------------
// Header

/** A validated qcow2 header, internal form. */
interface Header extends Qcow2Info {
  clusterBits: number;
  l1Size: number;
  l1TableOffset: number;
  /** Unknown incompatible feature bits (5..63), as a bit list; empty if none. */
  unknownFeatures: number[];
  unknownCompression?: number;
}

function u64(dv: DataView, off: number): number {
  const hi = dv.getUint32(off);
  const lo = dv.getUint32(off + 4);
  // Exact below 2^53; anything above is beyond any real file or disk and
  // only ever compared against limits, where the rounding cannot matter.
  return hi * TWO32 + lo;
}

/**
 * Parses and sanity-checks a qcow2 header. `head` holds the first bytes of
 * the file (at least 112 when the file is that long). Refusals that depend on
 * features (backing file, encryption, ...) are left to the caller so that
 * {@link probeImage} can report them.
 */
function parseHeader(head: Uint8Array, path: string): Header {
  if (head.length < 72) throw corrupt(path, "the header is truncated");
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (dv.getUint32(0) !== QCOW_MAGIC) throw corrupt(path, "no qcow2 magic");
  const version = dv.getUint32(4);
  if (version !== 2 && version !== 3) {
    throw unsupported(
      path,
      "image.unsupported",
      `qcow version ${version} is not supported`,
      "only qcow2 versions 2 and 3 can be converted",
    );
  }
  const backingOffset = u64(dv, 8);
  const backingSize = dv.getUint32(16);
  const clusterBits = dv.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw corrupt(path, `cluster_bits ${clusterBits} is outside 9..21 (512 B to 2 MiB)`);
  }
  const clusterSize = 2 ** clusterBits;
  const virtualSize = u64(dv, 24);
  const cryptMethod = dv.getUint32(32);
  const l1Size = dv.getUint32(36);
  const l1TableOffset = u64(dv, 40);

  let incompatLo = 0;
  let incompatHi = 0;
  let compressionType = 0;
  if (version === 3) {
    if (head.length < 104) throw corrupt(path, "the version 3 header is truncated");
    incompatHi = dv.getUint32(72);
    incompatLo = dv.getUint32(76);
    const headerLength = dv.getUint32(100);
    if (headerLength < 104) throw corrupt(path, `header_length ${headerLength} is below 104`);
    if (headerLength > clusterSize) {
      throw corrupt(path, `header_length ${headerLength} exceeds the cluster size`);
    }
    if (headerLength > 104) {
      if (head.length < 105) throw corrupt(path, "the header is truncated");
      compressionType = head[104];
    }
  }
  checkTables(dv, version, clusterBits, backingOffset, l1Size, l1TableOffset, path);
  checkExtensions(
    head,
    dv,
    version === 3 ? dv.getUint32(100) : 72,
    clusterSize,
    backingOffset,
    path,
  );

  const unknownFeatures: number[] = [];
  for (let b = 5; b < 32; b++) if (incompatLo & (1 << b)) unknownFeatures.push(b);
  for (let b = 0; b < 32; b++) if (incompatHi & (1 << b)) unknownFeatures.push(32 + b);
  const compressionBit = (incompatLo & 8) !== 0;
  if (compressionBit && compressionType === 0) {
    throw corrupt(path, "the compression type bit is set but compression_type is zlib");
  }
  if (!compressionBit && compressionType !== 0) {
    throw corrupt(path, "compression_type is set without its incompatible feature bit");
  }
  const extendedL2 = (incompatLo & 16) !== 0;
  if (extendedL2 && clusterBits < 14) {
    throw corrupt(path, "extended L2 entries need clusters of at least 16 KiB");
  }

  let backingFile: string | undefined;
  if (backingOffset !== 0 && backingSize !== 0) {
    const len = Math.min(backingSize, 1023);
    if (backingOffset + len <= head.length) {
      backingFile = new TextDecoder("utf-8", { fatal: false }).decode(
        head.subarray(backingOffset, backingOffset + len),
      );
    } else {
      backingFile = "(name outside the header)";
    }
  }

  const info: Header = {
    version,
    clusterSize,
    clusterBits,
    virtualSize,
    compression: compressionType === 1 ? "zstd" : "zlib",
    extendedL2,
    backingFile,
    encrypted: cryptMethod !== 0,
    externalDataFile: (incompatLo & 4) !== 0,
    l1Size,
    l1TableOffset,
    unknownFeatures,
    unknownCompression: compressionType > 1 ? compressionType : undefined,
  };
  return info;
}

/** QEMU's limits on a qcow2's tables (block/qcow2.h), which it checks when it opens one. */
const QEMU_MAX_L1_BYTES = 32 * 2 ** 20;
const QEMU_MAX_REFTABLE_BYTES = 8 * 2 ** 20;
const QEMU_MAX_SNAPSHOTS = 65536;
const SNAPSHOT_HEADER_BYTES = 40;

/**
 * The table checks QEMU makes when it opens a qcow2 (qcow2_do_open), so that
 * cove refuses what qemu-img refuses: a table is cluster aligned and its end
 * fits in a signed 64-bit offset; the refcount, snapshot and L1 tables have
 * QEMU's sizes; the backing file name starts inside the first cluster.
 */
function checkTables(
  dv: DataView,
  version: number,
  clusterBits: number,
  backingOffset: number,
  l1Size: number,
  l1TableOffset: number,
  path: string,
): void {
  const cs = 2 ** clusterBits;
  if (backingOffset > cs) {
    throw corrupt(
      path,
      `the backing file name offset ${hex(backingOffset)} is past the first cluster`,
    );
  }
  const table = (what: string, offset: number, entries: number, entryBytes: number) => {
    // Offsets above 2^53 are not exact here: for those only the end is checked.
    const unaligned = offset <= Number.MAX_SAFE_INTEGER && offset % cs !== 0;
    if (unaligned || offset + entries * entryBytes > 2 ** 63) {
      throw corrupt(path, `the ${what} offset ${hex(offset)} is invalid`);
    }
  };
  if (version === 3 && dv.byteLength >= 100) {
    const refcountOrder = dv.getUint32(96);
    if (refcountOrder > 6) {
      throw corrupt(path, `refcount_order ${refcountOrder} is above 6 (64-bit refcounts)`);
    }
  }
  const refcountOffset = u64(dv, 48);
  const refcountClusters = dv.getUint32(56);
  if (refcountClusters === 0) throw corrupt(path, "there is no refcount table");
  if (refcountClusters > QEMU_MAX_REFTABLE_BYTES / cs) {
    throw corrupt(path, `the refcount table (${refcountClusters} clusters) is too large`);
  }
  table("refcount table", refcountOffset, refcountClusters, cs);
  const snapshots = dv.getUint32(60);
  if (snapshots > QEMU_MAX_SNAPSHOTS) {
    throw corrupt(path, `${snapshots} snapshots is more than ${QEMU_MAX_SNAPSHOTS}`);
  }
  table("snapshot table", u64(dv, 64), snapshots, SNAPSHOT_HEADER_BYTES);
  if (l1Size > QEMU_MAX_L1_BYTES / 8) {
    throw corrupt(path, `the L1 table (${l1Size} entries) is too large`);
  }
  table("L1 table", l1TableOffset, l1Size, 8);
}

/**
 * Walks the header extensions (from the header's end, `start`, up to the
 * backing file name or the end of the first cluster) as QEMU does: each
 * must fit in that space. Extensions past what was read are not checked.
 */
function checkExtensions(
  head: Uint8Array,
  dv: DataView,
  start: number,
  cs: number,
  backingOffset: number,
  path: string,
): void {
  const end = backingOffset !== 0 ? backingOffset : cs;
  let at = start;
  while (at + 8 <= end && at + 8 <= head.length) {
    const type = dv.getUint32(at);
    const len = dv.getUint32(at + 4);
    at += 8;
    if (len > end - at) {
      throw corrupt(path, `a header extension (type ${hex(type)}) runs past the header`);
    }
    if (type === 0) return;
    at += Math.ceil(len / 8) * 8;
  }
}

/** Throws the refusal for anything cove cannot convert, then checks the geometry. */
function checkConvertible(h: Header, fileSize: number, path: string): void {
  if (h.backingFile !== undefined) {
    throw unsupported(
      path,
      "image.backing_file",
      `it has a backing file (${h.backingFile})`,
      "flatten it first, e.g. 'qemu-img convert -O qcow2 IMAGE flat.qcow2'",
    );
  }
  if (h.encrypted) {
    throw unsupported(
      path,
      "image.encrypted",
      "it is encrypted",
      "decrypt it first with 'qemu-img convert' and the key",
    );
  }
  if (h.externalDataFile) {
    throw unsupported(
      path,
      "image.external_data",
      "its data lives in an external data file",
      "convert the external data file (a raw image) instead",
    );
  }
  if (h.unknownFeatures.length > 0) {
    throw unsupported(
      path,
      "image.unsupported",
      `it uses unknown incompatible features (bits ${h.unknownFeatures.join(", ")})`,
      "convert it with a newer qemu-img",
    );
  }
  if (h.unknownCompression !== undefined) {
    throw unsupported(
      path,
      "image.unsupported",
      `unknown compression type ${h.unknownCompression}`,
      "only zlib and zstd are supported",
    );
  }
  if (h.virtualSize > Number.MAX_SAFE_INTEGER - h.clusterSize) {
    throw corrupt(path, "the virtual size is absurdly large");
  }
  const l1Needed = l1EntriesNeeded(h);
  if (h.l1Size < l1Needed) {
    throw corrupt(path, `the L1 table has ${h.l1Size} entries but the disk needs ${l1Needed}`);
  }
  if (l1Needed > 0) {
    if (h.l1TableOffset % h.clusterSize !== 0) {
      throw corrupt(path, `the L1 table offset ${hex(h.l1TableOffset)} is not cluster aligned`);
    }
    if (h.l1TableOffset === 0 || h.l1TableOffset + l1Needed * 8 > fileSize) {
      throw corrupt(
        path,
        `the L1 table at ${hex(h.l1TableOffset)} lies outside the file (${formatSize(fileSize)})`,
      );
    }
  }
}

function l2EntriesPerTable(h: { clusterSize: number; extendedL2: boolean }): number {
  return h.clusterSize / (h.extendedL2 ? 16 : 8);
}

function l1EntriesNeeded(h: Header): number {
  const clusters = Math.ceil(h.virtualSize / h.clusterSize);
  return Math.ceil(clusters / l2EntriesPerTable(h));
}

// ---------------------------------------------------------------------------
// Probing

/**
 * Tells raw, qcow2, iso and other images apart from their first bytes and
 * returns the size of the disk the guest would see. Never reads more than
 * 72 KiB.
 *
 * @example
 * ```ts
 * const { format, virtualSize } = await probeImage("disk.img");
 * ```
 */
export async function probeImage(path: string): Promise<ImageProbe> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw toCoveError(e, path);
  }
  try {
    const st = await file.stat();
    if (!st.isFile) {
      throw new CoveError("image.not_file", `${path} is not a regular file`, {
        exit: ExitCode.Usage,
      });
    }
    const head = new Uint8Array(Math.min(st.size, PROBE_BYTES));
    await readFully(file, 0, head);
    return classify(head, st.size, path);
  } finally {
    file.close();
  }
}

const PROBE_BYTES = 72 << 10;

function classify(head: Uint8Array, size: number, path: string): ImageProbe {
  if (bytesAt(head, 0, QCOW_SIGNATURE) && head.length >= 8) {
    const version = new DataView(head.buffer, head.byteOffset).getUint32(4);
    if (version === 2 || version === 3) {
      const h = parseHeader(head, path);
      const info: Qcow2Info = {
        version: h.version,
        clusterSize: h.clusterSize,
        virtualSize: h.virtualSize,
        compression: h.compression,
        extendedL2: h.extendedL2,
        backingFile: h.backingFile,
        encrypted: h.encrypted,
        externalDataFile: h.externalDataFile,
      };
      return { format: "qcow2", virtualSize: h.virtualSize, qcow2: info };
    }
    return { format: "other", virtualSize: size, detail: `a qcow version ${version} image` };
  }
  // ISO 9660 (also hybrid ISOs, which carry an MBR too): "CD001" in the first volume descriptor.
  const iso = isoKind(head);
  if (iso === "iso9660") return { format: "iso", virtualSize: size };
  if (iso === "udf") return { format: "iso", virtualSize: size, detail: "UDF" };
  const other = otherFormat(head);
  if (other) return { format: "other", virtualSize: size, detail: other };
  if (looksLikeText(head)) {
    return { format: "other", virtualSize: size, detail: "text (an HTML page or a document?)" };
  }
  const raw = rawContent(head);
  if (raw) return { format: "raw", virtualSize: size, detail: raw };
  if (head.length > 0 && head.every((b) => b === 0)) {
    return { format: "raw", virtualSize: size, detail: "blank" };
  }
  return { format: "other", virtualSize: size, detail: "unrecognised data" };
}

function looksLikeText(head: Uint8Array): boolean {
  const n = Math.min(head.length, 512);
  if (n < 16) return false;
  for (let i = 0; i < n; i++) {
    const b = head[i];
    if (b < 0x09 || (b > 0x0d && b < 0x20 && b !== 0x1b)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// File I/O helpers

async function readFully(file: Deno.FsFile, pos: number, buf: Uint8Array): Promise<number> {
  await file.seek(pos, Deno.SeekMode.Start);
  let done = 0;
  while (done < buf.length) {
    const n = await file.read(buf.subarray(done));
    if (n === null || n === 0) break;
    done += n;
  }
  return done;
}

/** Positional read with synchronous ops: Deno's async file ops copy through a fresh buffer. */
function readAtSync(file: Deno.FsFile, pos: number, buf: Uint8Array): number {
  file.seekSync(pos, Deno.SeekMode.Start);
  let done = 0;
  while (done < buf.length) {
    const n = file.readSync(buf.subarray(done));
    if (n === null || n === 0) break;
    done += n;
  }
  return done;
}

// readAtSync and the next three functions are also part of the pool threads'
// source (see PoolSink): they must not refer to anything outside themselves.

/** True if u8[s, e) is all zeros; `w` is an Int32Array view of the same buffer. */
function isZero(u8: Uint8Array, w: Int32Array, s: number, e: number): boolean {
  let i = s;
  while (i < e && (i & 3) !== 0) if (u8[i++] !== 0) return false;
  let wi = i >> 2;
  const we = e >> 2;
  while (wi + 8 <= we) {
    if (
      (w[wi] | w[wi + 1] | w[wi + 2] | w[wi + 3] | w[wi + 4] | w[wi + 5] | w[wi + 6] |
        w[wi + 7]) !== 0
    ) return false;
    wi += 8;
  }
  while (wi < we) if (w[wi++] !== 0) return false;
  for (let k = Math.max(we << 2, i); k < e; k++) if (u8[k] !== 0) return false;
  return true;
}

function writeAtSync(file: Deno.FsFile, pos: number, buf: Uint8Array): void {
  file.seekSync(pos, Deno.SeekMode.Start);
  let done = 0;
  while (done < buf.length) done += file.writeSync(buf.subarray(done));
}

/**
 * Writes stage[0, fill) at guest offset gStart, skipping every 4 KiB output
 * block that is all zeros (it stays a hole). Returns the bytes written.
 */
function writeNonZero(
  file: Deno.FsFile,
  stage: Uint8Array,
  words: Int32Array,
  gStart: number,
  fill: number,
): number {
  const block = 4096;
  let written = 0;
  let p = 0;
  let runStart = -1;
  while (p < fill) {
    const blockEnd = Math.min(fill, p + (block - ((gStart + p) % block)));
    if (isZero(stage, words, p, blockEnd)) {
      if (runStart >= 0) {
        writeAtSync(file, gStart + runStart, stage.subarray(runStart, p));
        written += p - runStart;
        runStart = -1;
      }
    } else if (runStart < 0) {
      runStart = p;
    }
    p = blockEnd;
  }
  if (runStart >= 0) {
    writeAtSync(file, gStart + runStart, stage.subarray(runStart, fill));
    written += fill - runStart;
  }
  return written;
}

// ---------------------------------------------------------------------------
// zstd frame walking (node:zlib's one-shot decoder rejects trailing bytes,
// and a compressed cluster's last sector is shared with its neighbour).

/** Length of the zstd (or skippable) frame at `b[pos..]`, or -1 if it is malformed/truncated. */
function zstdFrameLength(b: Uint8Array, pos: number): { len: number; skippable: boolean } {
  const n = b.length;
  if (pos + 4 > n) return { len: -1, skippable: false };
  const magic = (b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16) | (b[pos + 3] << 24)) >>> 0;
  if ((magic & 0xfffffff0) === 0x184d2a50) {
    if (pos + 8 > n) return { len: -1, skippable: true };
    const size = (b[pos + 4] | (b[pos + 5] << 8) | (b[pos + 6] << 16) | (b[pos + 7] << 24)) >>> 0;
    const len = 8 + size;
    return { len: pos + len <= n ? len : -1, skippable: true };
  }
  if (magic !== 0xfd2fb528) return { len: -1, skippable: false };
  let p = pos + 4;
  if (p >= n) return { len: -1, skippable: false };
  const fhd = b[p++];
  const fcsFlag = fhd >> 6;
  const single = (fhd & 0x20) !== 0;
  if (fhd & 0x08) return { len: -1, skippable: false }; // reserved bit
  const checksum = (fhd & 0x04) !== 0;
  const dictFlag = fhd & 3;
  if (!single) p += 1; // window descriptor
  p += [0, 1, 2, 4][dictFlag];
  p += fcsFlag === 0 ? (single ? 1 : 0) : [0, 2, 4, 8][fcsFlag];
  for (;;) {
    if (p + 3 > n) return { len: -1, skippable: false };
    const bh = b[p] | (b[p + 1] << 8) | (b[p + 2] << 16);
    p += 3;
    const last = (bh & 1) !== 0;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) return { len: -1, skippable: false };
    p += type === 1 ? 1 : size;
    if (p > n) return { len: -1, skippable: false };
    if (last) break;
  }
  if (checksum) p += 4;
  if (p > n) return { len: -1, skippable: false };
  return { len: p - pos, skippable: false };
}

// ---------------------------------------------------------------------------
// Cluster decompression
//
// Everything from here to the sinks is also the source of the worker threads
// (see PoolSink): these functions and classes must refer to nothing outside
// themselves except each other and the node:zlib names imported above.

/** Decompresses one cluster into `out` at `off` (exactly one cluster of output). */
interface ClusterDecoder {
  /** True if a whole cluster came out, as qemu requires; false if the data is bad. */
  decode(input: Uint8Array, out: Uint8Array, off: number): boolean;
  dispose(): void;
}

/** Test hook: force the portable (allocating) decoders. @internal */
export const qcow2Internals = { portableDecoders: false };

/** The native zlib/zstd stream behind a node:zlib object, as Deno's node:zlib exposes it. */
interface NativeStream {
  writeSync(
    flush: number,
    input: Uint8Array,
    inOff: number,
    inLen: number,
    out: Uint8Array,
    outOff: number,
    outLen: number,
  ): void;
  reset(): void;
  close(): void;
  onerror: (message: string) => void;
}

/**
 * Prefers one reusable native stream per thread, driven through the handle
 * that node:zlib's own classes use: it writes straight into the staging
 * buffer, allocates nothing per cluster and avoids setting up a stream per
 * cluster (several times faster, and RSS stays low). That handle is not a
 * public API, so it is feature-checked and the public one-shot functions are
 * the fallback; both pass the same byte-for-byte tests.
 */
function newDecoder(kind: "zlib" | "zstd", cs: number, portable: boolean): ClusterDecoder {
  if (!portable) {
    try {
      const engine = kind === "zlib"
        ? createInflateRaw()
        : createZstdDecompress({ params: { [zc.ZSTD_d_windowLogMax]: 23 } });
      const inner = engine as unknown as { _handle?: NativeStream; _writeState?: Uint32Array };
      const handle = inner._handle;
      const state = inner._writeState;
      if (
        handle && typeof handle.writeSync === "function" && typeof handle.reset === "function" &&
        state instanceof Uint32Array && state.length >= 2
      ) {
        return new NativeDecoder(handle, state, kind === "zlib" ? zc.Z_FINISH : zc.ZSTD_e_end, cs);
      }
      engine.close();
    } catch {
      // fall through to the portable decoder
    }
  }
  return new PortableDecoder(kind, cs);
}

class NativeDecoder implements ClusterDecoder {
  private error: string | null = null;
  constructor(
    private readonly handle: NativeStream,
    private readonly state: Uint32Array,
    private readonly flush: number,
    private readonly cs: number,
  ) {
    handle.onerror = (message: string) => {
      this.error = message;
    };
  }
  decode(input: Uint8Array, out: Uint8Array, off: number): boolean {
    this.error = null;
    try {
      this.handle.reset();
      this.handle.writeSync(this.flush, input, 0, input.length, out, off, this.cs);
    } catch {
      return false;
    }
    // state[0] is the output space left: zero means a whole cluster came out.
    // Trailing input (the rest of a shared last sector) is fine, as in qemu.
    return this.error === null && this.state[0] === 0;
  }
  dispose(): void {
    try {
      this.handle.close();
    } catch { /* already closed */ }
  }
}

/** The public one-shot node:zlib functions: allocate per cluster, then copy. */
class PortableDecoder implements ClusterDecoder {
  constructor(private readonly kind: "zlib" | "zstd", private readonly cs: number) {}
  decode(input: Uint8Array, out: Uint8Array, off: number): boolean {
    const cs = this.cs;
    try {
      if (this.kind === "zlib") {
        // Z_SYNC_FLUSH: the stream may end without its final block when the
        // cluster's sectors were cut by the end of the file, as qemu allows.
        const got = inflateRawSync(input, {
          maxOutputLength: cs,
          chunkSize: cs,
          finishFlush: zc.Z_SYNC_FLUSH,
        });
        if (got.length !== cs) return false;
        out.set(got, off);
        return true;
      }
      // zstd: one or more frames until a whole cluster has come out; the
      // one-shot function rejects the trailing bytes, so frames are cut first.
      let produced = 0;
      let pos = 0;
      while (produced < cs) {
        const { len, skippable } = zstdFrameLength(input, pos);
        if (len < 0) return false;
        if (!skippable) {
          const got = zstdDecompressSync(input.subarray(pos, pos + len), {
            maxOutputLength: cs - produced,
            chunkSize: cs,
            params: { [zc.ZSTD_d_windowLogMax]: 23 },
          });
          out.set(got, off + produced);
          produced += got.length;
        }
        pos += len;
      }
      return true;
    } catch {
      return false;
    }
  }
  dispose(): void {}
}

// ---------------------------------------------------------------------------
// Stage plans
//
// The main thread walks the tables and writes a plan per staging buffer:
// records of [stage position, length, host offset, compressed size] (size 0
// for plain data), in guest order. A plan is carried out (reads, decompression,
// zero-filling of small holes, writes) by runPlan, on the main thread for
// small images or by a pool of threads for big ones.

/** Numbers per plan record. */
const REC = 4;

/** What runPlan needs besides the plan: open files, a decoder and scratch space. */
interface PlanEnv {
  src: Deno.FsFile;
  dst: Deno.FsFile;
  decoder: ClusterDecoder;
  cs: number;
  compression: string;
  /** Read buffer for runs of compressed clusters (compSpan bytes). */
  comp: Uint8Array;
  compSpan: number;
  compGap: number;
  /** One cluster, for a last cluster that is cut short by the end of the disk. */
  scratch: Uint8Array;
  /** A shared lock word, when several threads write the same file. */
  writeLock?: Int32Array;
}

/** A failure that means the image is bad (the message says what); not an I/O error. */
function badImage(what: string): Error {
  const e = new Error(what);
  e.name = "QcowCorrupt";
  return e;
}

/**
 * Fills stage[0, fill) as the plan says, then writes it at guest offset
 * gStart, leaving all-zero blocks as holes. Returns the bytes written.
 */
function runPlan(
  env: PlanEnv,
  stage: Uint8Array,
  words: Int32Array,
  plan: Float64Array,
  n: number,
  gStart: number,
  fill: number,
): number {
  let covered = 0; // stage[0, covered) is filled
  let i = 0;
  while (i < n) {
    const pos = plan[i * REC];
    const len = plan[i * REC + 1];
    const host = plan[i * REC + 2];
    const csize = plan[i * REC + 3];
    if (pos > covered) stage.fill(0, covered, pos); // a small hole between two pieces
    if (csize === 0) {
      if (readAtSync(env.src, host, stage.subarray(pos, pos + len)) !== len) {
        throw badImage("a data cluster is truncated");
      }
      covered = pos + len;
      i++;
      continue;
    }
    // A run of compressed clusters close together in the file: one read.
    let j = i;
    let end = host + csize;
    while (j + 1 < n) {
      const h2 = plan[(j + 1) * REC + 2];
      const c2 = plan[(j + 1) * REC + 3];
      const e2 = Math.max(end, h2 + c2);
      if (c2 === 0 || h2 < host || h2 > end + env.compGap || e2 - host > env.compSpan) break;
      end = e2;
      j++;
    }
    const got = readAtSync(env.src, host, env.comp.subarray(0, end - host));
    for (let k = i; k <= j; k++) {
      const kpos = plan[k * REC];
      const glen = plan[k * REC + 1];
      const from = plan[k * REC + 2] - host;
      const input = env.comp.subarray(from, Math.min(from + plan[k * REC + 3], got));
      if (kpos > covered) stage.fill(0, covered, kpos);
      // A whole cluster always comes out; the disk's last cluster may be cut short.
      const direct = glen === env.cs && kpos + env.cs <= stage.length;
      const out = direct ? stage : env.scratch;
      if (!env.decoder.decode(input, out, direct ? kpos : 0)) {
        throw badImage(`a ${env.compression}-compressed cluster does not decompress`);
      }
      if (!direct) stage.set(out.subarray(0, glen), kpos);
      covered = kpos + glen;
    }
    i = j + 1;
  }
  if (fill > covered) stage.fill(0, covered, fill);
  const lock = env.writeLock;
  if (!lock) return writeNonZero(env.dst, stage, words, gStart, fill);
  // Pool threads write one at a time: the kernel serialises writes to one
  // file anyway, and waiting here sleeps instead of spinning on its lock.
  while (Atomics.compareExchange(lock, 0, 0, 1) !== 0) Atomics.wait(lock, 0, 1, 100);
  try {
    return writeNonZero(env.dst, stage, words, gStart, fill);
  } finally {
    Atomics.store(lock, 0, 0);
    Atomics.notify(lock, 0, 1);
  }
}

// ---------------------------------------------------------------------------
// Sinks: where finished plans are carried out.

/** Where plans go. */
interface Sink {
  /** Resolves once the sink can take plans. */
  readonly ready: Promise<void>;
  /** An empty plan buffer for the next stage (may block until a thread frees one). */
  acquire(): Float64Array;
  /** Hands over the plan last acquired: `n` records for guest bytes [gStart, gStart+fill). */
  submit(gStart: number, fill: number, n: number): void;
  /** Waits until everything is written (and synced if asked); returns the bytes written. */
  finish(): Promise<number>;
  /** Stops and releases everything; safe to call at any time, more than once. */
  dispose(): void;
}

/** What a sink is opened with. */
interface SinkOptions {
  src: string;
  dst: string;
  cs: number;
  compression: "zlib" | "zstd";
  sync: boolean;
  portable: boolean;
}

/** Records per plan: every record but the disk's last covers at least 512 bytes. */
const MAX_RECORDS = STAGE_SIZE / 512 + 2;

/** Carries out plans on the calling thread: for small images, where threads cost more than they save. */
class InlineSink implements Sink {
  readonly ready = Promise.resolve();
  private readonly stage = new Uint8Array(STAGE_SIZE);
  private readonly words = new Int32Array(this.stage.buffer);
  private readonly plan = new Float64Array(MAX_RECORDS * REC);
  private readonly env: PlanEnv;
  private written = 0;
  private open = true;

  constructor(private readonly o: SinkOptions) {
    const src = Deno.openSync(o.src, { read: true });
    let dst: Deno.FsFile;
    try {
      dst = Deno.openSync(o.dst, { write: true });
    } catch (e) {
      src.close();
      throw e;
    }
    this.env = {
      src,
      dst,
      decoder: newDecoder(o.compression, o.cs, o.portable),
      cs: o.cs,
      compression: o.compression,
      comp: new Uint8Array(COMP_SPAN),
      compSpan: COMP_SPAN,
      compGap: COMP_GAP,
      scratch: new Uint8Array(o.cs),
    };
  }
  acquire(): Float64Array {
    return this.plan;
  }
  submit(gStart: number, fill: number, n: number): void {
    this.written += runPlan(this.env, this.stage, this.words, this.plan, n, gStart, fill);
  }
  finish(): Promise<number> {
    if (this.o.sync) this.env.dst.syncSync();
    this.dispose();
    return Promise.resolve(this.written);
  }
  dispose(): void {
    if (!this.open) return;
    this.open = false;
    this.env.src.close();
    this.env.dst.close();
    this.env.decoder.dispose();
  }
}

/** What a pool thread is started with. */
interface PoolInit extends SinkOptions {
  index: number;
  data: SharedArrayBuffer;
  plans: SharedArrayBuffer;
  ctrl: SharedArrayBuffer;
  meta: SharedArrayBuffer;
  err: SharedArrayBuffer;
  lock: SharedArrayBuffer;
  slots: number;
  slotSize: number;
  maxRecords: number;
  compSpan: number;
  compGap: number;
}

// Shared control words (Int32; poolThread spells the same indices as literals).
const C_HEAD = 0; // plans submitted
// 1: plans claimed by a thread
const C_STATE = 2; // 0 running, 1 no more plans, 2 abort
const C_FAIL = 3; // 1 once a thread failed (message in `err`)
const C_SLOT = 4; // C_SLOT + i: 1 while slot i holds a plan not yet carried out
// Shared meta (Float64): per slot [gStart, fill, n], then bytes written per thread.
const M_SLOT = 3;

/**
 * A pool thread's body. Stringified, with the plan and decoder code above,
 * into a blob worker, so the module needs no separate worker file and works
 * the same under `deno compile`. Each thread claims the next submitted plan,
 * reads, decompresses and writes it with its own file handles; the ring of
 * staging buffers lives in shared memory, so nothing is copied between threads.
 */
function poolThread(): void {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<PoolInit>) => void) | null;
    postMessage(m: unknown): void;
  };
  scope.onmessage = (ev: MessageEvent<PoolInit>) => {
    const m = ev.data;
    const ctrl = new Int32Array(m.ctrl);
    const meta = new Float64Array(m.meta);
    let env: PlanEnv | undefined;
    try {
      const src = Deno.openSync(m.src, { read: true });
      env = {
        src,
        dst: Deno.openSync(m.dst, { write: true }),
        decoder: newDecoder(m.compression, m.cs, m.portable),
        cs: m.cs,
        compression: m.compression,
        comp: new Uint8Array(m.compSpan),
        compSpan: m.compSpan,
        compGap: m.compGap,
        scratch: new Uint8Array(m.cs),
        writeLock: new Int32Array(m.lock),
      };
      scope.postMessage({ ready: true });
      let written = 0;
      for (;;) {
        // State first: it is set after the last submit, so a head read after "done" is final.
        const state = Atomics.load(ctrl, 2);
        if (state === 2 || Atomics.load(ctrl, 3) !== 0) break;
        const head = Atomics.load(ctrl, 0);
        const claim = Atomics.load(ctrl, 1);
        if (claim < head) {
          if (Atomics.compareExchange(ctrl, 1, claim, claim + 1) !== claim) continue;
          const slot = claim % m.slots;
          const off = slot * m.slotSize;
          written += runPlan(
            env,
            new Uint8Array(m.data, off, m.slotSize),
            new Int32Array(m.data, off, m.slotSize / 4),
            new Float64Array(m.plans, slot * m.maxRecords * 4 * 8, m.maxRecords * 4),
            meta[slot * 3 + 2],
            meta[slot * 3],
            meta[slot * 3 + 1],
          );
          meta[m.slots * 3 + m.index] = written;
          Atomics.store(ctrl, 4 + slot, 0);
          Atomics.notify(ctrl, 4 + slot);
          continue;
        }
        if (state === 1) break;
        Atomics.wait(ctrl, 0, head, 1000);
      }
      if (m.sync && Atomics.load(ctrl, 2) === 1 && Atomics.load(ctrl, 3) === 0) {
        env.dst.syncSync();
      }
      scope.postMessage({ done: true });
    } catch (e) {
      const text = e instanceof Error ? `${e.name}\n${e.message}` : `Error\n${String(e)}`;
      const bytes = new TextEncoder().encode(text.slice(0, 1000));
      const err = new Uint8Array(m.err);
      // First failure wins.
      if (Atomics.compareExchange(ctrl, 3, 0, 1) === 0) {
        err.set(bytes.subarray(0, err.length - 4), 4);
        new DataView(m.err).setUint32(0, Math.min(bytes.length, err.length - 4));
      }
      for (let i = 0; i < m.slots; i++) Atomics.notify(ctrl, 4 + i);
      Atomics.notify(ctrl, 0);
      scope.postMessage({ done: true });
    } finally {
      try {
        env?.src.close();
        env?.dst.close();
        env?.decoder.dispose();
      } catch { /* closing is best effort */ }
    }
  };
}

/** The pool thread's source: the code above, self-contained. */
function poolSource(): string {
  const parts = [
    readAtSync,
    isZero,
    writeAtSync,
    writeNonZero,
    zstdFrameLength,
    newDecoder,
    NativeDecoder,
    PortableDecoder,
    badImage,
    runPlan,
  ].map((f) => f.toString());
  return [
    `import { constants as zc, createInflateRaw, createZstdDecompress, inflateRawSync, ` +
    `zstdDecompressSync } from "node:zlib";`,
    `const REC = ${REC};`,
    ...parts,
    `(${poolThread.toString()})();`,
  ].join("\n");
}

const SLOTS = 4;

/**
 * Carries out plans on a pool of threads (as many as there are CPUs, 2..4),
 * so reading, decompressing and writing overlap with each other and with the
 * table walk on the main thread.
 */
class PoolSink implements Sink {
  readonly ready: Promise<void>;
  private readonly data = new SharedArrayBuffer(SLOTS * STAGE_SIZE);
  private readonly plansBuf = new SharedArrayBuffer(SLOTS * MAX_RECORDS * REC * 8);
  private readonly ctrl = new Int32Array(new SharedArrayBuffer(4 * (C_SLOT + SLOTS)));
  private readonly meta: Float64Array;
  private readonly err = new SharedArrayBuffer(1024);
  private readonly lock = new SharedArrayBuffer(4);
  private readonly plans: Float64Array[] = [];
  private readonly workers: Worker[] = [];
  private readonly url: string;
  private readonly exited: Promise<void>[] = [];
  private readonly threads: number;
  private head = 0;
  private disposed = false;

  constructor(o: SinkOptions) {
    this.threads = Math.max(2, Math.min(4, navigator.hardwareConcurrency || 2));
    this.meta = new Float64Array(new SharedArrayBuffer(8 * (SLOTS * M_SLOT + this.threads)));
    for (let i = 0; i < SLOTS; i++) {
      this.plans.push(
        new Float64Array(this.plansBuf, i * MAX_RECORDS * REC * 8, MAX_RECORDS * REC),
      );
    }
    this.url = URL.createObjectURL(new Blob([poolSource()], { type: "text/javascript" }));
    const ready: Promise<void>[] = [];
    for (let index = 0; index < this.threads; index++) {
      const w = new Worker(this.url, { type: "module" });
      this.workers.push(w);
      let onReady!: () => void;
      let onFail!: (e: Error) => void;
      ready.push(
        new Promise<void>((res, rej) => {
          onReady = res;
          onFail = rej;
        }),
      );
      this.exited.push(
        new Promise<void>((resolve) => {
          w.onmessage = (e: MessageEvent<{ ready?: boolean; done?: boolean }>) => {
            if (e.data.ready) onReady();
            if (e.data.done) {
              onFail(this.failure());
              resolve();
            }
          };
          w.onerror = (e: ErrorEvent) => {
            e.preventDefault();
            Atomics.store(this.ctrl, C_FAIL, 1);
            onFail(new Error(e.message));
            resolve();
          };
        }),
      );
      const init: PoolInit = {
        ...o,
        index,
        data: this.data,
        plans: this.plansBuf,
        ctrl: this.ctrl.buffer as SharedArrayBuffer,
        meta: this.meta.buffer as SharedArrayBuffer,
        err: this.err,
        lock: this.lock,
        slots: SLOTS,
        slotSize: STAGE_SIZE,
        maxRecords: MAX_RECORDS,
        compSpan: COMP_SPAN,
        compGap: COMP_GAP,
      };
      w.postMessage(init);
    }
    this.ready = Promise.all(ready).then(() => {});
    this.ready.catch(() => {});
  }

  /** The first thread failure, as an Error with the thread's error name. */
  private failure(): Error {
    const len = new DataView(this.err).getUint32(0);
    if (!len) return new Error("a conversion thread stopped unexpectedly");
    const text = new TextDecoder().decode(new Uint8Array(this.err, 4, len).slice());
    const nl = text.indexOf("\n");
    const e = new Error(text.slice(nl + 1));
    e.name = text.slice(0, nl);
    return e;
  }

  acquire(): Float64Array {
    const slot = this.head % SLOTS;
    for (;;) {
      if (Atomics.load(this.ctrl, C_FAIL) !== 0) throw this.failure();
      if (Atomics.load(this.ctrl, C_SLOT + slot) === 0) return this.plans[slot];
      Atomics.wait(this.ctrl, C_SLOT + slot, 1, 100);
    }
  }

  submit(gStart: number, fill: number, n: number): void {
    const slot = this.head % SLOTS;
    this.meta[slot * M_SLOT] = gStart;
    this.meta[slot * M_SLOT + 1] = fill;
    this.meta[slot * M_SLOT + 2] = n;
    Atomics.store(this.ctrl, C_SLOT + slot, 1);
    this.head++;
    Atomics.store(this.ctrl, C_HEAD, this.head);
    Atomics.notify(this.ctrl, C_HEAD);
  }

  async finish(): Promise<number> {
    Atomics.store(this.ctrl, C_STATE, 1);
    Atomics.notify(this.ctrl, C_HEAD);
    await Promise.all(this.exited);
    try {
      if (Atomics.load(this.ctrl, C_FAIL) !== 0) throw this.failure();
      let written = 0;
      for (let i = 0; i < this.threads; i++) written += this.meta[SLOTS * M_SLOT + i];
      return written;
    } finally {
      this.dispose();
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    Atomics.store(this.ctrl, C_STATE, 2);
    Atomics.notify(this.ctrl, C_HEAD);
    for (const w of this.workers) w.terminate();
    URL.revokeObjectURL(this.url);
  }
}

// ---------------------------------------------------------------------------
// Conversion

/**
 * Converts a qcow2 image to a sparse raw image at `dstPath`, without
 * qemu-img. The output appears atomically (temporary file next to `dstPath`,
 * renamed on success); on any error nothing is left behind and a
 * {@link CoveError} with a one-line message is thrown.
 *
 * @example
 * ```ts
 * const { size, dataBytes } = await convertQcow2ToRaw("in.qcow2", "out.img");
 * ```
 */
export async function convertQcow2ToRaw(
  srcPath: string,
  dstPath: string,
  opts: ConvertOptions = {},
): Promise<ConvertResult> {
  let src: Deno.FsFile;
  try {
    src = await Deno.open(srcPath, { read: true });
  } catch (e) {
    throw toCoveError(e, srcPath);
  }
  const tmpPath = join(dirname(dstPath), `.${basename(dstPath)}.${crypto.randomUUID()}.partial`);
  let sink: Sink | undefined;
  let created = false;
  try {
    const st = await src.stat();
    if (!st.isFile) {
      throw new CoveError("image.not_file", `${srcPath} is not a regular file`, {
        exit: ExitCode.Usage,
      });
    }
    const fileSize = st.size;
    const head = new Uint8Array(Math.min(fileSize, 4096));
    await readFully(src, 0, head);
    if (!bytesAt(head, 0, QCOW_SIGNATURE)) {
      throw new CoveError("image.not_qcow2", `${basename(srcPath)} is not a qcow2 image`, {
        exit: ExitCode.Usage,
      });
    }
    const h = parseHeader(head, srcPath);
    checkConvertible(h, fileSize, srcPath);

    // QEMU's block layer sees whole 512-byte sectors, rounded down (total_sectors =
    // size / 512), and so does qemu-img convert: the raw disk is that long. The last
    // partial sector is written below (the planner works in clusters), then cut off.
    const outSize = Math.floor(h.virtualSize / 512) * 512;
    const workSize = Math.ceil(h.virtualSize / 512) * 512;
    try {
      const f = await Deno.open(tmpPath, {
        write: true,
        createNew: true,
        mode: opts.mode ?? 0o600,
      });
      created = true;
      try {
        await f.truncate(workSize); // sparse: only data is written below
      } finally {
        f.close();
      }
    } catch (e) {
      const ce = toCoveError(e, dstPath);
      if (ce.code !== "internal") throw ce;
      // EFBIG and friends: a (possibly bogus) virtual size the file system cannot hold.
      throw new CoveError(
        "image.create",
        `cannot create a ${formatSize(outSize)} raw disk at ${dstPath}: ${ce.message}`,
        { hint: "check the image's virtual size and the destination file system", cause: e },
      );
    }
    const so: SinkOptions = {
      src: srcPath,
      dst: tmpPath,
      cs: h.clusterSize,
      compression: h.compression,
      sync: opts.sync ?? false,
      portable: qcow2Internals.portableDecoders,
    };
    sink = (opts.threaded ?? h.virtualSize >= THREADED_MIN) ? new PoolSink(so) : new InlineSink(so);
    await sink.ready;
    await new Planner(src, sink, h, fileSize, srcPath, opts).run();
    const dataBytes = await sink.finish();
    if (workSize !== outSize) await Deno.truncate(tmpPath, outSize);
    await Deno.rename(tmpPath, dstPath);
    return { size: outSize, dataBytes };
  } catch (e) {
    sink?.dispose();
    if (created) await Deno.remove(tmpPath).catch(() => {});
    if (e instanceof CoveError) throw e;
    if (e instanceof Error && e.name === "QcowCorrupt") throw corrupt(srcPath, e.message);
    if (opts.signal?.aborted) throw interrupted(e);
    throw toCoveError(e, `converting ${basename(srcPath)}`);
  } finally {
    src.close();
  }
}

/** Walks the L1/L2 tables and turns them into stage plans for the sink. */
class Planner {
  private readonly cs: number;
  private plan: Float64Array;
  /** Records in the plan. */
  private n = 0;
  /** Guest offset of the stage's first byte. */
  private gStart = 0;
  /** Bytes of the stage in use. */
  private fill = 0;
  private lastYield = performance.now();

  constructor(
    private readonly src: Deno.FsFile,
    private readonly sink: Sink,
    private readonly h: Header,
    private readonly fileSize: number,
    private readonly path: string,
    private readonly opts: ConvertOptions,
  ) {
    this.cs = h.clusterSize;
    this.plan = sink.acquire();
  }

  async run(): Promise<void> {
    const { h, cs } = this;
    const vsize = h.virtualSize;
    const l2n = l2EntriesPerTable(h);
    const l1Needed = l1EntriesNeeded(h);
    const totalClusters = Math.ceil(vsize / cs);
    const esz = h.extendedL2 ? 16 : 8;
    const l1buf = new Uint8Array(Math.min(l1Needed, L1_CHUNK) * 8);
    const l1dv = new DataView(l1buf.buffer);
    const l2buf = new Uint8Array(cs);
    const l2dv = new DataView(l2buf.buffer);
    const cb = h.clusterBits;
    const offHiBits = 62 - (cb - 8) - 32; // compressed offset bits held in the high word
    const offHiMask = (1 << offHiBits) - 1;
    const csizeMask = (1 << (cb - 8)) - 1;
    const sc = cs / 32; // subcluster size (extended L2)

    for (let l1i0 = 0; l1i0 < l1Needed; l1i0 += L1_CHUNK) {
      const cnt = Math.min(L1_CHUNK, l1Needed - l1i0);
      const chunk = l1buf.subarray(0, cnt * 8);
      if (readAtSync(this.src, h.l1TableOffset + l1i0 * 8, chunk) !== chunk.length) {
        throw corrupt(this.path, "the L1 table is truncated");
      }
      for (let k = 0; k < cnt; k++) {
        await this.maybeYield();
        const l1i = l1i0 + k;
        const hi = l1dv.getUint32(k * 8);
        const lo = l1dv.getUint32(k * 8 + 4);
        const l2off = (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
        if (l2off === 0) continue; // the whole range is unallocated
        if (l2off % cs !== 0) {
          throw corrupt(this.path, `L2 table offset ${hex(l2off)} is not cluster aligned`);
        }
        if (l2off + cs > this.fileSize) {
          throw corrupt(
            this.path,
            `an L2 table at ${hex(l2off)} lies outside the file (${formatSize(this.fileSize)})`,
          );
        }
        if (readAtSync(this.src, l2off, l2buf) !== cs) {
          throw corrupt(this.path, "an L2 table is truncated");
        }
        const base = l1i * l2n;
        const n = Math.min(l2n, totalClusters - base);
        for (let j = 0; j < n; j++) {
          if ((j & 1023) === 1023) await this.maybeYield();
          const guest = (base + j) * cs;
          const glen = Math.min(cs, vsize - guest);
          const e = j * esz;
          const ehi = l2dv.getUint32(e);
          const elo = l2dv.getUint32(e + 4);
          if (ehi & 0x40000000) {
            // Compressed: host offset in bits 0..x-1, extra 512-byte sectors in bits x..61.
            const coff = (ehi & offHiMask) * TWO32 + elo;
            const sectors = ((ehi >>> offHiBits) & csizeMask) + 1;
            const csize = sectors * 512 - (coff % 512);
            if (coff >= this.fileSize) {
              throw corrupt(
                this.path,
                `a compressed cluster at ${hex(coff)} lies outside the file (${
                  formatSize(this.fileSize)
                })`,
              );
            }
            // The last sector may be cut short by the end of the file.
            this.addCompressed(guest, glen, coff, Math.min(csize, this.fileSize - coff));
            continue;
          }
          const host = (ehi & 0x00ffffff) * TWO32 + ((elo & 0xfffffe00) >>> 0);
          // Any host offset must be cluster aligned, also on zero and unallocated entries
          // (QEMU refuses such an image as corrupt when it reads the cluster).
          if (host % cs !== 0) {
            throw corrupt(this.path, `data cluster offset ${hex(host)} is not cluster aligned`);
          }
          if (!h.extendedL2) {
            if (elo & 1) {
              if (h.version === 2) throw corrupt(this.path, "a zero cluster in a version 2 image");
              continue; // reads as zeros: a hole
            }
            if (host === 0) continue; // unallocated: a hole
            this.checkData(host, 0, glen);
            this.addData(guest, host, glen);
            continue;
          }
          // Extended L2: bitmap word 1 = "reads as zero" bits, word 2 = "allocated" bits.
          const zero = l2dv.getUint32(e + 8);
          const alloc = l2dv.getUint32(e + 12);
          if ((zero & alloc) !== 0) {
            throw corrupt(this.path, "a subcluster is marked both allocated and zero");
          }
          if (host === 0) {
            if (alloc !== 0) {
              throw corrupt(this.path, "allocated subclusters without a host cluster");
            }
            continue;
          }
          if (alloc === 0) continue;
          if (alloc === 0xffffffff) {
            this.checkData(host, 0, glen);
            this.addData(guest, host, glen);
            continue;
          }
          let a = 0;
          while (a < 32) {
            if (((alloc >>> a) & 1) === 0) {
              a++;
              continue;
            }
            let b = a + 1;
            while (b < 32 && ((alloc >>> b) & 1) !== 0) b++;
            const g = guest + a * sc;
            const len = Math.min((b - a) * sc, vsize - g);
            if (len > 0) {
              this.checkData(host, a * sc, len);
              this.addData(g, host + a * sc, len);
            }
            a = b;
          }
        }
      }
    }
    this.flush();
    this.opts.onProgress?.(vsize, vsize);
  }

  /** Lets timers, signals and abort handlers run about every 50 ms. */
  private async maybeYield(): Promise<void> {
    const now = performance.now();
    if (now - this.lastYield < 50) return;
    await new Promise((r) => setTimeout(r, 0));
    this.lastYield = performance.now();
    if (this.opts.signal?.aborted) throw interrupted();
  }

  /** `cluster` must be cluster aligned and [cluster+from, +len) inside the file. */
  private checkData(cluster: number, from: number, len: number): void {
    if (cluster % this.cs !== 0) {
      throw corrupt(this.path, `data cluster offset ${hex(cluster)} is not cluster aligned`);
    }
    if (cluster + from + len > this.fileSize) {
      throw corrupt(
        this.path,
        `a data cluster at ${hex(cluster)} lies outside the file (${formatSize(this.fileSize)})`,
      );
    }
  }

  /**
   * Makes room for `len` guest bytes at guest offset `g` at the end of the
   * stage. A small hole before them stays in the stage (zero-filled when the
   * plan is carried out) rather than cutting the stage short.
   */
  private place(g: number, len: number): void {
    if (this.fill > 0) {
      const gap = g - (this.gStart + this.fill);
      if (
        gap < 0 || gap > GAP_FILL || this.fill + gap + len > STAGE_SIZE || this.n >= MAX_RECORDS
      ) {
        this.flush();
      } else {
        this.fill += gap;
      }
    }
    if (this.fill === 0) this.gStart = g;
  }

  private addData(g: number, host: number, len: number): void {
    while (len > 0) {
      const n = Math.min(len, STAGE_SIZE);
      this.place(g, n);
      const p = this.plan;
      const last = (this.n - 1) * REC;
      if (
        this.n > 0 && p[last + 3] === 0 && p[last] + p[last + 1] === this.fill &&
        p[last + 2] + p[last + 1] === host
      ) {
        p[last + 1] += n; // contiguous in the guest and in the file: one read
      } else {
        this.push(this.fill, n, host, 0);
      }
      this.fill += n;
      g += n;
      host += n;
      len -= n;
    }
  }

  private addCompressed(g: number, glen: number, coff: number, csize: number): void {
    this.place(g, glen);
    this.push(this.fill, glen, coff, csize);
    this.fill += glen;
  }

  private push(pos: number, len: number, host: number, csize: number): void {
    const r = this.n++ * REC;
    this.plan[r] = pos;
    this.plan[r + 1] = len;
    this.plan[r + 2] = host;
    this.plan[r + 3] = csize;
  }

  /** Hands the stage's plan to the sink and starts the next one. */
  private flush(): void {
    if (this.opts.signal?.aborted) throw interrupted();
    if (this.fill === 0) return;
    this.sink.submit(this.gStart, this.fill, this.n);
    const done = Math.min(this.gStart + this.fill, this.h.virtualSize);
    this.n = 0;
    this.fill = 0;
    this.plan = this.sink.acquire();
    this.opts.onProgress?.(done, this.h.virtualSize);
  }
}
