/**
 * Typed `Deno.dlopen` bindings for libcove_vz, the Swift shim over Apple's
 * Virtualization.framework (see `swift-shim/include/cove_vz.h`, the ABI's
 * single source of truth; `tests/unit/abi_drift_test.ts` checks
 * {@link symbols} against it).
 *
 * Nothing is loaded at import time: call {@link openCoveVz}. It finds the
 * library (COVE_VZ_LIBRARY, next to the executable, embedded by
 * `deno compile --include`, or the dev build in `swift-shim/.build/`),
 * refuses one with the wrong ABI version, and returns a {@link CoveVz} whose
 * methods parse the JSON envelopes: results come back typed, failures are
 * thrown as {@link VzError}. Every call that can block is made with
 * `nonblocking: true`, so the event loop keeps running while it waits.
 *
 * This module must not import core: it throws {@link FfiError}, which
 * engines/vz maps onto cove's errors.
 *
 * @example
 * ```ts
 * const vz = await openCoveVz();
 * const host = await vz.hostInfo();
 * const vm = await vz.create(config);
 * await vz.start(vm);
 * const { event } = await vz.nextEvent(vm, 500);
 * ```
 * @module
 */
import type {
  VzConfig,
  VzErrorJson,
  VzEvent,
  VzHostInfo,
  VzRestoreImage,
  VzStartOptions,
  VzStateInfo,
  VzWindowOptions,
} from "./cove_vz_json.ts";

export type * from "./cove_vz_json.ts";

/** The ABI version these bindings speak (COVE_VZ_ABI_VERSION in the header). */
export const COVE_VZ_ABI_VERSION = 2;

