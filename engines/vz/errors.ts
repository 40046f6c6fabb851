/**
 * Maps the failures of the libcove_vz bindings (FfiError, and VzError with
 * its NSError domain and code) onto cove's one error type, with a hint a
 * user can act on. ffi/ must not import core, so the mapping lives here.
 * @module
 */
import { CoveError, ExitCode } from "../../core/errors.ts";
import { COVE_VZ_ERROR_DOMAIN, CoveVzErr, FfiError, VzError } from "../../ffi/cove_vz.ts";

/** How to give a deno or cove binary the virtualization entitlement. */
export const SIGN_HINT =
  "sign the binary with the entitlement: 'make sign-dev' (from source; then run swift-shim/.build/deno-signed), " +
  "or codesign --force --sign - --entitlements swift-shim/cove.entitlements PATH-TO-BINARY";

/** VZErrorDomain codes (VZErrorCode). */
export const VzCode = {
  Internal: 1,
  InvalidConfiguration: 2,
  InvalidState: 3,
  InvalidStateTransition: 4,
  InvalidDiskImage: 5,
  LimitExceeded: 6,
  Network: 7,
  OutOfDiskSpace: 8,
  Cancelled: 9,
  NotSupported: 10,
  Save: 11,
  Restore: 12,
  /** macOS 27: setGuestProvisioning(_:) refused the full name, user name or password. */
  GuestProvisioningInvalidFullName: 40001,
  GuestProvisioningInvalidUsername: 40002,
  GuestProvisioningInvalidPassword: 40003,
} as const;

/** What a refused provisioning field is, by VZ error code. */
const PROVISIONING_FIELD: Record<number, { field: string; fix: string }> = {
  [VzCode.GuestProvisioningInvalidFullName]: {
    field: "full name (provision.fullName)",
    fix: "set provision.fullName to a plain name with 'cove edit'",
  },
  [VzCode.GuestProvisioningInvalidUsername]: {
    field: "user name (provision.user)",
    fix: "set provision.user to a macOS short name with 'cove edit'",
  },
  [VzCode.GuestProvisioningInvalidPassword]: {
    field: "password",
    fix: "recreate the VM with another --password-file or --password-stdin",
  },
};

/** A VZ process found on this Mac (best effort, by process name). */
export interface VzProcess {
  pid: number;
  /** What it is: "Virtualization.framework VM", "tart", "UTM", ... */
  what: string;
}

/** Process names (basename of ps's comm) of VMs and VM managers on a Mac. */
const VZ_PROCESS_NAMES: [RegExp, string][] = [
  [/^com\.apple\.Virtualization\.VirtualMachine$/, "Virtualization.framework VM"],
  [/^tart$/, "tart"],
  [/^lume$/, "lume"],
  [/^UTM$/, "UTM"],
  [/^vfkit$/, "vfkit"],
  [/^limactl$/, "limactl"],
  [/^macosvm$/, "macosvm"],
  [/^VirtualBuddy$/, "VirtualBuddy"],
];

/** Parses `ps -axo pid=,comm=` into the VZ-related processes, except `selfPid`. */
export function parseVzProcesses(ps: string, selfPid: number): VzProcess[] {
  const out: VzProcess[] = [];
  for (const line of ps.split("\n")) {
    const m = /^\s*(\d+)\s+(.+?)\s*$/.exec(line);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === selfPid) continue;
    const base = m[2].split("/").pop() ?? "";
    const hit = VZ_PROCESS_NAMES.find(([re]) => re.test(base));
    if (hit) out.push({ pid, what: hit[1] });
  }
  return out;
}

/**
 * The one line for VZErrorVirtualMachineLimitExceeded. With two or more
 * macOS VMs running it is the plain limit; with fewer, VZ is counting a VM
 * that is gone: macOS 26.x keeps a slot after a guest shuts itself down
 * (Tart#1217), and only a host reboot frees it.
 */
export function vmLimitError(
  what: string,
  known: { cove: string[]; others: VzProcess[] },
  cause?: unknown,
): CoveError {
  const names = [
    ...known.cove.map((n) => `cove '${n}'`),
    ...known.others.map((p) => `${p.what} (pid ${p.pid})`),
  ];
  const running = names.length ? names.join(", ") : "none";
  if (known.cove.length >= 2) {
    return new CoveError(
      "vz.limit",
      `${what}: macOS runs at most two macOS VMs at once (running: ${running})`,
      {
        hint: "stop another macOS VM first ('cove list' shows what runs)",
        exit: ExitCode.State,
        cause,
      },
    );
  }
  return new CoveError(
    "vz.limit_leaked",
    `${what}: Virtualization.framework refuses a macOS VM as over its limit of two, but only ${known.cove.length} of cove's run (known VMs: ${running}); macOS 26 keeps a slot after a guest shuts itself down (Tart#1217)`,
    {
      hint: known.others.length
        ? "stop the other VMs named, or reboot this Mac to free the leaked slot"
        : "reboot this Mac to free the leaked slot; stop guests from the host ('cove stop') to avoid it",
      exit: ExitCode.State,
      cause,
    },
  );
}

