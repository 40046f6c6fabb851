/**
 * Registry commands: pull, push, login, logout. Parsing and printing only;
 * the work is in the library (mod.ts), loaded when a command runs. (`cove
 * create --from oci://REF` and `cove clone REF NEW` live in vm.ts.)
 * @module
 */
import type { Command } from "@commander-js/extra-typings";
import { debugEnabled, FlagError, FORMAT_HELP, log, out, outJson, parseFormat } from "../output.ts";

/** Reads a secret from stdin: all of it when piped, one line without echo on a terminal. */
async function readSecret(promptText: string): Promise<string> {
  if (!Deno.stdin.isTerminal()) {
    const text = new TextDecoder().decode(await new Response(Deno.stdin.readable).arrayBuffer());
    return text.replace(/\r?\n$/, "");
  }
  Deno.stderr.writeSync(new TextEncoder().encode(promptText));
  Deno.stdin.setRaw(true);
  const chars: number[] = [];
  const buf = new Uint8Array(1);
  try {
    for (;;) {
      const n = await Deno.stdin.read(buf);
      if (n === null || buf[0] === 13 || buf[0] === 10) break;
      if (buf[0] === 3) {
        const { CoveError, ExitCode } = await import("../../mod.ts");
        throw new CoveError("interrupted", "cancelled", { exit: ExitCode.Interrupted });
      }
      if (buf[0] === 127 || buf[0] === 8) chars.pop();
      else chars.push(buf[0]);
    }
  } finally {
    Deno.stdin.setRaw(false);
    Deno.stderr.writeSync(new TextEncoder().encode("\n"));
  }
  return new TextDecoder().decode(new Uint8Array(chars));
}

/** Reads one line from the terminal, with the prompt on stderr (stdout is for results). */
function readLine(promptText: string): string {
  Deno.stderr.writeSync(new TextEncoder().encode(promptText));
  const buf = new Uint8Array(1);
  const bytes: number[] = [];
  for (;;) {
    const n = Deno.stdin.readSync(buf);
    if (n === null || n === 0 || buf[0] === 10) break;
    if (buf[0] !== 13) bytes.push(buf[0]);
  }
  return new TextDecoder().decode(new Uint8Array(bytes)).trim();
}

