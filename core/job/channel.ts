/**
 * How a job reaches inside its VM: the {@link GuestChannel} interface
 * (wait until the guest answers, run a command with an environment and
 * live output, copy a path out), and its ssh implementation over the
 * system `ssh` with cove's key (core/access/ssh.ts). A guest-agent channel
 * (exec and copy over qemu-guest-agent) can implement the same interface;
 * {@link openChannel} is the one place that chooses.
 * @module
 */
import { basename, dirname } from "node:path";
import { CoveError, ExitCode } from "../errors.ts";
import type { VmSpec } from "../spec/schema.ts";
import type { Bundle } from "../store/bundle.ts";
import { guestAddress } from "../access/address.ts";
import { runSsh, spawnSshProcess, sshArgs } from "../access/ssh.ts";
import { readLiveStatus } from "../access/status.ts";

/** What a command run in the guest gets. */
export interface ExecOptions {
  /** Environment variables set for the command. */
  env?: Record<string, string>;
  /** Bytes fed to the command's stdin (a script); none: stdin is empty. */
  stdin?: Uint8Array;
  /** Each chunk of the command's stdout, as it comes. */
  onStdout?: (b: Uint8Array) => void;
  /** Each chunk of the command's stderr, as it comes. */
  onStderr?: (b: Uint8Array) => void;
  /** Kills the command (the channel's end of it). */
  signal?: AbortSignal;
}

/** What a command run in the guest returned. */
export interface ExecResult {
  /** The command's exit status. */
  code: number;
  /** True when the channel itself failed (ssh's 255 with a VM that is gone, or a kill). */
  channelFailed: boolean;
}

/** The outcome of copying one path out of the guest. */
export type CopyOutResult =
  | { status: "copied"; files: number }
  | { status: "missing" };

/** A way into a running job VM. */
export interface GuestChannel {
  /** "ssh" now; "agent" once the guest agent channel exists. */
  readonly kind: string;
  /** Waits until the guest runs commands (bounded by `timeoutMs`). */
  waitReady(timeoutMs: number): Promise<void>;
  /** Runs `command` (argv, quoted one by one for the guest's shell). */
  exec(command: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Copies `guestPath` (a file or a directory) into `hostDir`. */
  copyOut(guestPath: string, hostDir: string): Promise<CopyOutResult>;
}

/** Options of {@link openChannel}. */
export interface ChannelOptions {
  /** Where cove's key lives; default $COVE_HOME. */
  home?: string;
  /** The ssh binary; default `ssh`. */
  ssh?: string;
}

/** The channel for a job VM: ssh (the guest agent channel plugs in here). */
export function openChannel(bundle: Bundle, spec: VmSpec, opts: ChannelOptions = {}): GuestChannel {
  return new SshChannel(bundle, spec, opts);
}

/** Reads a stream to its end, handing each chunk to `fn`. */
async function pump(s: ReadableStream<Uint8Array>, fn?: (b: Uint8Array) => void): Promise<void> {
  for await (const chunk of s) fn?.(chunk);
}

/** {@link GuestChannel} over the system ssh client. */
export class SshChannel implements GuestChannel {
  readonly kind = "ssh";
  constructor(
    readonly bundle: Bundle,
    readonly spec: VmSpec,
    readonly opts: ChannelOptions = {},
  ) {}

  async waitReady(timeoutMs: number): Promise<void> {
    const code = await runSsh(this.bundle, this.spec, {
      command: ["true"],
      tty: "never",
      waitSeconds: Math.max(1, Math.ceil(timeoutMs / 1000)),
      status: readLiveStatus,
      home: this.opts.home,
      ssh: this.opts.ssh,
    });
    if (code !== 0) {
      throw new CoveError(
        "vm.ssh_timeout",
        `VM '${this.bundle.name}' answered ssh with status ${code}`,
        {
          exit: ExitCode.State,
        },
      );
    }
  }

