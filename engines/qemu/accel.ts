/**
 * Chooses QEMU's accelerator: kvm on Linux, hvf on macOS, tcg (software)
 * otherwise or when the guest's architecture differs from the host's. The
 * spec's `qemu.accel` and the environment variable `COVE_QEMU_ACCEL`
 * (which wins) override the choice.
 *
 * Some hosts (nested virtualization) open `/dev/kvm` fine but hang or abort
 * as soon as a guest leaves real mode. So before choosing kvm, cove boots a
 * 64 KiB firmware of its own under `-accel kvm -cpu host`: it switches to
 * 64-bit long mode and writes to QEMU's isa-debug-exit port, which makes
 * QEMU exit with status 85. Anything else within the time limit means KVM
 * is not usable and cove falls back to tcg. The answer is cached per host
 * boot (keyed by the kernel's boot_id) in the temp directory.
 * @module
 */
import { join } from "node:path";
import { CoveError, ExitCode } from "../../core/errors.ts";
import type { HostInfo } from "../engine.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import type { Accel } from "./argv.ts";
import { uid } from "./host.ts";
import { spawnReaped } from "./reaper.ts";

/** The result of probing KVM. */
export interface KvmProbe {
  usable: boolean;
  /** Why not, as one line. */
  reason?: string;
  /** True when this answer came from the per-boot cache. */
  cached?: boolean;
}

/** The chosen accelerator and why. */
export interface AccelChoice {
  accel: Accel;
  /** Where the choice came from, e.g. "auto (kvm probe failed: ...)". */
  why: string;
}

// x86 machine code of the probe firmware (assembled once from a 40-line GNU as
// source: real mode -> identity-mapped 2 MiB page -> long mode -> `out 0xf4`).
const X86_PROBE_CODE =
  "fa31c08ed88ec0bf0010b9000c6631c0fc66f3ab66c70600100320000066c70600200330000066c7" +
  "060030830000002e660f011690000f20e06683c8200f22e066b8001000000f22d866b9800000c00f" +
  "32660d000100000f300f20c0660d010000800f22c066ea6d000f000800b02ae6f4f4ebfd8db40000" +
  "0000000000000000ffff0000009aaf00ffff00000092cf00170078000f00";
/** Reset vector at 0xFFFF0: `ljmp $0xf000, $0`. */
const X86_RESET = "ea000000f0";
/** arm64: `mov w0, #0x84000008` (PSCI SYSTEM_OFF); `hvc #0`; `b .`. */
const ARM64_PROBE_CODE = "00018052" + "0080b072" + "020000d4" + "00000014";

function hex(s: string): Uint8Array {
  return Uint8Array.from(s.match(/../g)!, (b) => parseInt(b, 16));
}

/** The probe firmware image for a host architecture. */
export function probeFirmware(arch: HostInfo["arch"]): Uint8Array {
  if (arch === "arm64") return hex(ARM64_PROBE_CODE);
  const img = new Uint8Array(0x10000);
  img.set(hex(X86_PROBE_CODE), 0);
  img.set(hex(X86_RESET), 0xfff0);
  return img;
}

/** The QEMU arguments of the probe (after the binary). */
export function probeArgs(arch: HostInfo["arch"], firmware: string): string[] {
  const common = [
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "none",
    "-monitor",
    "none",
  ];
  if (arch === "arm64") {
    return [
      "-machine",
      "virt,gic-version=host",
      "-accel",
      "kvm",
      "-cpu",
      "host",
      ...common,
      "-bios",
      firmware,
    ];
  }
  return [
    "-machine",
    "q35",
    "-accel",
    "kvm",
    "-cpu",
    "host",
    ...common,
    "-bios",
    firmware,
    "-device",
    "isa-debug-exit,iobase=0xf4,iosize=0x04",
  ];
}

function runtimeTmp(): string {
  return join(Deno.env.get("TMPDIR") ?? "/tmp", `cove-${uid()}`);
}

/**
 * Makes `dir` if needed; true only when it is a real directory of ours that
 * no other user can reach (it lives in a shared /tmp, so it may be planted).
 */
function privateDir(dir: string): boolean {
  try {
    Deno.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) return false;
  }
  try {
    const st = Deno.lstatSync(dir);
    const me = Deno.uid();
    return st.isDirectory && !st.isSymlink && (me === null || st.uid === me) &&
      (st.mode === null || (st.mode & 0o077) === 0);
  } catch {
    return false;
  }
}

function bootId(): string {
  try {
    return Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
  } catch {
    return "unknown";
  }
}

function probeTimeoutMs(): number {
  const v = Number(Deno.env.get("COVE_KVM_PROBE_TIMEOUT_MS"));
  return Number.isFinite(v) && v > 0 ? v : 5000;
}

/** Can this process open /dev/kvm read-write? */
export function kvmDeviceUsable(): KvmProbe {
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
    return { usable: true };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      return { usable: false, reason: "/dev/kvm does not exist" };
    }
    return { usable: false, reason: "/dev/kvm cannot be opened (add yourself to the kvm group)" };
  }
}

/**
 * Boots the probe firmware under KVM with a time limit (cached per boot).
 * Never throws.
 */
