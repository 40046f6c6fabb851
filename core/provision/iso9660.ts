/**
 * A minimal ISO 9660 image writer for small, flat images: the cloud-init
 * NoCloud seed (`user-data`, `meta-data`, `network-config`, label `cidata`).
 *
 * Written by hand because no maintained npm package writes ISO 9660 (the
 * candidates are read-only, abandoned, or an experimental WebAssembly port)
 * and cove must not depend on genisoimage/xorriso/hdiutil being installed.
 * A seed needs only a root directory of a few small files, which keeps this
 * to one page of ECMA-119.
 *
 * The image carries three views of the same files, so every reader finds
 * the lower-case names cloud-init looks for:
 * - the primary volume (ECMA-119 level 1 names such as `USER_DAT.;1`),
 * - Rock Ridge (RRIP 1.10: SP/CE/ER in the root, PX and NM per file),
 *   preferred by Linux,
 * - a Joliet supplementary volume (UCS-2 names, level 3), used by Windows,
 *   macOS and `isoinfo -J`.
 *
 * Layout, in 2048-byte sectors: 16 system-area sectors, the primary and
 * Joliet descriptors and the terminator, four path tables, the Rock Ridge
 * continuation area, the two root directories, then the file data.
 * Output is deterministic for the same files and date.
 *
 * @example
 * ```ts
 * const iso = buildIso9660({ volumeId: "cidata", files: [
 *   { name: "meta-data", data: new TextEncoder().encode("instance-id: x\n") },
 * ]});
 * ```
 * @module
 */
import { concatBytes } from "../bytes.ts";

/** A file in the image's root directory. */
export interface IsoFile {
  /** Its name, as Rock Ridge and Joliet show it (at most 64 characters, no '/'). */
  name: string;
  data: Uint8Array;
}

/** Options of {@link buildIso9660}. */
export interface IsoOptions {
  /** Volume label (at most 16 characters: it is also the Joliet label). */
  volumeId: string;
  files: IsoFile[];
  /** Recorded as creation and modification time; default now. */
  date?: Date;
}

const SECTOR = 2048;
const RRIP_ID = "RRIP_1991A";
const RRIP_DES =
  "THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SRC =
  "PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

/** Builds the whole image in memory (seeds are a few KiB). */
export function buildIso9660(opts: IsoOptions): Uint8Array {
  const { volumeId, files } = opts;
  const date = opts.date ?? new Date();
  if (volumeId.length < 1 || volumeId.length > 16 || !/^[\x20-\x7e]+$/.test(volumeId)) {
    throw new RangeError(`volume id '${volumeId}' must be 1 to 16 printable ASCII characters`);
  }
  const seen = new Set<string>();
  for (const f of files) {
    if (
      !f.name || f.name.length > 64 || f.name.includes("/") || f.name === "." || f.name === ".."
    ) {
      throw new RangeError(`bad file name '${f.name}'`);
    }
    if (seen.has(f.name)) throw new RangeError(`duplicate file name '${f.name}'`);
    seen.add(f.name);
  }
  const sorted = [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const isoNames = levelOneNames(sorted.map((f) => f.name));

  // Sector allocation. Directory sizes depend only on names, so compute them first.
  const PVD = 16, SVD = 17, TERM = 18;
  const L1 = 19, M1 = 20, L2 = 21, M2 = 22;
  const ceLba = 23;
  const primaryRecords = (extents: number[], rootLba: number, rootSize: number) => [
    dirRecord({
      id: new Uint8Array([0]),
      lba: rootLba,
      size: rootSize,
      dir: true,
      date,
      su: rootSystemUse(ceLba),
    }),
    dirRecord({
      id: new Uint8Array([1]),
      lba: rootLba,
      size: rootSize,
      dir: true,
      date,
      su: px(0o40555, 2),
    }),
    ...sorted.map((f, i) =>
      dirRecord({
        id: ascii(isoNames[i]),
        lba: extents[i],
        size: f.data.length,
        dir: false,
        date,
        su: concat(rrFlags(), px(0o100444, 1), nm(f.name)),
      })
    ),
  ];
  const jolietRecords = (extents: number[], rootLba: number, rootSize: number) => [
    dirRecord({ id: new Uint8Array([0]), lba: rootLba, size: rootSize, dir: true, date }),
    dirRecord({ id: new Uint8Array([1]), lba: rootLba, size: rootSize, dir: true, date }),
    ...sorted.map((f, i) =>
      dirRecord({ id: ucs2(f.name), lba: extents[i], size: f.data.length, dir: false, date })
    ),
  ];

  const dummy = sorted.map(() => 0);
  const primaryDirSectors = packDir(primaryRecords(dummy, 0, 0)).length / SECTOR;
  const jolietDirSectors = packDir(jolietRecords(dummy, 0, 0)).length / SECTOR;
  const primaryRoot = ceLba + 1;
  const jolietRoot = primaryRoot + primaryDirSectors;
  let next = jolietRoot + jolietDirSectors;
  const extents = sorted.map((f) => {
    if (f.data.length === 0) return 0;
    const lba = next;
    next += Math.ceil(f.data.length / SECTOR);
    return lba;
  });
  const totalSectors = next;

  const img = new Uint8Array(totalSectors * SECTOR);
  const primaryDir = packDir(primaryRecords(extents, primaryRoot, primaryDirSectors * SECTOR));
  const jolietDir = packDir(jolietRecords(extents, jolietRoot, jolietDirSectors * SECTOR));
  img.set(primaryDir, primaryRoot * SECTOR);
  img.set(jolietDir, jolietRoot * SECTOR);
  sorted.forEach((f, i) => {
    if (f.data.length) img.set(f.data, extents[i] * SECTOR);
  });

  img.set(continuationArea(), ceLba * SECTOR);
  img.set(pathTable(primaryRoot, "le"), L1 * SECTOR);
  img.set(pathTable(primaryRoot, "be"), M1 * SECTOR);
  img.set(pathTable(jolietRoot, "le"), L2 * SECTOR);
  img.set(pathTable(jolietRoot, "be"), M2 * SECTOR);

  const rootRec = (lba: number, size: number) =>
    dirRecord({ id: new Uint8Array([0]), lba, size, dir: true, date });
  img.set(
    volumeDescriptor({
      type: 1,
      volumeId,
      totalSectors,
      pathTables: [L1, M1],
      root: rootRec(primaryRoot, primaryDirSectors * SECTOR),
      date,
    }),
    PVD * SECTOR,
  );
  img.set(
    volumeDescriptor({
      type: 2,
      volumeId,
      totalSectors,
      pathTables: [L2, M2],
      root: rootRec(jolietRoot, jolietDirSectors * SECTOR),
      date,
    }),
    SVD * SECTOR,
  );
  const term = img.subarray(TERM * SECTOR, TERM * SECTOR + 7);
  term.set([255, ...ascii("CD001"), 1]);
  return img;
}

/** Unique ECMA-119 level 1 identifiers (8.3, upper case d-characters, `;1`). */
function levelOneNames(names: string[]): string[] {
  const used = new Set<string>();
  return names.map((n) => {
    const dot = n.lastIndexOf(".");
    const stem = clean(dot > 0 ? n.slice(0, dot) : n) || "_";
    const ext = clean(dot > 0 ? n.slice(dot + 1) : "").slice(0, 3);
    let base = stem.slice(0, 8);
    for (let k = 1; used.has(`${base}.${ext}`); k++) {
      const suffix = `~${k}`;
      base = stem.slice(0, 8 - suffix.length) + suffix;
    }
    used.add(`${base}.${ext}`);
    return `${base}.${ext};1`;
  });
}

function clean(s: string): string {
  return s.toUpperCase().replace(/[^A-Z0-9_]/g, "_");
}

function ascii(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0) & 0x7f);
}

