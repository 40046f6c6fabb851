/**
 * The key install of a macOS guest's first boot, put together from its
 * parts: the guest's address ({@link ../access/address.ts}), cove's key and
 * provision.sshKeys, the askpass session ({@link ../access/askpass.ts}),
 * the ISO keyboard agent ({@link ./keyboard.ts}) and the bounded wait and
 * password removal of {@link ./macos.ts}. The supervisor runs it beside the
 * VM; tests run the very same function against a QEMU guest's real sshd.
 * @module
 */
import { guestAddress, type StatusReader } from "../access/address.ts";
import { bundleTarget, installKeysWithPassword, verifyKeyLogin } from "../access/askpass.ts";
import { coveAuthorizedKey, coveKeyPaths, ensureCoveKey } from "../access/keys.ts";
import type { VmSpec } from "../spec/schema.ts";
import { keyboardLayout } from "../spec/fields.ts";
import type { Bundle } from "../store/bundle.ts";
import { isoKeyboardAgentScript } from "./keyboard.ts";
import { completeFirstBoot, FIRST_BOOT_WAIT_S, readInstallRecord } from "./macos.ts";

/** Options of {@link runFirstBootKeyInstall}. */
export interface FirstBootKeyInstallOptions {
  /** The supervisor's live status (for qemu's forwarded ssh port). */
  status?: StatusReader;
  /** Bound on the wait for ssh; default the install record's, else 600 s. */
  waitSeconds?: number;
  /** $COVE_HOME, where cove's key lives. */
  home?: string;
  /** For tests: the DHCP lease file and ARP reader (vz NAT). */
  leaseFile?: string;
  arp?: () => Promise<string>;
  log?: (line: string) => void;
}

/** Waits for the guest's ssh, installs the keys with the password, verifies the key, deletes the password. */
export async function runFirstBootKeyInstall(
  bundle: Bundle,
  spec: VmSpec,
  opts: FirstBootKeyInstallOptions = {},
): Promise<void> {
  await ensureCoveKey(opts.home);
  const keys = [await coveAuthorizedKey(opts.home), ...spec.provision.sshKeys];
  const rec = await readInstallRecord(bundle);
  const waitSeconds = opts.waitSeconds ?? rec?.waitSeconds ?? FIRST_BOOT_WAIT_S;
  const iso = spec.os === "macos" && keyboardLayout(spec.keyboard) === "iso";
  await completeFirstBoot(bundle, spec, {
    waitSeconds,
    keys,
    remoteScript: iso ? isoKeyboardAgentScript() : undefined,
    address: async (left) => {
      const a = await guestAddress(bundle, spec, {
        status: opts.status,
        waitSeconds: left,
        leaseFile: opts.leaseFile,
        arp: opts.arp,
      });
      return { host: a.host, port: a.port };
    },
    install: async (req) => {
      opts.log?.(
        `first boot: installing keys for '${req.user}' at ${req.target.host}:${req.target.port}`,
      );
      await installKeysWithPassword({
        ...bundleTarget(bundle, req.user, req.target),
        password: req.password,
        keys: req.keys,
        remoteScript: req.remoteScript,
        deadline: req.deadline,
      });
    },
    verify: (target) =>
      verifyKeyLogin(
        bundleTarget(bundle, spec.provision.user, target),
        coveKeyPaths(opts.home).privateKey,
      ),
  });
}