/** The symbol table: one entry per function of cove_vz.h, in header order. */
export const symbols = {
  cove_abi_version: { parameters: [], result: "u32" },
  cove_free: { parameters: ["pointer"], result: "void" },
  cove_vz_host_info: { parameters: [], result: "pointer", nonblocking: true },
  cove_vz_validate: { parameters: ["buffer"], result: "pointer", nonblocking: true },
  cove_vz_rosetta_install: { parameters: [], result: "pointer", nonblocking: true },
  cove_vz_machine_identifier_new: { parameters: ["buffer"], result: "pointer", nonblocking: true },
  cove_vz_mac_auxiliary_storage_create: {
    parameters: ["buffer", "buffer"],
    result: "pointer",
    nonblocking: true,
  },
  cove_vz_efi_variable_store_create: {
    parameters: ["buffer"],
    result: "pointer",
    nonblocking: true,
  },
  cove_vz_restore_image_load: { parameters: ["buffer"], result: "pointer", nonblocking: true },
  cove_vz_restore_image_fetch_latest: { parameters: [], result: "pointer", nonblocking: true },
  cove_vz_create: { parameters: ["buffer"], result: "pointer", nonblocking: true },
  cove_vz_release: { parameters: ["u64"], result: "pointer", nonblocking: true },
  cove_vz_state: { parameters: ["u64"], result: "pointer", nonblocking: true },
  cove_vz_start: { parameters: ["u64", "buffer"], result: "pointer", nonblocking: true },
  cove_vz_request_stop: { parameters: ["u64"], result: "pointer", nonblocking: true },
  cove_vz_stop: { parameters: ["u64"], result: "pointer", nonblocking: true },
  cove_vz_pause: { parameters: ["u64"], result: "pointer", nonblocking: true },
  cove_vz_resume: { parameters: ["u64"], result: "pointer", nonblocking: true },
  cove_vz_save: { parameters: ["u64", "buffer"], result: "pointer", nonblocking: true },
  cove_vz_restore: { parameters: ["u64", "buffer"], result: "pointer", nonblocking: true },
  cove_vz_set_balloon_target: { parameters: ["u64", "u64"], result: "pointer", nonblocking: true },
  cove_vz_vsock_connect: { parameters: ["u64", "u32"], result: "pointer", nonblocking: true },
  cove_vz_vsock_listen: { parameters: ["u64", "u32"], result: "pointer", nonblocking: true },
  cove_vz_vsock_unlisten: { parameters: ["u64", "u32"], result: "pointer", nonblocking: true },
  cove_vz_next_event: { parameters: ["u64", "i32"], result: "pointer", nonblocking: true },
  cove_vz_install_macos: { parameters: ["u64", "buffer"], result: "pointer", nonblocking: true },
  cove_vz_install_cancel: { parameters: ["u64"], result: "pointer", nonblocking: true },
  // GUI calls run on the main thread, where the JavaScript runs: synchronous.
  cove_vz_show_window: { parameters: ["u64", "buffer"], result: "pointer" },
  cove_vz_pump: { parameters: ["i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

export type CoveVzSymbols = typeof symbols;

/** Why the bindings could not be used. `kind` is stable; engines map it. */
export type FfiErrorKind =
  | "not_found"
  | "load_failed"
  | "abi_mismatch"
  | "embedded_unusable"
  | "bad_response";

/** A failure to find, load or talk to the library. One line, no stack needed. */
export class FfiError extends Error {
  readonly kind: FfiErrorKind | "vz";
  /** The library file involved, when known. */
  readonly path?: string;
  constructor(
    kind: FfiErrorKind | "vz",
    message: string,
    opts: { path?: string; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "FfiError";
    this.kind = kind;
    this.path = opts.path;
  }
}

/** An `{"ok":false}` envelope from the library: the NSError fields, kept. */
export class VzError extends FfiError {
  readonly domain: string;
  readonly code: number;
  readonly reason?: string;
  readonly underlying?: VzErrorJson;
  readonly requires?: string;
  constructor(readonly call: string, e: VzErrorJson) {
    super("vz", e.message);
    this.name = "VzError";
    this.domain = e.domain;
    this.code = e.code;
    this.reason = e.reason;
    this.underlying = e.underlying;
    this.requires = e.requires;
  }
  toJSON(): VzErrorJson {
    const j: VzErrorJson = { domain: this.domain, code: this.code, message: this.message };
    if (this.reason) j.reason = this.reason;
    if (this.underlying) j.underlying = this.underlying;
    if (this.requires) j.requires = this.requires;
    return j;
  }
}

/** The shim's own error domain and codes (COVE_VZ_ERR_* in the header). */
export const COVE_VZ_ERROR_DOMAIN = "dev.cove.vz";
export const CoveVzErr = {
  BadRequest: 1,
  NoSuchHandle: 2,
  Unsupported: 3,
  State: 4,
  NotMainThread: 5,
  Io: 6,
  Timeout: 7,
  Internal: 99,
} as const;

/** The library's file name on this OS (the test double is an ELF .so). */
export function libraryFileName(os: typeof Deno.build.os = Deno.build.os): string {
  return os === "darwin" ? "libcove_vz.dylib" : "libcove_vz.so";
}

/** Options for {@link findLibrary} and {@link openCoveVz}; tests set them all. */
export interface LoaderOptions {
  /** Environment lookup; defaults to Deno.env.get. */
  env?: (name: string) => string | undefined;
  /** The running executable; defaults to Deno.execPath(). */
  execPath?: string;
  /** Whether this is a `deno compile` binary; defaults to Deno.build.standalone. */
  standalone?: boolean;
  /** The source tree root (where swift-shim/ is); defaults to this file's parent. */
  root?: string;
  /** Where an embedded library is copied out to; defaults to a per-user cache dir. */
  cacheDir?: string;
  /** The library file name; defaults to {@link libraryFileName}. */
  fileName?: string;
}

/** Where a library was found and how it must be loaded. */
export interface LibraryLocation {
  path: string;
  source: "env" | "executable" | "embedded" | "dev-release" | "dev-debug";
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

function defaultRoot(): string {
  // ffi/cove_vz.ts -> the repository (or compiled virtual filesystem) root.
  return dirname(dirname(new URL(import.meta.url).pathname));
}

/**
 * The places the library is looked for, in order. COVE_VZ_LIBRARY, when
 * set, is the only one: a wrong path there is an error, not a fallback.
 */
export function libraryCandidates(opts: LoaderOptions = {}): LibraryLocation[] {
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  const explicit = env("COVE_VZ_LIBRARY");
  if (explicit) return [{ path: explicit, source: "env" }];
  const name = opts.fileName ?? libraryFileName();
  const exec = opts.execPath ?? Deno.execPath();
  const root = opts.root ?? defaultRoot();
  const standalone = opts.standalone ?? Deno.build.standalone;
  const out: LibraryLocation[] = [{ path: `${dirname(exec)}/${name}`, source: "executable" }];
  if (standalone) {
    // `deno compile --include swift-shim/.build/release/libcove_vz.dylib` keeps the relative path.
    out.push({ path: `${root}/swift-shim/.build/release/${name}`, source: "embedded" });
  } else {
    out.push({ path: `${root}/swift-shim/.build/release/${name}`, source: "dev-release" });
    out.push({ path: `${root}/swift-shim/.build/debug/${name}`, source: "dev-debug" });
  }
  return out;
}

/** Finds the library, or throws a one-line FfiError saying where it looked. */
export function findLibrary(opts: LoaderOptions = {}): LibraryLocation {
  const candidates = libraryCandidates(opts);
  for (const c of candidates) if (exists(c.path)) return c;
  if (candidates[0].source === "env") {
    throw new FfiError(
      "not_found",
      `COVE_VZ_LIBRARY names ${candidates[0].path}, which does not exist`,
      {
        path: candidates[0].path,
      },
    );
  }
  throw new FfiError(
    "not_found",
    `libcove_vz not found (looked in ${
      candidates.map((c) => c.path).join(", ")
    }); build it with 'make shim' or set COVE_VZ_LIBRARY`,
  );
}

function defaultCacheDir(env: (n: string) => string | undefined): string {
  const home = env("HOME") ?? "/tmp";
  if (Deno.build.os === "darwin") return `${home}/Library/Caches/cove/lib`;
  return `${env("XDG_CACHE_HOME") ?? `${home}/.cache`}/cove/lib`;
}

async function sha256Hex(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Copies an embedded library out of the compiled binary's virtual
 * filesystem into a private (0700) cache directory, named by its SHA-256 so
 * concurrent processes share one verified copy. Returns the copy's path.
 */
export async function unpackEmbedded(
  embeddedPath: string,
  opts: LoaderOptions = {},
): Promise<string> {
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  const base = opts.cacheDir ?? defaultCacheDir(env);
  const name = opts.fileName ?? libraryFileName();
  let data: Uint8Array<ArrayBuffer>;
  try {
    data = await Deno.readFile(embeddedPath);
  } catch (e) {
    throw new FfiError(
      "embedded_unusable",
      `cannot read the embedded libcove_vz: ${firstLine(e)}`,
      {
        path: embeddedPath,
        cause: e,
      },
    );
  }
  const digest = await sha256Hex(data);
  const dir = `${base}/${digest.slice(0, 16)}`;
  const target = `${dir}/${name}`;
  try {
    const existing = await Deno.readFile(target);
    if ((await sha256Hex(existing)) === digest) return target;
  } catch { /* not there yet */ }
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    await Deno.chmod(dir, 0o700);
    const tmp = `${target}.${crypto.randomUUID()}.tmp`;
    await Deno.writeFile(tmp, data, { mode: 0o700 });
    await Deno.rename(tmp, target);
  } catch (e) {
    throw new FfiError(
      "embedded_unusable",
      `cannot unpack the embedded libcove_vz into ${dir}: ${
        firstLine(e)
      } (set COVE_VZ_LIBRARY to a libcove_vz.dylib)`,
      { path: dir, cause: e },
    );
  }
  return target;
}

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}

/**
 * Opens a library file and checks its ABI version before binding the full
 * symbol table, so a library of another version is refused with a clear
 * line instead of a missing-symbol error.
 */
export function openLibraryAt(path: string): CoveVz {
  let probe: Deno.DynamicLibrary<{ cove_abi_version: { parameters: []; result: "u32" } }>;
  try {
    probe = Deno.dlopen(path, { cove_abi_version: symbols.cove_abi_version });
  } catch (e) {
    throw new FfiError("load_failed", `cannot load ${path}: ${firstLine(e)}`, { path, cause: e });
  }
  const version = probe.symbols.cove_abi_version();
  probe.close();
  if (version !== COVE_VZ_ABI_VERSION) {
    throw new FfiError(
      "abi_mismatch",
      `${path} speaks ABI version ${version}, this cove needs ${COVE_VZ_ABI_VERSION}; rebuild the shim or use the matching cove`,
      { path },
    );
  }
  let lib: Deno.DynamicLibrary<CoveVzSymbols>;
  try {
    lib = Deno.dlopen(path, symbols);
  } catch (e) {
    throw new FfiError("load_failed", `cannot bind ${path}: ${firstLine(e)}`, { path, cause: e });
  }
  return new CoveVz(lib, path, version);
}

/** Finds, (if embedded) unpacks, opens and version-checks the library. */
export async function openCoveVz(opts: LoaderOptions = {}): Promise<CoveVz> {
  const loc = findLibrary(opts);
  const path = loc.source === "embedded" ? await unpackEmbedded(loc.path, opts) : loc.path;
  return openLibraryAt(path);
}

const encoder = new TextEncoder();

/** A NUL-terminated UTF-8 copy of a string, for `const char *` parameters. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Whether VZ can save and restore a configuration (macOS 14+), and if not why. */
export interface VzSaveRestore {
  supported: boolean;
  error?: VzErrorJson;
}

function saveRestoreOf(r: Record<string, unknown>): VzSaveRestore {
  const sr = r.saveRestore as VzSaveRestore | undefined;
  return sr && typeof sr.supported === "boolean" ? sr : { supported: false, error: undefined };
}

type Envelope = { ok: true; [k: string]: unknown } | { ok: false; error: VzErrorJson };

/** The opened library: one typed method per C function. */
export class CoveVz {
  #lib: Deno.DynamicLibrary<CoveVzSymbols>;
  #closed = false;

  constructor(
    lib: Deno.DynamicLibrary<CoveVzSymbols>,
    readonly path: string,
    readonly abiVersion: number,
  ) {
    this.#lib = lib;
  }

  /** The raw symbols, for tests. */
  get raw(): Deno.DynamicLibrary<CoveVzSymbols>["symbols"] {
    return this.#lib.symbols;
  }

  /** Unloads the library. Only when no call is pending. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#lib.close();
  }

  /** Reads and frees a returned string, then parses the envelope. */
  #take(call: string, ptr: Deno.PointerValue): Record<string, unknown> {
    if (ptr === null) {
      throw new FfiError("bad_response", `${call} returned NULL`, { path: this.path });
    }
    let text: string;
    try {
      text = Deno.UnsafePointerView.getCString(ptr);
    } finally {
      this.#lib.symbols.cove_free(ptr);
    }
    let env: Envelope;
    try {
      env = JSON.parse(text) as Envelope;
    } catch {
      throw new FfiError("bad_response", `${call} returned text that is not JSON`, {
        path: this.path,
      });
    }
    if (typeof env !== "object" || env === null || typeof env.ok !== "boolean") {
      throw new FfiError("bad_response", `${call} returned JSON without "ok"`, { path: this.path });
    }
    if (!env.ok) throw new VzError(call, env.error);
    return env;
  }

  async #call(
    call: string,
    p: Promise<Deno.PointerValue>,
    ...keep: unknown[]
  ): Promise<Record<string, unknown>> {
    const ptr = await p;
    keep.length = 0; // buffers stay referenced until the call has returned
    return this.#take(call, ptr);
  }

  abiVersionOfLibrary(): number {
    return this.#lib.symbols.cove_abi_version();
  }

  async hostInfo(): Promise<VzHostInfo> {
    const r = await this.#call("host_info", this.#lib.symbols.cove_vz_host_info());
    const { ok: _ok, ...info } = r;
    return info as unknown as VzHostInfo;
  }

  /** Builds and validates a configuration without creating a VM. */
  async validate(config: VzConfig): Promise<{ saveRestore: VzSaveRestore }> {
    const b = cString(JSON.stringify(config));
    const r = await this.#call("validate", this.#lib.symbols.cove_vz_validate(b), b);
    return { saveRestore: saveRestoreOf(r) };
  }

  async rosettaInstall(): Promise<string> {
    const r = await this.#call("rosetta_install", this.#lib.symbols.cove_vz_rosetta_install());
    return String(r.rosetta);
  }

  async machineIdentifierNew(platform: "mac" | "generic"): Promise<string> {
    const b = cString(platform);
    const r = await this.#call(
      "machine_identifier_new",
      this.#lib.symbols.cove_vz_machine_identifier_new(b),
      b,
    );
    return String(r.machineIdentifier);
  }

  async macAuxiliaryStorageCreate(path: string, hardwareModel: string): Promise<void> {
    const p = cString(path);
    const h = cString(hardwareModel);
    await this.#call(
      "mac_auxiliary_storage_create",
      this.#lib.symbols.cove_vz_mac_auxiliary_storage_create(p, h),
      p,
      h,
    );
  }

  async efiVariableStoreCreate(path: string): Promise<void> {
    const p = cString(path);
    await this.#call(
      "efi_variable_store_create",
      this.#lib.symbols.cove_vz_efi_variable_store_create(p),
      p,
    );
  }

  async restoreImageLoad(ipswPath: string): Promise<VzRestoreImage> {
    const p = cString(ipswPath);
    const r = await this.#call(
      "restore_image_load",
      this.#lib.symbols.cove_vz_restore_image_load(p),
      p,
    );
    return r.image as VzRestoreImage;
  }

  async restoreImageFetchLatest(): Promise<VzRestoreImage> {
    const r = await this.#call(
      "restore_image_fetch_latest",
      this.#lib.symbols.cove_vz_restore_image_fetch_latest(),
    );
    return r.image as VzRestoreImage;
  }

  /** Creates a (stopped) VM and returns its handle. */
  async create(config: VzConfig): Promise<number> {
    return (await this.createWithInfo(config)).handle;
  }

  /** Creates a (stopped) VM; also says whether VZ could save its state. */
  async createWithInfo(config: VzConfig): Promise<{ handle: number; saveRestore: VzSaveRestore }> {
    const b = cString(JSON.stringify(config));
    const r = await this.#call("create", this.#lib.symbols.cove_vz_create(b), b);
    return { handle: Number(r.handle), saveRestore: saveRestoreOf(r) };
  }

  async release(vm: number): Promise<void> {
    await this.#call("release", this.#lib.symbols.cove_vz_release(BigInt(vm)));
  }

  async state(vm: number): Promise<VzStateInfo> {
    const r = await this.#call("state", this.#lib.symbols.cove_vz_state(BigInt(vm)));
    const { ok: _ok, ...info } = r;
    return info as unknown as VzStateInfo;
  }

  async start(vm: number, options: VzStartOptions = {}): Promise<void> {
    const b = cString(JSON.stringify(options));
    await this.#call("start", this.#lib.symbols.cove_vz_start(BigInt(vm), b), b);
  }

  async requestStop(vm: number): Promise<void> {
    await this.#call("request_stop", this.#lib.symbols.cove_vz_request_stop(BigInt(vm)));
  }

  async stop(vm: number): Promise<void> {
    await this.#call("stop", this.#lib.symbols.cove_vz_stop(BigInt(vm)));
  }

  async pause(vm: number): Promise<void> {
    await this.#call("pause", this.#lib.symbols.cove_vz_pause(BigInt(vm)));
  }

  async resume(vm: number): Promise<void> {
    await this.#call("resume", this.#lib.symbols.cove_vz_resume(BigInt(vm)));
  }

  async save(vm: number, path: string): Promise<void> {
    const p = cString(path);
    await this.#call("save", this.#lib.symbols.cove_vz_save(BigInt(vm), p), p);
  }

  async restore(vm: number, path: string): Promise<void> {
    const p = cString(path);
    await this.#call("restore", this.#lib.symbols.cove_vz_restore(BigInt(vm), p), p);
  }

  /** Sets the balloon target; returns the size VZ settled on. */
  async setBalloonTarget(vm: number, bytes: number): Promise<number> {
    const r = await this.#call(
      "set_balloon_target",
      this.#lib.symbols.cove_vz_set_balloon_target(BigInt(vm), BigInt(bytes)),
    );
    return Number(r.targetMemorySize);
  }

  /** Connects to a guest vsock port; the returned fd is the caller's to close. */
  async vsockConnect(
    vm: number,
    port: number,
  ): Promise<{ fd: number; sourcePort: number; destinationPort: number }> {
    const r = await this.#call(
      "vsock_connect",
      this.#lib.symbols.cove_vz_vsock_connect(BigInt(vm), port),
    );
    return {
      fd: Number(r.fd),
      sourcePort: Number(r.sourcePort),
      destinationPort: Number(r.destinationPort),
    };
  }

  async vsockListen(vm: number, port: number): Promise<void> {
    await this.#call("vsock_listen", this.#lib.symbols.cove_vz_vsock_listen(BigInt(vm), port));
  }

  async vsockUnlisten(vm: number, port: number): Promise<void> {
    await this.#call("vsock_unlisten", this.#lib.symbols.cove_vz_vsock_unlisten(BigInt(vm), port));
  }

  /** Waits up to timeoutMs for the VM's next event. */
  async nextEvent(
    vm: number,
    timeoutMs: number,
  ): Promise<{ event: VzEvent | null; closed: boolean }> {
    const r = await this.#call(
      "next_event",
      this.#lib.symbols.cove_vz_next_event(BigInt(vm), timeoutMs),
    );
    return { event: (r.event ?? null) as VzEvent | null, closed: r.closed === true };
  }

  async installMacOS(vm: number, ipswPath: string): Promise<void> {
    const p = cString(ipswPath);
    await this.#call("install_macos", this.#lib.symbols.cove_vz_install_macos(BigInt(vm), p), p);
  }

  async installCancel(vm: number): Promise<void> {
    await this.#call("install_cancel", this.#lib.symbols.cove_vz_install_cancel(BigInt(vm)));
  }

  /** Main thread only (synchronous). */
  showWindow(vm: number, options: VzWindowOptions): void {
    const b = cString(JSON.stringify(options));
    this.#take("show_window", this.#lib.symbols.cove_vz_show_window(BigInt(vm), b));
  }

  /** Main thread only (synchronous): steps AppKit; -1 when off the main thread. */
  pump(timeoutMs: number): number {
    return this.#lib.symbols.cove_vz_pump(timeoutMs);
  }
}