/** Registers the registry commands. */
export function register(program: Command): void {
  program.command("pull")
    .description("download a VM image (Tart's OCI format) into the cache")
    .argument("<ref>", "image reference, e.g. ghcr.io/cirruslabs/macos-sequoia-base:latest")
    .option("--insecure", "allow plain http to the registry")
    .option("--concurrency <n>", "layers downloaded at once (1 to 64)", "4")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (ref, opts) => {
      const { Store, pullImage, formatSize, parseFlag } = await import("../../mod.ts");
      const { pct, progressLine } = await import("../progress.ts");
      const concurrency = parseFlag("--concurrency", opts.concurrency);
      const store = new Store();
      await store.ensure();
      const bar = progressLine();
      let img;
      try {
        img = await pullImage(ref, {
          home: store.home,
          insecure: opts.insecure,
          concurrency,
          log: bar.log,
          // Retry notices: one line per attempt at --debug only; the final error names the cause.
          quietRetries: !debugEnabled(),
          onProgress: (p) =>
            bar.update(
              `pulling ${ref}  ${pct(p.done, p.total)}  ${formatSize(p.done)}/${
                formatSize(p.total)
              }  ${p.layersDone}/${p.layers} layers${
                p.stalled ? `  waiting: no data from the registry (${p.stalled} stalled)` : ""
              }`,
            ),
        });
      } finally {
        bar.end();
      }
      const name = `${img.ref.registry}/${img.ref.repository}@${img.digest}`;
      if (opts.format === "json") {
        outJson({
          reference: ref,
          digest: img.digest,
          os: img.tart.os,
          arch: img.tart.arch,
          diskSize: img.image.diskSize,
          cached: img.cached,
          fetched: img.fetched,
          resumedLayers: img.resumedLayers,
          reusedLayers: img.reusedLayers,
          path: img.dir,
        });
      } else {
        out(img.cached ? `${name} is up to date` : `pulled ${name}`);
      }
    });

  program.command("push")
    .description("upload a VM, running or not, to registry references (Tart's OCI format)")
    .argument("<name>", "the VM to push")
    .argument("<refs...>", "one or more references, e.g. ghcr.io/me/dev:1")
    .option("--chunk-size <size>", "disk bytes per layer", "512MiB")
    .option(
      "--upload-chunk-size <size>",
      "upload each layer in PATCH requests of this size (default: one streamed request)",
    )
    .option("--insecure", "allow plain http to the registry")
    .option("--concurrency <n>", "layers compressed and uploaded at once (1 to 64)", "4")
    .option("--format <format>", FORMAT_HELP, parseFormat, "text" as const)
    .action(async (name, refs, opts) => {
      const { Store, copyNote, kernelBootNote, pushVm, formatSize, parseFlag } = await import(
        "../../mod.ts"
      );
      const { pct, progressLine } = await import("../progress.ts");
      const concurrency = parseFlag("--concurrency", opts.concurrency);
      const store = new Store();
      const bar = progressLine();
      let res;
      try {
        res = await pushVm(store, name, refs, {
          home: store.home,
          chunkSize: parseFlag("--chunk-size", opts.chunkSize),
          uploadChunkSize: opts.uploadChunkSize
            ? parseFlag("--upload-chunk-size", opts.uploadChunkSize)
            : 0,
          insecure: opts.insecure,
          concurrency,
          log: bar.log,
          // Retry notices: one line per attempt at --debug only; the final error names the cause.
          quietRetries: !debugEnabled(),
          onProgress: (p) =>
            bar.update(
              `pushing ${name}  ${pct(p.done, p.total)}  ${
                formatSize(p.uploaded)
              } uploaded  ${p.skipped} layers already there`,
            ),
        });
      } finally {
        bar.end();
      }
      if (res.frozen !== undefined) log(copyNote(name, res.frozen));
      if (res.kernelBoot) log(kernelBootNote(name));
      if (opts.format === "json") outJson(res);
      else for (const p of res.pushed) out(`pushed ${p}`);
    });

  program.command("login")
    .description("store credentials for a registry (in $COVE_HOME/auth.json, mode 0600)")
    .argument("<host>", "registry host, e.g. ghcr.io")
    .option("-u, --username <user>", "user name")
    .option("--password-stdin", "read the password or token from stdin")
    .option("--insecure", "allow plain http to the registry")
    .action(async (host, opts) => {
      const { Store, loginRegistry } = await import("../../mod.ts");
      const store = new Store();
      let username = opts.username;
      if (!username) {
        if (!Deno.stdin.isTerminal() || opts.passwordStdin) {
          throw new FlagError("oci.login", "--username is required");
        }
        username = readLine("Username: ");
      }
      if (!opts.passwordStdin && !Deno.stdin.isTerminal()) {
        throw new FlagError(
          "oci.login",
          "no terminal to ask for the password",
          "pipe it with --password-stdin",
        );
      }
      const password = await readSecret("Password: ");
      const registry = await loginRegistry(host, username, password, {
        home: store.home,
        insecure: opts.insecure,
      });
      out(`logged in to ${registry}`);
    });

  program.command("logout")
    .description("forget cove's stored credentials for a registry")
    .argument("<host>", "registry host")
    .action(async (host) => {
      const { Store, logoutRegistry, normalizeRegistry } = await import("../../mod.ts");
      const removed = await logoutRegistry(host, new Store().home);
      const registry = normalizeRegistry(host);
      out(removed ? `logged out of ${registry}` : `not logged in to ${registry}`);
    });
}