function ucs2(s: string): Uint8Array {
  const out = new Uint8Array(s.length * 2);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out[2 * i] = c >> 8;
    out[2 * i + 1] = c & 0xff;
  }
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return concatBytes(parts);
}

function both32(v: number): Uint8Array {
  const b = new Uint8Array(8);
  const d = new DataView(b.buffer);
  d.setUint32(0, v, true);
  d.setUint32(4, v, false);
  return b;
}

function both16(v: number): Uint8Array {
  const b = new Uint8Array(4);
  const d = new DataView(b.buffer);
  d.setUint16(0, v, true);
  d.setUint16(2, v, false);
  return b;
}

/** The 7-byte recording date of a directory record (UTC). */
function recDate(d: Date): Uint8Array {
  return new Uint8Array([
    d.getUTCFullYear() - 1900,
    d.getUTCMonth() + 1,
    d.getUTCDate(),
    d.getUTCHours(),
    d.getUTCMinutes(),
    d.getUTCSeconds(),
    0,
  ]);
}

/** The 17-byte volume descriptor date (UTC). */
function vdDate(d: Date | undefined): Uint8Array {
  const out = new Uint8Array(17);
  const p = (n: number, w: number) => String(n).padStart(w, "0");
  const text = d
    ? `${p(d.getUTCFullYear(), 4)}${p(d.getUTCMonth() + 1, 2)}${p(d.getUTCDate(), 2)}${
      p(d.getUTCHours(), 2)
    }${p(d.getUTCMinutes(), 2)}${p(d.getUTCSeconds(), 2)}00`
    : "0000000000000000";
  out.set(ascii(text));
  out[16] = 0;
  return out;
}

interface RecordInput {
  id: Uint8Array;
  lba: number;
  size: number;
  dir: boolean;
  date: Date;
  /** System use area (Rock Ridge entries). */
  su?: Uint8Array;
}

function dirRecord(r: RecordInput): Uint8Array {
  const pad = r.id.length % 2 === 0 ? 1 : 0;
  const su = r.su ?? new Uint8Array();
  let len = 33 + r.id.length + pad + su.length;
  if (len % 2) len++;
  if (len > 255) throw new RangeError("directory record too long");
  const b = new Uint8Array(len);
  b[0] = len;
  b[1] = 0;
  b.set(both32(r.lba), 2);
  b.set(both32(r.size), 10);
  b.set(recDate(r.date), 18);
  b[25] = r.dir ? 2 : 0;
  b.set(both16(1), 28);
  b[32] = r.id.length;
  b.set(r.id, 33);
  b.set(su, 33 + r.id.length + pad);
  return b;
}

