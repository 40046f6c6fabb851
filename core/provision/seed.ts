/**
 * The cloud-init NoCloud seed of a Linux VM: `cidata.iso` in the bundle, an
 * ISO 9660 volume labelled `cidata` ({@link ./iso9660.ts}) holding
 *
 * - `user-data`: the hostname; one user (`provision.user`) with passwordless
 *   sudo and the spec's SSH keys, or cove's own key when it lists none; the
 *   spec's shares mounted at their `mountPoint` (virtiofs, falling back to
 *   9p, by tag; also written to /etc/fstab so they come back at boot); and
 *   `provision.commands`, run once;
 * - `meta-data`: `instance-id` and `local-hostname`. The instance id is a
 *   hash of everything in the seed, so a changed spec is a new instance to
 *   cloud-init and it applies the change at the next boot;
 * - `network-config` (v2): DHCP on each NIC, matched by its MAC address; a NIC on a
 *   cove network gets the static address the network handed out instead, and a
 *   NIC the engine adds for forwards (`fwdN`) its static address with no route.
 *
 * The seed is attached as the last disk: read-only, virtio, media `disk`.
 * Not a cdrom: a cdrom is an AHCI/IDE CD on qemu x86 (q35) or USB mass
 * storage, and Debian's cloud kernel (linux-image-cloud-*, used by its
 * genericcloud images) has neither AHCI nor USB storage, so the seed would
 * be invisible there; every cloud kernel has virtio-blk, and NoCloud finds
 * the seed by its `cidata` label on any block device. It is written
 * at create time and rewritten by {@link ensureSeed} before each start when
 * the spec changed (the hash is kept in `cidata.json`).
 *
 * @example
 * ```ts
 * const spec2 = attachSeedDisk(spec);
 * await ensureSeed(bundle.dir, spec2);
 * ```
 * @module
 */
import { basename, join } from "node:path";
import { coveAuthorizedKey } from "../access/keys.ts";
import { CoveError, ExitCode } from "../errors.ts";
import type { DiskSpec, VmSpec } from "../spec/schema.ts";
import { BUNDLE_FILES } from "../store/bundle.ts";
import { writeFileAtomic } from "../store/fsutil.ts";
import { buildIso9660 } from "./iso9660.ts";

/** The seed's file name in the bundle. */
export const SEED_DISK: string = BUNDLE_FILES.seedDisk;
/** The sidecar recording what the seed was made from. */
export const SEED_STATE: string = BUNDLE_FILES.seedState;
/**
 * cloud-init reads YAML 1.1 (PyYAML): unquoted `52:54:00:12:34:56` is a
 * base-60 integer there and `on`/`yes` are booleans. Writing in 1.1 mode
 * quotes every such string.
 */
const YAML_OPTS = { version: "1.1", lineWidth: 0 } as const;

/** Where the share-mounting script lands in the guest. */
export const MOUNT_SCRIPT = "/usr/local/sbin/cove-mounts";

/** The three documents of a seed. */
export interface SeedFiles {
  userData: string;
  metaData: string;
  /** Absent when no NIC has a MAC (cloud-init then uses DHCP on the first NIC). */
  networkConfig?: string;
  instanceId: string;
}

/**
 * Installs (when missing) and starts qemu-guest-agent, for the guest agent
 * channel (`agent: true`): catalog images do not ship it; images that do
 * are left as they are, without touching the network.
 */
export const AGENT_INSTALL = "command -v qemu-ga >/dev/null 2>&1 || " +
  "{ (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-guest-agent) || " +
  "dnf install -y qemu-guest-agent || zypper --non-interactive install qemu-guest-agent || " +
  "apk add qemu-guest-agent; } >/var/log/cove-agent-install.log 2>&1; " +
  "systemctl enable --now qemu-guest-agent >/dev/null 2>&1 || systemctl start qemu-guest-agent || true";

/** Options of {@link renderSeed}. */
export interface SeedOptions {
  /** Public keys to use when the spec lists none; default cove's own key. */
  defaultKeys?: string[];
  /**
   * Per NIC (same order as spec.networks): a static address, ADDR/PREFIX,
   * instead of DHCP: what a cove network (`mode: network`) hands out.
   */
  addresses?: (string | undefined)[];
  /**
   * NICs the engine adds for the host to reach the guest (see the engine's
   * `GuestAccess.forwardNics`): each gets its static address, and no route.
   */
  forwardNics?: { mac: string; address: string }[];
}