export async function probeKvm(
  binary: string,
  arch: HostInfo["arch"],
  opts: { fresh?: boolean } = {},
): Promise<KvmProbe> {
  const dev = kvmDeviceUsable();
  if (!dev.usable) return dev;
  let dir = runtimeTmp();
  const key = `${bootId()} ${binary}`;
  const cacheFile = join(dir, "kvm-probe.json");
  // An unsafe shared directory (planted symlink, another owner): no cache, a fresh private dir.
  const safe = privateDir(dir);
  if (!safe) {
    try {
      dir = Deno.makeTempDirSync({ prefix: "cove-kvm-probe-" });
    } catch {
      return { usable: false, reason: `${dir} is not a private directory of this user` };
    }
    try {
      return await runProbe(binary, arch, dir);
    } finally {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch { /* best effort */ }
    }
  }
  if (!opts.fresh) {
    try {
      const c = JSON.parse(Deno.readTextFileSync(cacheFile)) as KvmProbe & { key: string };
      if (c.key === key) return { usable: c.usable, reason: c.reason, cached: true };
    } catch { /* no cache yet */ }
  }
  const result = await runProbe(binary, arch, dir);
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.kvm-probe-${crypto.randomUUID()}`);
    Deno.writeTextFileSync(tmp, JSON.stringify({ key, ...result }));
    Deno.renameSync(tmp, cacheFile);
  } catch { /* caching is best effort */ }
  return result;
}

async function runProbe(binary: string, arch: HostInfo["arch"], dir: string): Promise<KvmProbe> {
  let fw: string | undefined;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fw = join(dir, `kvm-probe-${crypto.randomUUID()}.bin`);
    Deno.writeFileSync(fw, probeFirmware(arch));
    // Reaped, so that a supervisor killed during the probe leaves no probe QEMU behind.
    const { child, reaper: r } = spawnReaped(binary, probeArgs(arch, fw));
    const releaseWatchdog = () => {
      // Closing the watchdog's stdin makes it SIGKILL QEMU.
      if (r.holdStdin) child.stdin.close().catch(() => {});
    };
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (r.directPid) {
        try {
          child.kill("SIGKILL");
        } catch { /* already gone */ }
      } else releaseWatchdog();
    }, probeTimeoutMs());
    const out = await child.output();
    clearTimeout(timer);
    if (!timedOut) releaseWatchdog();
    const expected = arch === "arm64" ? 0 : 85;
    if (timedOut) {
      return {
        usable: false,
        reason: `a test guest hung under KVM for ${
          probeTimeoutMs() / 1000
        }s (nested virtualization?)`,
      };
    }
    if (out.code === expected) return { usable: true };
    const err = new TextDecoder().decode(out.stderr).split("\n").filter((l) => l.trim()).filter((
      l,
    ) => !/warning/i.test(l));
    const line = (err[0] ?? `exit status ${out.code}`).replace(/^qemu-system-[a-z0-9_]+: /, "");
    return { usable: false, reason: `a test guest failed under KVM: ${line}` };
  } catch (e) {
    return {
      usable: false,
      reason: `the KVM probe could not run: ${e instanceof Error ? e.message : e}`,
    };
  } finally {
    if (fw) await Deno.remove(fw).catch(() => {});
  }
}

/** The accelerator asked for: COVE_QEMU_ACCEL, else the spec's qemu.accel. */
export function requestedAccel(spec: Pick<VmSpec, "qemu">): "auto" | Accel {
  const env = Deno.env.get("COVE_QEMU_ACCEL");
  if (env) {
    if (env === "auto" || env === "kvm" || env === "hvf" || env === "tcg") return env;
    throw new CoveError("qemu.bad_accel", `COVE_QEMU_ACCEL: '${env}' is not an accelerator`, {
      hint: "use auto, kvm, hvf or tcg",
      exit: ExitCode.Usage,
    });
  }
  return spec.qemu.accel;
}

/** Chooses the accelerator for a spec on this host. */
export async function chooseAccel(
  spec: Pick<VmSpec, "qemu" | "arch">,
  host: HostInfo,
  binary: string,
): Promise<AccelChoice> {
  const req = requestedAccel(spec);
  const source = Deno.env.get("COVE_QEMU_ACCEL") ? "COVE_QEMU_ACCEL" : "qemu.accel";
  if (req === "tcg") return { accel: "tcg", why: `${source}=tcg` };
  if (req === "kvm") {
    if (host.os !== "linux") {
      throw new CoveError("qemu.bad_accel", `${source}: kvm needs a Linux host`, {
        hint: "use auto",
        exit: ExitCode.Host,
      });
    }
    const dev = kvmDeviceUsable();
    if (!dev.usable) {
      throw new CoveError("qemu.no_kvm", `${source}=kvm but ${dev.reason}`, {
        hint: "use auto or tcg",
        exit: ExitCode.Host,
      });
    }
    return { accel: "kvm", why: `${source}=kvm` };
  }
  if (req === "hvf") {
    if (host.os !== "darwin") {
      throw new CoveError("qemu.bad_accel", `${source}: hvf needs a macOS host`, {
        hint: "use auto",
        exit: ExitCode.Host,
      });
    }
    return { accel: "hvf", why: `${source}=hvf` };
  }
  if (spec.arch !== host.arch) {
    return { accel: "tcg", why: `auto: ${spec.arch} guest on ${host.arch} host` };
  }
  if (host.os === "darwin") return { accel: "hvf", why: "auto" };
  if (host.os === "linux") {
    const p = await probeKvm(binary, host.arch);
    if (p.usable) return { accel: "kvm", why: "auto (kvm probe passed)" };
    return { accel: "tcg", why: `auto: kvm not usable: ${p.reason}` };
  }
  return { accel: "tcg", why: "auto" };
}