/** Packs records into whole sectors; a record never spans a sector boundary. */
function packDir(records: Uint8Array[]): Uint8Array {
  const sectors: Uint8Array[] = [];
  let cur = new Uint8Array(SECTOR);
  let used = 0;
  for (const r of records) {
    if (used + r.length > SECTOR) {
      sectors.push(cur);
      cur = new Uint8Array(SECTOR);
      used = 0;
    }
    cur.set(r, used);
    used += r.length;
  }
  sectors.push(cur);
  return concatBytes(sectors);
}

function pathTable(rootLba: number, endian: "le" | "be"): Uint8Array {
  // One record: the root directory (identifier 0x00, parent 1), padded to even length.
  const b = new Uint8Array(10);
  const d = new DataView(b.buffer);
  b[0] = 1;
  b[1] = 0;
  d.setUint32(2, rootLba, endian === "le");
  d.setUint16(6, 1, endian === "le");
  b[8] = 0;
  return b;
}

/** SUSP "SP" + "CE" (pointing at the ER entry) for the root's "." record. */
function rootSystemUse(ceLba: number): Uint8Array {
  const sp = new Uint8Array([0x53, 0x50, 7, 1, 0xbe, 0xef, 0]);
  const ce = new Uint8Array(28);
  ce.set([0x43, 0x45, 28, 1]);
  ce.set(both32(ceLba), 4);
  ce.set(both32(0), 12);
  ce.set(both32(erEntry().length), 20);
  return concat(sp, ce, px(0o40555, 2));
}

function erEntry(): Uint8Array {
  const id = ascii(RRIP_ID), des = ascii(RRIP_DES), src = ascii(RRIP_SRC);
  const len = 8 + id.length + des.length + src.length;
  return concat(
    new Uint8Array([0x45, 0x52, len, 1, id.length, des.length, src.length, 1]),
    id,
    des,
    src,
  );
}

function continuationArea(): Uint8Array {
  const out = new Uint8Array(SECTOR);
  out.set(erEntry());
  return out;
}

/** RRIP 1.09 "RR" flags entry: PX and NM present. */
function rrFlags(): Uint8Array {
  return new Uint8Array([0x52, 0x52, 5, 1, 0x01 | 0x08]);
}

/** RRIP "PX" (RRIP 1.10 form: mode, links, uid, gid). */
function px(mode: number, links: number): Uint8Array {
  return concat(
    new Uint8Array([0x50, 0x58, 36, 1]),
    both32(mode),
    both32(links),
    both32(0),
    both32(0),
  );
}

/** RRIP "NM": the POSIX name. */
function nm(name: string): Uint8Array {
  const n = new TextEncoder().encode(name);
  return concat(new Uint8Array([0x4e, 0x4d, 5 + n.length, 1, 0]), n);
}

interface VdInput {
  type: 1 | 2;
  volumeId: string;
  totalSectors: number;
  pathTables: [number, number];
  root: Uint8Array;
  date: Date;
}

function volumeDescriptor(v: VdInput): Uint8Array {
  const b = new Uint8Array(SECTOR);
  const joliet = v.type === 2;
  const text = (s: string, len: number) => {
    if (!joliet) return ascii(s.padEnd(len, " ").slice(0, len));
    const u = ucs2(s.padEnd(len / 2, " ").slice(0, len / 2));
    return u;
  };
  b[0] = v.type;
  b.set(ascii("CD001"), 1);
  b[6] = 1;
  b.set(text("", 32), 8); // system identifier
  b.set(text(v.volumeId, 32), 40);
  b.set(both32(v.totalSectors), 80);
  if (joliet) b.set(ascii("%/E"), 88); // UCS-2 level 3
  b.set(both16(1), 120);
  b.set(both16(1), 124);
  b.set(both16(SECTOR), 128);
  b.set(both32(10), 132); // path table size: one root record
  new DataView(b.buffer).setUint32(140, v.pathTables[0], true);
  new DataView(b.buffer).setUint32(148, v.pathTables[1], false);
  b.set(v.root, 156);
  b.set(text("", 128), 190); // volume set
  b.set(text("", 128), 318); // publisher
  b.set(text("", 128), 446); // data preparer
  b.set(text("COVE", 128), 574); // application
  b.set(text("", 36), 702);
  b.set(text("", 36), 739);
  b.set(text("", 36), 776);
  if (!joliet) {
    // 37-byte fields: the odd byte after the 36 written above.
    b[702 + 36] = 0x20;
    b[739 + 36] = 0x20;
    b[776 + 36] = 0x20;
  }
  b.set(vdDate(v.date), 813);
  b.set(vdDate(v.date), 830);
  b.set(vdDate(undefined), 847);
  b.set(vdDate(undefined), 864);
  b[881] = 1;
  return b;
}
