/**
 * A small client for the OCI Distribution (Registry HTTP API v2) protocol,
 * on `fetch`: manifests, blobs (HEAD, ranged GET, monolithic, streamed and
 * chunked uploads, cross-repository mounts), anonymous access, Bearer token
 * challenges (realm, service, scope; refresh tokens) and Basic auth.
 *
 * Transient failures (connection refused or dropped, 429, 5xx) are retried
 * with exponential backoff and jitter; everything else becomes one clear
 * {@link CoveError} line naming the registry, never a secret. Plain http is
 * used only with `insecure: true`.
 * @module
 */
import { createHash } from "node:crypto";
import { concatBytes } from "../bytes.ts";
import { CoveError, ExitCode } from "../errors.ts";
import { type CredentialLookup, type Credentials, parseChallenge, redact } from "./auth.ts";
import { apiHost } from "./reference.ts";
import {
  formatSeconds,
  parseRetryAfter,
  retryDelay,
  type RetryPolicy,
  retryPolicy,
  sleep,
  stallTimeoutMs,
  withRetry,
} from "../retry.ts";
import { type ResumableOptions, streamResumable } from "../images/download.ts";

/** Media types a manifest GET accepts; container types are accepted only to refuse them clearly. */
export const MANIFEST_ACCEPT = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
].join(", ");

const MAX_MANIFEST = 4 * 1024 * 1024;

/** Options shared by every registry operation. */
export interface RegistryOptions {
  /** Talk plain http instead of https. */
  insecure?: boolean;
  /** Where credentials come from; none means anonymous only. */
  credentials?: CredentialLookup;
  /** Retries after the first attempt for transient failures (default 4). */
  retries?: number;
  /** First backoff delay in ms, doubled each retry (default 500). */
  backoffMs?: number;
  /**
   * Milliseconds without a byte (headers, body, or sending a body) before an
   * attempt is given up as stalled (default 30 s or `COVE_STALL_TIMEOUT`).
   */
  timeoutMs?: number;
  /** Receives notices, retries included (to stderr in the CLI). */
  log?: (line: string) => void;
  /** Do not send retry notices to `log` (the CLI shows them only at --debug). */
  quietRetries?: boolean;
}

/** Hosts listed in `COVE_INSECURE_REGISTRIES` (comma separated) use plain http. */
function insecureByEnv(registry: string): boolean {
  const list = Deno.env.get("COVE_INSECURE_REGISTRIES");
  return !!list && list.split(",").map((s) => s.trim()).includes(registry);
}

/** How a request failed below HTTP. */
type NetKind = "dns" | "refused" | "blocked" | "tls" | "dropped" | "timeout" | "other";

function classify(err: unknown): NetKind {
  const msg = err instanceof Error
    ? `${err.message} ${String((err as { cause?: unknown }).cause ?? "")}`
    : String(err);
  if (err instanceof DOMException && (err.name === "TimeoutError" || err.name === "AbortError")) {
    return "timeout";
  }
  if (
    /dns error|failed to lookup|name or service not known|no address associated|nodename nor servname/i
      .test(msg)
  ) {
    return "dns";
  }
  if (/connection refused|ECONNREFUSED/i.test(msg)) return "refused";
  if (/requests to port \d+ are blocked|bad port/i.test(msg)) return "blocked";
  if (
    /tls|certificate|handshake|InvalidContentType|corrupt message|wrong version number/i.test(msg)
  ) return "tls";
  if (
    /reset|closed|broken pipe|unexpected eof|incomplete|connection error|error reading|body|hyper|EPIPE|ECONNRESET/i
      .test(msg)
  ) {
    return "dropped";
  }
  return "other";
}

/** A network-level failure as a CoveError. */
export function networkError(
  host: string,
  err: unknown,
  insecure: boolean,
  push = false,
): CoveError {
  const kind = classify(err);
  const opts = { exit: ExitCode.Network, cause: err };
  const resume = `check your network and retry; ${
    push ? "a push skips the layers already uploaded" : "a pull resumes where it stopped"
  }`;
  switch (kind) {
    case "dns":
      return new CoveError("oci.unknown_host", `cannot reach registry '${host}': unknown host`, {
        ...opts,
        hint: "check the registry name in the reference, and your network",
      });
    case "refused":
      return new CoveError(
        "oci.unreachable",
        `cannot connect to registry '${host}': connection refused`,
        {
          ...opts,
          hint: "check the host and port, and that the registry is running",
        },
      );
    case "blocked": {
      const port = /port (\d+)/.exec(String(err))?.[1] ?? "";
      return new CoveError(
        "oci.blocked_port",
        `cannot connect to registry '${host}': requests to port ${port} are blocked (a port browsers and Deno refuse)`,
        { ...opts, hint: "serve the registry on another port" },
      );
    }
    case "tls":
      return new CoveError("oci.tls", `TLS with registry '${host}' failed`, {
        ...opts,
        hint: insecure
          ? "check the registry's certificate"
          : "if the registry serves plain http, pass --insecure",
      });
    case "timeout":
      return new CoveError("oci.timeout", `registry '${host}' stopped responding`, {
        ...opts,
        hint: resume,
      });
    default:
      return new CoveError("oci.dropped", `registry '${host}' dropped the connection`, {
        ...opts,
        hint: resume,
      });
  }
}