/** True when the spec attaches a cove seed. */
export function hasSeedDisk(spec: Pick<VmSpec, "disks">): boolean {
  return spec.disks.some((d) => d.path === SEED_DISK);
}

/** Returns the spec with the seed attached as a read-only virtio disk (once). */
export function attachSeedDisk<T extends Pick<VmSpec, "disks">>(spec: T): T {
  if (hasSeedDisk(spec)) return spec;
  const seed: DiskSpec = {
    path: SEED_DISK,
    format: "raw",
    media: "disk",
    readOnly: true,
    cache: "auto",
    sync: "full",
    bus: "virtio",
  };
  return { ...spec, disks: [...spec.disks, seed] };
}

/** The share tag engines use: the given tag, or the directory's name. */
export function shareTag(share: { path: string; tag?: string }): string {
  return share.tag ??
    basename(share.path.replace(/\/+$/, "")).replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 36);
}

/** Builds the seed documents for a spec (pure apart from reading cove's key). */
export async function renderSeed(spec: VmSpec, opts: SeedOptions = {}): Promise<SeedFiles> {
  // Loaded when a seed is rendered (ensureSeed: only for a VM with a seed disk), not with this module.
  const [{ stringify }, { createHash }] = await Promise.all([
    import("yaml"),
    import("node:crypto"),
  ]);
  const p = spec.provision;
  const hostname = p.hostname ?? "cove";
  const keys = p.sshKeys.length ? p.sshKeys : opts.defaultKeys ?? [await coveAuthorizedKey()];
  const mounts = spec.shares
    .map((s, i) => ({ s, i }))
    .filter(({ s }) => s.mountPoint)
    .map(({ s, i }) => {
      const mp = s.mountPoint!;
      if (!/^\/[^\s'"\\]*$/.test(mp)) {
        throw new CoveError(
          "spec.invalid",
          `shares[${i}].mountPoint: '${mp}' must be an absolute path without spaces or quotes`,
          { exit: ExitCode.Usage },
        );
      }
      return { tag: shareTag(s), mountPoint: mp, readOnly: s.readOnly };
    });

  const cloudConfig: Record<string, unknown> = {
    hostname,
    preserve_hostname: false,
    manage_etc_hosts: true,
    users: [{
      name: p.user,
      gecos: "cove",
      shell: "/bin/bash",
      sudo: "ALL=(ALL) NOPASSWD:ALL",
      lock_passwd: true,
      ssh_authorized_keys: keys,
    }],
    ssh_pwauth: false,
    disable_root: true,
  };
  const writeFiles: Record<string, unknown>[] = [];
  const runcmd: unknown[] = [];
  if (spec.agent) runcmd.push(["sh", "-c", AGENT_INSTALL]);
  if (p.sshPort !== 22) {
    writeFiles.push({
      path: "/etc/ssh/sshd_config.d/10-cove-port.conf",
      permissions: "0644",
      content: `Port ${p.sshPort}\n`,
    });
    runcmd.push(["sh", "-c", "systemctl restart ssh || systemctl restart sshd || true"]);
  }
  if (mounts.length) {
    writeFiles.push({ path: MOUNT_SCRIPT, permissions: "0755", content: mountScript(mounts) });
    runcmd.push([MOUNT_SCRIPT]);
  }
  for (const c of p.commands) runcmd.push(["sh", "-c", c]);
  if (writeFiles.length) cloudConfig.write_files = writeFiles;
  if (runcmd.length) cloudConfig.runcmd = runcmd;
  const userData =
    "#cloud-config\n# written by cove from cove.yaml; edit the spec, not this file\n" +
    stringify(cloudConfig, YAML_OPTS);

  const nics = spec.networks.map((n, k) => ({ n, address: opts.addresses?.[k] }))
    .filter(({ n }) => n.mode !== "none" && n.mac);
  const ethernets: Record<string, unknown> = Object.fromEntries(
    nics.map(({ n, address }, i) => [`eth${i}`, {
      match: { macaddress: n.mac!.toLowerCase() },
      "set-name": `eth${i}`,
      ...(address ? { dhcp4: false, addresses: [address] } : { dhcp4: true }),
      dhcp6: false,
    }]),
  );
  (opts.forwardNics ?? []).forEach((f, i) => {
    ethernets[`fwd${i}`] = {
      match: { macaddress: f.mac.toLowerCase() },
      "set-name": `fwd${i}`,
      dhcp4: false,
      dhcp6: false,
      addresses: [f.address],
    };
  });
  const networkConfig = Object.keys(ethernets).length
    ? stringify({ version: 2, ethernets }, YAML_OPTS)
    : undefined;

  const hash = createHash("sha256").update(userData).update("\0").update(networkConfig ?? "")
    .update("\0")
    .update(hostname).digest("hex");
  const instanceId = `cove-${hash.slice(0, 16)}`;
  const metaData = stringify({ "instance-id": instanceId, "local-hostname": hostname }, YAML_OPTS);
  return { userData, metaData, networkConfig, instanceId };
}

function mountScript(mounts: { tag: string; mountPoint: string; readOnly: boolean }[]): string {
  const lines = [
    "#!/bin/sh",
    "# Written by cove: mounts the VM's shared directories and records them in",
    "# /etc/fstab. virtiofs first (vz, qemu with virtiofsd), then 9p (qemu).",
    "status=0",
    "share() {",
    "  tag=$1; mp=$2; mode=$3",
    '  mkdir -p "$mp"',
    '  if mountpoint -q "$mp"; then return 0; fi',
    '  if mount -t virtiofs -o "$mode" "$tag" "$mp" 2>/dev/null; then',
    '    line="$tag $mp virtiofs $mode,nofail 0 0"',
    '  elif mount -t 9p -o "trans=virtio,version=9p2000.L,msize=262144,$mode" "$tag" "$mp"; then',
    '    line="$tag $mp 9p trans=virtio,version=9p2000.L,msize=262144,$mode,nofail 0 0"',
    "  else",
    '    echo "cove: cannot mount share $tag at $mp" >&2; status=1; return 0',
    "  fi",
    '  grep -v "^$tag $mp " /etc/fstab > /etc/fstab.cove 2>/dev/null || true',
    '  echo "$line" >> /etc/fstab.cove && cat /etc/fstab.cove > /etc/fstab && rm -f /etc/fstab.cove',
    "}",
    ...mounts.map((m) => `share '${m.tag}' '${m.mountPoint}' ${m.readOnly ? "ro" : "rw"}`),
    "exit $status",
    "",
  ];
  return lines.join("\n");
}

/** Writes the seed ISO bytes for rendered documents. */
export function seedIso(files: SeedFiles, date?: Date): Uint8Array {
  const enc = new TextEncoder();
  const list = [
    { name: "user-data", data: enc.encode(files.userData) },
    { name: "meta-data", data: enc.encode(files.metaData) },
  ];
  if (files.networkConfig) {
    list.push({ name: "network-config", data: enc.encode(files.networkConfig) });
  }
  return buildIso9660({ volumeId: "cidata", files: list, date });
}

/** What {@link ensureSeed} did. */
export interface SeedResult {
  /** False when the spec has no seed disk (nothing to do). */
  attached: boolean;
  /** True when the ISO was (re)written. */
  written: boolean;
  instanceId?: string;
  path?: string;
}

/**
 * Writes `cidata.iso` into the bundle when the spec attaches one and the
 * seed is missing or out of date. Call before every start.
 */
export async function ensureSeed(
  bundleDir: string,
  spec: VmSpec,
  opts: SeedOptions = {},
): Promise<SeedResult> {
  if (!hasSeedDisk(spec)) return { attached: false, written: false };
  const files = await renderSeed(spec, opts);
  const path = join(bundleDir, SEED_DISK);
  const statePath = join(bundleDir, SEED_STATE);
  let previous: string | undefined;
  try {
    previous =
      (JSON.parse(await Deno.readTextFile(statePath)) as { instanceId?: string }).instanceId;
  } catch { /* no state: write the seed */ }
  const present = await Deno.stat(path).then((s) => s.isFile, () => false);
  if (present && previous === files.instanceId) {
    return { attached: true, written: false, instanceId: files.instanceId, path };
  }
  await writeFileAtomic(path, seedIso(files));
  await writeFileAtomic(statePath, JSON.stringify({ instanceId: files.instanceId }) + "\n");
  // A new instance gets new SSH host keys from cloud-init: forget the pinned ones.
  if (previous !== undefined) {
    await Deno.remove(join(bundleDir, BUNDLE_FILES.knownHosts)).catch(() => {});
  }
  return { attached: true, written: true, instanceId: files.instanceId, path };
}