/** Turns anything thrown by the bindings into a CoveError; `what` names the action. */
export function vzError(err: unknown, what: string): CoveError {
  if (err instanceof CoveError) return err;
  if (err instanceof VzError) return fromVz(err, what);
  if (err instanceof FfiError) {
    const hint = {
      not_found: "build the shim with 'make shim', or set COVE_VZ_LIBRARY to libcove_vz.dylib",
      load_failed: "rebuild the shim with 'make shim'",
      abi_mismatch: "rebuild the shim with 'make shim' so it matches this cove",
      embedded_unusable: "set COVE_VZ_LIBRARY to a copy of libcove_vz.dylib",
      bad_response: "this is a bug in cove; please report it",
      vz: undefined,
    }[err.kind];
    return new CoveError(`vz.library.${err.kind}`, err.message, {
      hint,
      exit: ExitCode.Host,
      cause: err,
    });
  }
  const msg = err instanceof Error ? err.message : String(err);
  return new CoveError("vz.error", `${what}: ${msg.split("\n")[0]}`, { cause: err });
}

function fromVz(e: VzError, what: string): CoveError {
  const line = `${what}: ${e.message}`;
  if (/entitlement/i.test(e.message)) {
    return new CoveError("vz.entitlement", line, {
      hint: SIGN_HINT,
      exit: ExitCode.Host,
      cause: e,
    });
  }
  if (e.domain === COVE_VZ_ERROR_DOMAIN) {
    switch (e.code) {
      case CoveVzErr.Unsupported:
        return new CoveError("vz.unsupported", line, { exit: ExitCode.Host, cause: e });
      case CoveVzErr.NoSuchHandle:
      case CoveVzErr.State:
        return new CoveError("vz.state", line, { exit: ExitCode.State, cause: e });
      case CoveVzErr.BadRequest:
        return new CoveError("vz.config", line, { exit: ExitCode.Usage, cause: e });
      case CoveVzErr.Io:
        return new CoveError("vz.io", line, { cause: e });
      case CoveVzErr.Timeout:
        return new CoveError("vz.timeout", line, {
          hint: "the guest or Virtualization.framework did not answer; try again, or stop the VM",
          cause: e,
        });
      default:
        return new CoveError("vz.internal", line, {
          hint: "this is a bug in cove; please report it",
          cause: e,
        });
    }
  }
  if (e.domain === "VZErrorDomain") {
    const refused = PROVISIONING_FIELD[e.code];
    if (refused) {
      return new CoveError(
        "vz.provisioning",
        `${what}: macOS refused the guest's ${refused.field}: ${e.message}`,
        { hint: refused.fix, exit: ExitCode.Usage, cause: e },
      );
    }
    switch (e.code) {
      case VzCode.LimitExceeded:
        return new CoveError("vz.limit", `${what}: macOS runs at most two macOS VMs at once`, {
          hint: "stop another macOS VM first ('cove list' shows what runs)",
          exit: ExitCode.State,
          cause: e,
        });
      case VzCode.InvalidConfiguration:
        return new CoveError("vz.config", line, {
          hint: "check cove.yaml against 'cove doctor'",
          exit: ExitCode.Usage,
          cause: e,
        });
      case VzCode.InvalidState:
      case VzCode.InvalidStateTransition:
        return new CoveError("vz.state", line, { exit: ExitCode.State, cause: e });
      case VzCode.InvalidDiskImage:
        return new CoveError("vz.disk", line, {
          hint: "vz needs a raw disk image (or ASIF on macOS 26)",
          exit: ExitCode.Usage,
          cause: e,
        });
      case VzCode.OutOfDiskSpace:
        return new CoveError("io.no_space", line, { hint: "free some space and retry", cause: e });
      case VzCode.Cancelled:
        return new CoveError("vz.cancelled", line, { exit: ExitCode.Interrupted, cause: e });
      case VzCode.NotSupported:
        return new CoveError("vz.unsupported", line, { exit: ExitCode.Host, cause: e });
    }
  }
  return new CoveError("vz.error", line, { cause: e });
}