/** Failures whose own retries are spent: an outer loop must not retry them again. */
const spent = new WeakSet<object>();

function exhausted<E>(err: E): E {
  if (typeof err === "object" && err !== null) spent.add(err);
  return err;
}

/** True for failures worth retrying. */
function retryable(err: unknown): boolean {
  if (typeof err === "object" && err !== null && spent.has(err)) return false;
  if (err instanceof CoveError) {
    return err.code === "oci.dropped" || err.code === "oci.timeout" ||
      err.code === "oci.unreachable" || err.code === "oci.server";
  }
  const k = classify(err);
  return k === "dropped" || k === "timeout" || k === "refused" || k === "other";
}

const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/** A request body that can be produced again for a retry. */
export type BodySource =
  | Uint8Array<ArrayBuffer>
  | (() => Promise<ReadableStream<Uint8Array>> | ReadableStream<Uint8Array>);

interface RequestInit {
  headers?: Record<string, string>;
  body?: BodySource;
  /** Statuses that are an answer (returned, not thrown); default 2xx. */
  accept?: number[];
  /** What this request does, for error lines ("fetching the manifest"). */
  what: string;
  /** Do not retry (the caller retries at a higher level). */
  once?: boolean;
  /** Aborts the request (its reason is thrown). */
  signal?: AbortSignal;
}

/** One repository on one registry, with its own auth state. */
export class RegistryClient {
  readonly registry: string;
  readonly repository: string;
  readonly base: string;
  readonly insecure: boolean;
  #opts:
    & Required<Omit<RegistryOptions, "credentials" | "log" | "insecure" | "quietRetries">>
    & Pick<RegistryOptions, "credentials" | "log" | "quietRetries">;
  #policy: RetryPolicy;
  #push: boolean;
  #actions: string;
  #auth?: { header: string; expires: number };
  #creds?: Credentials | null;
  #basicChallenge = false;
  #authing?: Promise<void>;