  async #args(command: string[]): Promise<string[]> {
    const addr = await guestAddress(this.bundle, this.spec, { status: readLiveStatus });
    return await sshArgs(this.bundle, this.spec, addr, {
      command,
      tty: "never",
      home: this.opts.home,
    });
  }

  #spawn(args: string[], stdin: boolean): Deno.ChildProcess {
    return spawnSshProcess(this.opts.ssh ?? "ssh", {
      args,
      stdin: stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    });
  }

  async exec(command: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const env = Object.entries(opts.env ?? {});
    const argv = env.length ? ["env", ...env.map(([k, v]) => `${k}=${v}`), ...command] : command;
    const child = this.#spawn(await this.#args(argv), opts.stdin !== undefined);
    let killed = false;
    const kill = () => {
      killed = true;
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
    };
    if (opts.signal?.aborted) kill();
    opts.signal?.addEventListener("abort", kill, { once: true });
    const feeding = opts.stdin !== undefined
      ? (async () => {
        const w = child.stdin.getWriter();
        try {
          await w.write(opts.stdin!);
          await w.close();
        } catch { /* the command ended first */ }
      })()
      : Promise.resolve();
    const [status] = await Promise.all([
      child.status,
      pump(child.stdout, opts.onStdout),
      pump(child.stderr, opts.onStderr),
      feeding,
    ]);
    opts.signal?.removeEventListener("abort", kill);
    return { code: status.code, channelFailed: killed || status.code === 255 };
  }

  async copyOut(guestPath: string, hostDir: string): Promise<CopyOutResult> {
    const probe = await this.exec(["test", "-e", guestPath]);
    if (probe.code !== 0 && !probe.channelFailed) return { status: "missing" };
    if (probe.channelFailed) {
      throw new CoveError(
        "job.lost",
        `cannot reach VM '${this.bundle.name}' to copy ${guestPath}`,
        {
          exit: ExitCode.JobLost,
        },
      );
    }
    await Deno.mkdir(hostDir, { recursive: true });
    const parent = dirname(guestPath) || "/";
    const child = this.#spawn(
      await this.#args(["tar", "-C", parent, "-cf", "-", "--", basename(guestPath)]),
      false,
    );
    let tar: Deno.ChildProcess;
    try {
      tar = new Deno.Command("tar", {
        args: ["-C", hostDir, "-xvf", "-"],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      await child.stdout.cancel().catch(() => {});
      throw new CoveError("job.artifacts", "cannot run tar to unpack the artifacts", {
        hint: "install tar",
        exit: ExitCode.JobArtifacts,
        cause: e,
      });
    }
    const [sshStatus, tarOut, , sshErr] = await Promise.all([
      child.status,
      tar.output(),
      child.stdout.pipeTo(tar.stdin).catch(() => {}),
      new Response(child.stderr).text(),
    ]);
    const tarErr = new TextDecoder().decode(tarOut.stderr);
    if (!tarOut.success) {
      const full = /No space left|ENOSPC|Disk quota/i.test(tarErr);
      throw new CoveError(
        "job.artifacts",
        full
          ? `the disk is full: copying ${guestPath} into ${hostDir} stopped`
          : `copying ${guestPath} into ${hostDir} failed: ${tarErr.trim().split("\n").pop() ?? ""}`,
        {
          hint: full
            ? "free some space on the host; the job's own exit code is in the record"
            : undefined,
          exit: ExitCode.JobArtifacts,
        },
      );
    }
    if (!sshStatus.success) {
      throw new CoveError(
        "job.artifacts",
        `reading ${guestPath} in the guest failed: ${sshErr.trim().split("\n").pop() ?? ""}`,
        { exit: ExitCode.JobArtifacts },
      );
    }
    const files = new TextDecoder().decode(tarOut.stdout).split("\n").filter((l) =>
      l && !l.endsWith("/")
    );
    return { status: "copied", files: files.length };
  }
}
