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
} as const;

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