  /** `push` asks for pull and push rights up front. */
  constructor(registry: string, repository: string, opts: RegistryOptions = {}, push = false) {
    this.registry = registry;
    this.repository = repository;
    this.insecure = !!opts.insecure || insecureByEnv(registry);
    this.base = `${this.insecure ? "http" : "https"}://${apiHost(registry)}`;
    this.#policy = retryPolicy({ retries: opts.retries, baseMs: opts.backoffMs });
    this.#opts = {
      retries: this.#policy.retries,
      backoffMs: this.#policy.baseMs,
      timeoutMs: opts.timeoutMs ?? stallTimeoutMs(),
      credentials: opts.credentials,
      log: opts.log,
      quietRetries: opts.quietRetries,
    };
    this.#push = push;
    this.#actions = push ? "pull,push" : "pull";
  }

  /** The configured retry count. */
  get retries(): number {
    return this.#opts.retries;
  }
  /** The configured body idle timeout. */
  get timeoutMs(): number {
    return this.#opts.timeoutMs;
  }

  /** Delay before retry number `attempt` (1-based), with jitter (the shared retry policy). */
  backoff(attempt: number, retryAfterMs?: number): number {
    return retryDelay(this.#policy, attempt, retryAfterMs);
  }

  /** The error for an attempt that got no bytes for the stall timeout. */
  stalled(what: string, cause?: unknown): CoveError {
    const op = this.#push ? "push" : "pull";
    return new CoveError(
      "oci.timeout",
      `registry '${this.registry}' sent no data for ${
        formatSeconds(this.#opts.timeoutMs)
      } while ${what}`,
      {
        hint: `the ${op} can be resumed: run the same command again`,
        exit: ExitCode.Network,
        cause,
      },
    );
  }

  /**
   * The registry's half of a {@link ResumableOptions} for a blob body: the
   * stall timeout, the retry policy, its error lines and retry notices.
   * `onStall` is told when the body stalls (true) and flows again (false).
   */
  streamOptions(
    what: string,
    onStall: (stalled: boolean) => void = () => {},
  ): Pick<ResumableOptions, "stallMs" | "policy" | "fail" | "retryable" | "onEvent"> {
    return {
      stallMs: this.#opts.timeoutMs,
      policy: this.#policy,
      fail: (e, ctx) =>
        ctx.stalled
          ? this.stalled(`downloading ${what}`, e)
          : networkError(this.registry, e, this.insecure),
      retryable: (e) => retryable(e),
      onEvent: (e) => {
        if (e.type === "stalled") onStall(true);
        else if (e.type === "flowing") onStall(false);
        else if (e.type === "retry") {
          onStall(false);
          this.notice(
            `${e.error.message} during ${what}; resuming at byte ${e.received} in ${
              formatSeconds(Math.round(e.waitMs / 100) * 100)
            } (retry ${e.attempt}/${e.retries})`,
          );
        }
      },
    };
  }

  /** Logs a retry notice. */
  notice(line: string): void {
    if (!this.#opts.quietRetries) this.#opts.log?.(line);
  }

  #url(pathOrUrl: string): string {
    if (/^https?:\/\//.test(pathOrUrl)) return pathOrUrl;
    return new URL(pathOrUrl, this.base).toString();
  }

  async #credentials(): Promise<Credentials | undefined> {
    if (this.#creds === undefined) {
      this.#creds = (await this.#opts.credentials?.(this.registry)) ?? null;
    }
    return this.#creds ?? undefined;
  }

  #secrets(): (string | undefined)[] {
    return [this.#creds?.secret, this.#auth?.header.replace(/^\S+\s+/, "")];
  }

  /** Throws the auth error for a 401/403. */
  async #denied(res: Response, what: string): Promise<never> {
    const detail = await this.#message(res);
    const creds = await this.#credentials();
    const hint = creds
      ? `the credentials from ${creds.source} were refused; run 'cove login ${this.registry}' again`
      : `log in with 'cove login ${this.registry}'`;
    if (res.status === 403) {
      throw new CoveError(
        "oci.denied",
        `registry '${this.registry}' denied access to '${this.repository}' while ${what}${detail}`,
        {
          hint: creds
            ? `check that your account may ${
              this.#actions.includes("push") ? "push to" : "pull from"
            } it`
            : hint,
          exit: ExitCode.Network,
        },
      );
    }
    throw new CoveError(
      "oci.unauthorized",
      `registry '${this.registry}' requires authentication for '${this.repository}'${detail}`,
      {
        hint,
        exit: ExitCode.Network,
      },
    );
  }

  /** A short, redacted ": <registry's message>" from an error response. */
  async #message(res: Response): Promise<string> {
    let text = "";
    try {
      // Bounded: an error body that stalls must not hang the error.
      const buf = await readLimited(
        res,
        4096,
        () => new CoveError("oci.http", "long error body"),
        Math.min(this.#opts.timeoutMs, 5000),
      );
      text = new TextDecoder().decode(buf);
    } catch {
      await res.body?.cancel().catch(() => {});
    }
    let msg = "";
    try {
      const j = JSON.parse(text) as {
        errors?: { code?: string; message?: string }[];
        details?: string;
        error?: string;
      };
      const e = j.errors?.[0];
      msg = e?.message ?? j.details ?? j.error ?? "";
    } catch {
      msg = /<|^\s*$/.test(text) ? "" : text.split("\n")[0];
    }
    msg = redact(msg, this.#secrets()).slice(0, 200).trim();
    return msg ? `: ${msg}` : "";
  }

  /** Answers a 401 challenge: gets a Bearer token or switches to Basic. */
  async #authenticate(res: Response, what: string): Promise<void> {
    const header = res.headers.get("www-authenticate");
    const ch = header ? parseChallenge(header) : undefined;
    await res.body?.cancel().catch(() => {});
    if (!ch) await this.#denied(new Response(null, { status: 401 }), what);
    const creds = await this.#credentials();
    if (ch!.scheme === "basic") {
      if (!creds || creds.username === "<token>") {
        await this.#denied(new Response(null, { status: 401 }), what);
      }
      this.#basicChallenge = true;
      this.#auth = {
        header: `Basic ${btoa(`${creds!.username}:${creds!.secret}`)}`,
        expires: Infinity,
      };
      return;
    }
    if (ch!.scheme !== "bearer" || !ch!.params.realm) {
      throw new CoveError(
        "oci.auth_scheme",
        `registry '${this.registry}' asks for unsupported authentication '${ch!.scheme}'`,
        {
          hint: "cove supports Bearer token and Basic authentication",
          exit: ExitCode.Network,
        },
      );
    }
    this.#auth = await this.#token(ch!.params, creds, what);
  }

  /** Fetches a Bearer token from the challenge's realm. */
  async #token(
    params: Record<string, string>,
    creds: Credentials | undefined,
    what: string,
  ): Promise<{ header: string; expires: number }> {
    let realm: URL;
    try {
      realm = new URL(params.realm);
    } catch {
      throw new CoveError(
        "oci.auth_realm",
        `registry '${this.registry}' sent a token realm that is not a URL`,
        {
          exit: ExitCode.Network,
        },
      );
    }
    if (realm.protocol === "http:" && !this.insecure) {
      throw new CoveError(
        "oci.auth_realm",
        `registry '${this.registry}' sent a plain-http token realm`,
        {
          hint: "pass --insecure only if you trust this network",
          exit: ExitCode.Network,
        },
      );
    }
    const scopes = new Set<string>(
      this.repository ? [`repository:${this.repository}:${this.#actions}`] : [],
    );
    if (params.scope) { for (const s of params.scope.split(" ")) if (s) scopes.add(s); }
    const service = params.service;
    let res: Response;
    try {
      if (creds?.username === "<token>") {
        const form = new URLSearchParams({
          grant_type: "refresh_token",
          refresh_token: creds.secret,
          client_id: "cove",
        });
        if (service) form.set("service", service);
        form.set("scope", [...scopes].join(" "));
        res = await fetch(realm, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: form,
          signal: AbortSignal.timeout(this.#opts.timeoutMs),
        });
      } else {
        if (service) realm.searchParams.set("service", service);
        for (const s of scopes) realm.searchParams.append("scope", s);
        const headers: Record<string, string> = {};
        if (creds) headers.authorization = `Basic ${btoa(`${creds.username}:${creds.secret}`)}`;
        res = await fetch(realm, { headers, signal: AbortSignal.timeout(this.#opts.timeoutMs) });
      }
    } catch (e) {
      throw networkError(realm.host, e, this.insecure);
    }
    if (res.status === 401 || res.status === 403) await this.#denied(res, what);
    if (!res.ok) {
      const detail = await this.#message(res);
      throw new CoveError(
        "oci.auth_failed",
        `getting a token for '${this.registry}' failed with HTTP ${res.status}${detail}`,
        {
          exit: ExitCode.Network,
        },
      );
    }
    let body: { token?: string; access_token?: string; expires_in?: number };
    try {
      body = await res.json();
    } catch {
      throw new CoveError(
        "oci.auth_failed",
        `the token service of '${this.registry}' sent something that is not JSON`,
        {
          exit: ExitCode.Network,
        },
      );
    }
    const token = body.token ?? body.access_token;
    if (!token) {
      throw new CoveError(
        "oci.auth_failed",
        `the token service of '${this.registry}' sent no token`,
        { exit: ExitCode.Network },
      );
    }
    const ttl = Math.max(60, body.expires_in ?? 60) * 1000;
    return { header: `Bearer ${token}`, expires: Date.now() + ttl - 10_000 };
  }

  /**
   * Sends a request with auth and retries. Returns the response when its
   * status is in `accept` (default: any 2xx); throws a CoveError otherwise.
   * The caller owns (and must consume or cancel) the returned body.
   */
  async request(method: string, pathOrUrl: string, init: RequestInit): Promise<Response> {
    const url = this.#url(pathOrUrl);
    const attempts = init.once ? 1 : this.#opts.retries + 1;
    let authRetried = false;
    let authTries = 0;
    for (let attempt = 1;; attempt++) {
      const headers: Record<string, string> = { "user-agent": "cove", ...init.headers };
      if (this.#auth && this.#auth.expires < Date.now() && !this.#basicChallenge) {
        this.#auth = undefined;
      }
      if (this.#auth) headers.authorization = this.#auth.header;
      const ctl = new AbortController();
      init.signal?.throwIfAborted();
      const stop = () => ctl.abort(init.signal?.reason);
      init.signal?.addEventListener("abort", stop, { once: true });
      // A stall timer: while a streamed body is being sent it restarts on every chunk.
      let timer: ReturnType<typeof setTimeout> | undefined;
      let stalled = false;
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          stalled = true;
          ctl.abort(new DOMException("timed out", "TimeoutError"));
        }, this.#opts.timeoutMs);
      };
      arm();
      let res: Response;
      try {
        const body = init.body === undefined
          ? undefined
          : init.body instanceof Uint8Array
          ? init.body
          : (await init.body()).pipeThrough(
            new TransformStream<Uint8Array, Uint8Array>({
              transform(chunk, c) {
                arm();
                c.enqueue(chunk);
              },
              flush() {
                arm();
              },
            }),
          );
        res = await fetch(url, { method, headers, body, signal: ctl.signal, redirect: "follow" });
      } catch (e) {
        clearTimeout(timer);
        init.signal?.removeEventListener("abort", stop);
        if (init.signal?.aborted) throw init.signal.reason;
        const err = stalled
          ? this.stalled(init.what, e)
          : networkError(new URL(url).host, e, this.insecure, this.#push);
        if (!retryable(err) || attempt >= attempts) throw attempts > 1 ? exhausted(err) : err;
        const wait = this.backoff(attempt);
        this.notice(
          `${err.message} while ${init.what}; retrying in ${
            formatSeconds(Math.round(wait / 100) * 100)
          } (${attempt}/${attempts - 1})`,
        );
        await sleep(wait);
        continue;
      }
      clearTimeout(timer);
      init.signal?.removeEventListener("abort", stop);
      if (res.status === 401) {
        // Answering a challenge is not a retry. Requests sent in parallel share one answer.
        if (this.#authing) {
          await res.body?.cancel().catch(() => {});
          await this.#authing.catch(() => {});
          if (authTries++ < 3) {
            attempt--;
            continue;
          }
        } else if (this.#auth && this.#auth.header !== headers.authorization && authTries++ < 3) {
          await res.body?.cancel().catch(() => {});
          attempt--;
          continue;
        } else if (!authRetried) {
          authRetried = true;
          this.#authing = this.#authenticate(res, init.what);
          try {
            await this.#authing;
          } finally {
            this.#authing = undefined;
          }
          attempt--;
          continue;
        }
      }
      if (init.accept ? init.accept.includes(res.status) : res.ok) return res;
      if (res.status === 401 || res.status === 403) await this.#denied(res, init.what);
      if (RETRY_STATUS.has(res.status) && attempt < attempts) {
        await res.body?.cancel().catch(() => {});
        const wait = this.backoff(attempt, parseRetryAfter(res.headers.get("retry-after")));
        this.notice(
          `registry '${this.registry}' answered HTTP ${res.status} while ${init.what}; retrying in ${
            formatSeconds(Math.round(wait / 100) * 100)
          } (${attempt}/${attempts - 1})`,
        );
        await sleep(wait);
        continue;
      }
      const failure = await this.#fail(res, init.what).catch((e: unknown) => e);
      throw attempts > 1 && RETRY_STATUS.has(res.status) ? exhausted(failure) : failure;
    }
  }

  async #fail(res: Response, what: string): Promise<never> {
    const detail = await this.#message(res);
    if (res.status >= 500) {
      throw new CoveError(
        "oci.server",
        `registry '${this.registry}' failed with HTTP ${res.status} while ${what}${detail}`,
        {
          hint: "retry later",
          exit: ExitCode.Network,
        },
      );
    }
    throw new CoveError(
      "oci.http",
      `registry '${this.registry}' answered HTTP ${res.status} while ${what}${detail}`,
      {
        exit: ExitCode.Network,
      },
    );
  }

  /** Checks that the registry answers and the credentials (if any) are accepted. */
  async ping(): Promise<void> {
    const res = await this.request("GET", "/v2/", { what: "checking the registry" });
    await res.body?.cancel();
  }

  /** Fetches a manifest by tag or digest; `undefined` when it does not exist. */
  async getManifest(
    reference: string,
  ): Promise<{ bytes: Uint8Array<ArrayBuffer>; mediaType: string; digest: string } | undefined> {
    const what = "fetching the manifest";
    const got = await this.#withRetries(what, async () => {
      const res = await this.request("GET", `/v2/${this.repository}/manifests/${reference}`, {
        headers: { accept: MANIFEST_ACCEPT },
        accept: [200, 404],
        what,
      });
      if (res.status === 404) {
        await res.body?.cancel();
        return undefined;
      }
      const bytes = await this.#readBody(res, MAX_MANIFEST, what, () =>
        new CoveError(
          "oci.bad_manifest",
          `the manifest of '${this.repository}:${reference}' is larger than 4 MiB`,
          { exit: ExitCode.Network },
        ));
      return { bytes, mediaType: (res.headers.get("content-type") ?? "").split(";")[0].trim() };
    });
    if (!got) return undefined;
    const digest = await sha256Digest(got.bytes);
    if (reference.startsWith("sha256:") && digest !== reference) {
      throw new CoveError(
        "oci.digest_mismatch",
        `the manifest of '${this.repository}' does not match its digest ${reference}`,
        {
          hint: "the registry or a proxy altered it; try again",
          exit: ExitCode.Network,
        },
      );
    }
    return { ...got, digest };
  }

  /** Reads a small response body whole, bounded by the stall timeout and `max`. */
  async #readBody(
    res: Response,
    max: number,
    what: string,
    tooBig: () => CoveError,
  ): Promise<Uint8Array<ArrayBuffer>> {
    try {
      return await readLimited(res, max, tooBig, this.#opts.timeoutMs);
    } catch (e) {
      if (e instanceof CoveError) throw e;
      if (e instanceof DOMException && e.name === "TimeoutError") throw this.stalled(what, e);
      throw networkError(this.registry, e, this.insecure, this.#push);
    }
  }

  /** Stores a manifest under a tag (or digest). Returns its digest. */
  async putManifest(
    reference: string,
    bytes: Uint8Array<ArrayBuffer>,
    mediaType: string,
  ): Promise<string> {
    const res = await this.request("PUT", `/v2/${this.repository}/manifests/${reference}`, {
      headers: { "content-type": mediaType },
      body: bytes,
      accept: [200, 201, 202],
      what: `pushing the manifest for '${reference}'`,
    });
    await res.body?.cancel();
    return await sha256Digest(bytes);
  }

  /** The blob's size if the repository has it. */
  async blobSize(digest: string): Promise<number | undefined> {
    const res = await this.request("HEAD", `/v2/${this.repository}/blobs/${digest}`, {
      accept: [200, 404],
      what: "checking for a blob",
    });
    await res.body?.cancel();
    if (res.status === 404) return undefined;
    const n = Number(res.headers.get("content-length"));
    return Number.isFinite(n) ? n : -1;
  }

  /** Opens a blob for reading from byte `start`. Status 200 or 206. */
  async getBlob(
    digest: string,
    start = 0,
    once = false,
    signal?: AbortSignal,
  ): Promise<Response> {
    const headers: Record<string, string> = {};
    if (start > 0) headers.range = `bytes=${start}-`;
    const res = await this.request("GET", `/v2/${this.repository}/blobs/${digest}`, {
      headers,
      accept: [200, 206, 404, 416],
      what: "downloading a layer",
      once,
      signal,
    });
    if (res.status === 404) {
      await res.body?.cancel();
      throw new CoveError(
        "oci.blob_missing",
        `registry '${this.registry}' has no blob ${digest} in '${this.repository}'`,
        {
          hint: "the image is incomplete on the registry; ask its publisher to push it again",
          exit: ExitCode.NotFound,
        },
      );
    }
    if (res.status === 416) {
      await res.body?.cancel();
      throw new CoveError(
        "oci.dropped",
        `registry '${this.registry}' refused to resume a download`,
        { exit: ExitCode.Network },
      );
    }
    return res;
  }

  /** Reads a small blob whole (resuming like any blob) and verifies its digest. */
  async readBlob(digest: string, max: number): Promise<Uint8Array<ArrayBuffer>> {
    const parts: Uint8Array[] = [];
    const n = await streamResumable({
      ...this.streamOptions(`blob ${digest.slice(0, 19)}…`),
      open: async (offset, signal) => {
        const res = await this.getBlob(digest, offset, true, signal);
        return { res, from: res.status === 206 ? offset : 0 };
      },
      write: (c) => {
        parts.push(c.slice());
        return Promise.resolve();
      },
      limit: max,
      tooLarge: () =>
        new CoveError("oci.bad_manifest", `blob ${digest} is larger than expected`, {
          exit: ExitCode.Network,
        }),
    });
    const bytes = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
      bytes.set(p, o);
      o += p.length;
    }
    const got = await sha256Digest(bytes);
    if (got !== digest) throw digestMismatch(this.registry, digest, got);
    return bytes;
  }

  /** Starts an upload session; returns its location URL. */
  async startUpload(): Promise<string> {
    const res = await this.request("POST", `/v2/${this.repository}/blobs/uploads/`, {
      headers: { "content-length": "0" },
      accept: [202],
      what: "starting a blob upload",
    });
    await res.body?.cancel();
    return this.#location(res);
  }

  #location(res: Response): string {
    const loc = res.headers.get("location");
    if (!loc) {
      throw new CoveError("oci.protocol", `registry '${this.registry}' sent no upload location`, {
        exit: ExitCode.Network,
      });
    }
    return new URL(loc, this.base).toString();
  }

  /** Tries a cross-repository mount; true when the registry linked the blob. */
  async mountBlob(digest: string, from: string): Promise<boolean> {
    const q = new URLSearchParams({ mount: digest, from });
    const res = await this.request("POST", `/v2/${this.repository}/blobs/uploads/?${q}`, {
      headers: { "content-length": "0" },
      accept: [201, 202],
      what: "mounting a blob",
    });
    await res.body?.cancel();
    if (res.status === 201) return true;
    // 202: an upload session was opened instead; abandon it.
    const loc = res.headers.get("location");
    if (loc) {
      await this.request("DELETE", new URL(loc, this.base).toString(), {
        accept: [200, 202, 204, 404, 405],
        what: "cancelling an upload",
        once: true,
      })
        .then((r) => r.body?.cancel()).catch(() => {});
    }
    return false;
  }

  /** Uploads a small blob in one monolithic PUT (retried). */
  async uploadBytes(digest: string, bytes: Uint8Array<ArrayBuffer>): Promise<void> {
    await this.#withRetries(`uploading ${digest.slice(0, 19)}`, async () => {
      const loc = await this.startUpload();
      const res = await this.request("PUT", withDigest(loc, digest), {
        headers: { "content-type": "application/octet-stream" },
        body: bytes,
        accept: [201, 204],
        what: "uploading a blob",
        once: true,
      });
      await res.body?.cancel();
    });
  }

  /**
   * Uploads a blob produced as a stream whose digest is known only at its
   * end (a layer compressed on the fly). With `chunkSize` 0 the stream goes
   * in one PATCH (as docker does); otherwise in PATCHes of that size with
   * Content-Range. The upload is closed with PUT ?digest=. A failed upload
   * starts again from scratch, with a fresh stream, up to the retry count.
   */
  async uploadStream(
    produce: () => { body: ReadableStream<Uint8Array>; done: Promise<{ digest: string }> },
    chunkSize = 0,
    what = "a layer",
    signal?: AbortSignal,
  ): Promise<string> {
    return await this.#withRetries(`uploading ${what}`, async () => {
      let loc = await this.startUpload();
      const { body, done } = produce();
      let producerError: unknown;
      done.catch((err) => {
        producerError = err;
      });
      // fetch locks the body, so a failure cancels it through this pipe (or the reader below).
      const pipe = new AbortController();
      let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
      try {
        if (chunkSize <= 0) {
          const piped = body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>(), {
            signal: pipe.signal,
          });
          const res = await this.request("PATCH", loc, {
            headers: { "content-type": "application/octet-stream" },
            body: () => piped,
            accept: [202, 204],
            what: "uploading a blob",
            once: true,
            signal,
          });
          await res.body?.cancel();
          loc = this.#location(res);
        } else {
          reader = body.getReader();
          let pending: Uint8Array = new Uint8Array(0);
          let sent = 0;
          let ended = false;
          while (!ended) {
            const buf = new Uint8Array(chunkSize);
            let filled = 0;
            while (filled < chunkSize) {
              if (pending.length === 0) {
                const r = await reader.read();
                if (r.done) {
                  ended = true;
                  break;
                }
                pending = r.value;
              }
              const n = Math.min(pending.length, chunkSize - filled);
              buf.set(pending.subarray(0, n), filled);
              pending = pending.subarray(n);
              filled += n;
            }
            if (filled === 0) break;
            const res = await this.request("PATCH", loc, {
              headers: {
                "content-type": "application/octet-stream",
                "content-range": `${sent}-${sent + filled - 1}`,
              },
              body: buf.subarray(0, filled),
              accept: [202, 204],
              what: "uploading a blob chunk",
              once: true,
              signal,
            });
            await res.body?.cancel();
            loc = this.#location(res);
            sent += filled;
          }
        }
      } catch (e) {
        if (reader) await reader.cancel().catch(() => {});
        else pipe.abort();
        await sleep(0);
        // A failure of the producer (reading the disk) explains more than the upload's.
        throw producerError ?? e;
      }
      const { digest } = await done;
      const res = await this.request("PUT", withDigest(loc, digest), {
        headers: { "content-length": "0" },
        accept: [201, 204],
        what: "finishing a blob upload",
        once: true,
      });
      await res.body?.cancel();
      return digest;
    }, signal);
  }

  /**
   * Like {@link uploadStream}, but the PATCH is sent by `patch` (a layer
   * worker, so the bytes never cross to this thread), given the upload
   * location and the request headers (including authorization). `patch`
   * returns the location to close the upload at and the blob's digest.
   * A 401 from `patch` (a token that expired mid-upload) renews the token
   * and starts the chunk again.
   */
  async uploadVia(
    patch: (
      location: string,
      headers: Record<string, string>,
    ) => Promise<{ location: string; digest: string }>,
    what = "a layer",
    signal?: AbortSignal,
  ): Promise<string> {
    return await this.#withRetries(`uploading ${what}`, async () => {
      const loc = await this.startUpload();
      if (this.#auth && this.#auth.expires < Date.now() && !this.#basicChallenge) await this.ping();
      const headers: Record<string, string> = {
        "user-agent": "cove",
        "content-type": "application/octet-stream",
      };
      if (this.#auth) headers.authorization = this.#auth.header;
      let r: { location: string; digest: string };
      try {
        r = await patch(loc, headers);
      } catch (e) {
        if (e instanceof CoveError && e.code === "oci.reauth") {
          this.#auth = undefined;
          throw new CoveError("oci.dropped", "the registry asked to authenticate again", {
            exit: ExitCode.Network,
          });
        }
        throw e;
      }
      const res = await this.request(
        "PUT",
        withDigest(new URL(r.location, this.base).toString(), r.digest),
        {
          headers: { "content-length": "0" },
          accept: [201, 204],
          what: "finishing a blob upload",
          once: true,
        },
      );
      await res.body?.cancel();
      return r.digest;
    }, signal);
  }

  async #withRetries<T>(what: string, fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    try {
      return await withRetry(async () => {
        try {
          return await fn();
        } catch (e) {
          if (signal?.aborted) throw signal.reason;
          throw e instanceof CoveError
            ? e
            : networkError(this.registry, e, this.insecure, this.#push);
        }
      }, {
        policy: this.#policy,
        signal,
        retryable,
        onRetry: (e, attempt, wait) =>
          this.notice(
            `${(e as Error).message} while ${what}; retrying in ${
              formatSeconds(Math.round(wait / 100) * 100)
            } (${attempt}/${this.#policy.retries})`,
          ),
      });
    } catch (e) {
      throw exhausted(e);
    }
  }
}

function withDigest(u: string, digest: string): string {
  const url = new URL(u);
  url.searchParams.set("digest", digest);
  return url.toString();
}

/** A layer whose content does not match its digest. */
export function digestMismatch(registry: string, want: string, got: string): CoveError {
  return new CoveError(
    "oci.digest_mismatch",
    `blob ${want.slice(0, 19)}… from '${registry}' does not match its digest (got ${
      got.slice(0, 19)
    }…)`,
    {
      hint:
        "the download was altered or damaged; retry, and if it persists the image on the registry is broken",
      exit: ExitCode.Network,
    },
  );
}

/**
 * Reads a response body up to `max` bytes, through the one body loop
 * ({@link streamResumable}, one attempt): a body that goes quiet for
 * `idleMs` fails with a `TimeoutError` DOMException.
 */
export async function readLimited(
  res: Response,
  max: number,
  tooBig: () => CoveError,
  idleMs = stallTimeoutMs(),
): Promise<Uint8Array<ArrayBuffer>> {
  const parts: Uint8Array[] = [];
  let opened = false;
  await streamResumable({
    stallMs: idleMs,
    policy: retryPolicy({ retries: 0 }),
    open: () => {
      if (opened) throw new Error("a response body can be read once");
      opened = true;
      return Promise.resolve({ res, from: 0 });
    },
    write: (c) => {
      parts.push(c);
      return Promise.resolve();
    },
    limit: max,
    tooLarge: tooBig,
    fail: (e, ctx) => {
      // The callers tell a stall (TimeoutError) from a dropped connection.
      throw ctx.stalled ? new DOMException("idle", "TimeoutError") : e;
    },
    retryable: () => false,
  });
  return concatBytes(parts);
}

/** `sha256:<hex>` of some bytes. */
export function sha256Digest(bytes: Uint8Array): Promise<string> {
  return Promise.resolve(`sha256:${createHash("sha256").update(bytes).digest("hex")}`);
}
