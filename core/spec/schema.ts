/**
 * The VM spec (`cove.yaml`): one zod schema from which the static types and
 * the JSON Schema printed by `cove schema` are both derived. This module only
 * says what a spec may contain; {@link ./load.ts} parses YAML with positions
 * and {@link ./defaults.ts} fills in per-os/arch/host defaults.
 *
 * Every key is optional in the file; a loaded spec has defaults applied, so
 * engines read {@link VmSpec} with everything filled in.
 * @module
 */
import { z } from "zod";
import { SIZE_PATTERN } from "../units.ts";

import { shareTag } from "./fields.ts";

export { keyboardKind, keyboardLayout, shareTag } from "./fields.ts";

/** A size such as `4GiB`, `512MiB`, `64G`, or a byte count. */
export const Size = z.union([
  z.string().regex(new RegExp(SIZE_PATTERN), {
    error: "expected a size such as 512MiB, 4GiB or 64G",
  }),
  z.int().nonnegative(),
]).meta({ description: "A size: a number with a binary unit (512MiB, 4GiB, 64G) or bytes." });

/** A MAC address, colon separated, lower or upper case. */
export const MacAddress = z.string().regex(/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/, {
  error: "expected a MAC address like 52:54:00:12:34:56",
});

export const Os = z.enum(["macos", "linux"]).meta({
  description: "Guest OS. Default: linux (macos when boot.loader is macos).",
});
export const Arch = z.enum(["arm64", "x86_64"]).meta({
  description: "Guest CPU architecture. Default: the host's (macOS guests: arm64).",
});
export const EngineName = z.enum(["auto", "vz", "qemu"]).meta({
  description: "auto: vz for arm64 guests on Apple silicon, qemu otherwise.",
});

/** A disk attached to the VM. The first disk is the root (boot) disk. */
export const Disk = z.strictObject({
  path: z.string().min(1).meta({
    description: "Image file, relative to the bundle or absolute. Raw (sparse) unless format says.",
  }),
  size: Size.optional().meta({
    description: "Size to create or grow the image to. Disks only grow.",
  }),
  format: z.enum(["raw", "asif", "qcow2"]).default("raw").meta({
    description: "Image format. cove writes raw; asif needs macOS 26 with vz; qcow2 needs qemu.",
  }),
  media: z.enum(["disk", "cdrom"]).default("disk").meta({
    description: "cdrom attaches an ISO installer (vz: USB mass storage, qemu: a CD drive).",
  }),
  readOnly: z.boolean().default(false).meta({ description: "Attach read-only." }),
  cache: z.enum(["auto", "cached", "uncached"]).default("auto").meta({
    description: "Host caching: auto, cached (host page cache) or uncached (direct I/O).",
  }),
  sync: z.enum(["full", "fsync", "none"]).default("full").meta({
    description: "Flush behaviour: full (F_FULLFSYNC), fsync, or none (fastest, unsafe on crash).",
  }),
  bus: z.enum(["virtio", "nvme", "usb"]).default("virtio").meta({
    description: "virtio-blk, NVMe, or USB mass storage.",
  }),
});

/** A host to guest port forward: QEMU's hostfwd on user networking, the supervisor's proxy elsewhere. */
export const PortForward = z.strictObject({
  host: z.int().min(0).max(65535).meta({ description: "Host port; 0 picks a free one." }),
  guest: z.int().min(1).max(65535).meta({ description: "Guest port." }),
  protocol: z.enum(["tcp", "udp"]).default("tcp").meta({ description: "tcp or udp." }),
  address: z.string().default("127.0.0.1").meta({ description: "Host address to bind." }),
});

const GuestPort = z.int().min(1).max(65535);

/** Rules for automatic forwards (`autoForward: true` is every port). */
export const AutoForwardRules = z.strictObject({
  ignore: z.array(GuestPort).default([]).meta({ description: "Guest ports never forwarded." }),
  range: z.strictObject({
    from: GuestPort.default(1).meta({ description: "Lowest guest port forwarded." }),
    to: GuestPort.default(65535).meta({ description: "Highest guest port forwarded." }),
  }).default({ from: 1, to: 65535 }).meta({ description: "Only guest ports in this range." }),
});

/** A network interface. */
export const Network = z.strictObject({
  mode: z.enum(["nat", "bridged", "user", "network", "none"]).meta({
    description:
      "nat: VZ shared NAT; bridged: a host interface; user: QEMU user-mode networking; network: a cove network between VMs (see 'cove network'); none: no network.",
  }),
  network: z.string().optional().meta({
    description: "The cove network to join (mode: network), made with 'cove network create'.",
  }),
  interface: z.string().optional().meta({
    description:
      "Host interface to bridge to (bridged only), e.g. en0; on qemu a bridge (via qemu-bridge-helper) or an existing tap device.",
  }),
  mac: MacAddress.optional().meta({ description: "Generated at create time when absent." }),
  autoForward: z.union([z.boolean(), AutoForwardRules]).optional().meta({
    description:
      "Forward each TCP port the guest listens on (non-loopback) from 127.0.0.1, at the same port or the next free one; needs the guest agent. Off by default; true, or rules.",
  }),
  forwards: z.array(PortForward).default([]).meta({
    description:
      "Host to guest port forwards, on every mode with an address: QEMU user networking forwards itself (on a cove network, through a private second NIC it adds, 10.0.200.15), elsewhere cove's supervisor proxies to the guest's address.",
  }),
}).refine((n) => n.mode !== "network" || !!n.network, {
  message: "mode: network needs network: NAME (a network made with 'cove network create')",
  path: ["network"],
});

/** A valid share tag: VZ wants a virtiofs tag of fewer than 36 UTF-8 bytes. */
const SHARE_TAG = /^[A-Za-z0-9_.-]{1,35}$/;
const SHARE_TAG_RULE = "1 to 35 letters, digits, '_', '.' or '-' (VZ allows fewer than 36 bytes)";

/** A host directory shared with the guest. */
export const Share = z.strictObject({
  path: z.string().min(1).meta({ description: "Host directory." }),
  tag: z.string().regex(SHARE_TAG, {
    error: `expected ${SHARE_TAG_RULE}`,
  }).optional().meta({ description: "virtiofs/9p tag; defaults to the directory's name." }),
  readOnly: z.boolean().default(false).meta({ description: "Share read-only." }),
  mountPoint: z.string().optional().meta({
    description: "Where cloud-init mounts it in a Linux guest.",
  }),
  automount: z.boolean().default(false).meta({
    description:
      "macOS guests: use the automount tag so it appears under /Volumes/My Shared Files.",
  }),
});

export const Boot = z.strictObject({
  loader: z.enum(["macos", "efi", "kernel"]).meta({
    description: "macos: Mac boot loader; efi: UEFI with a variable store; kernel: direct kernel.",
  }),
  kernel: z.string().optional().meta({ description: "Kernel image (kernel loader)." }),
  initrd: z.string().optional().meta({ description: "Initial ramdisk (kernel loader)." }),
  cmdline: z.string().optional().meta({ description: "Kernel command line (kernel loader)." }),
  variableStore: z.string().optional().meta({
    description: "EFI variable store, relative to the bundle (efi loader).",
  }),
});

export const Display = z.union([
  z.literal("none"),
  z.strictObject({
    width: z.int().min(320).max(8192).default(1920).meta({ description: "Pixels." }),
    height: z.int().min(200).max(8192).default(1200).meta({ description: "Pixels." }),
    ppi: z.int().min(72).max(500).default(144).meta({ description: "Pixels per inch." }),
  }),
]).meta({ description: "A graphical display, or 'none' for headless." });

export const Serial = z.strictObject({
  mode: z.enum(["log", "pty", "none"]).default("log").meta({
    description: "log: console.log in the bundle (and cove console); pty: a host pty; none.",
  }),
  path: z.string().optional().meta({ description: "Log file (log mode); default console.log." }),
});

/**
 * A user name as the spec's field accepts it: letters, digits, '_', '-' and
 * '.', starting with a letter or '_'. Each OS then narrows it: a macOS short
 * name starts with a letter (names starting with '_' are macOS's system
 * accounts), a Linux one is {@link UNIX_USER_NAME}.
 */
export const USER_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,254}$/;
/** A macOS account's short name (as Users & Groups allows), at most 255 bytes. */
export const MACOS_SHORT_NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,254}$/;
/** A Linux user name, as useradd's default NAME_REGEX. */
export const UNIX_USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
/** Short names macOS keeps for itself. */
export const MACOS_RESERVED_USERS = ["root", "daemon", "nobody", "guest"] as const;

export const Provision = z.strictObject({
  user: z.string().regex(USER_NAME, {
    error: "expected a user name (letters, digits, '_', '-' or '.', starting with a letter)",
  }).optional().meta({ description: "Guest user. Default: cove (Linux), admin (macOS)." }),
  // deno-lint-ignore no-control-regex -- a full name without control characters
  fullName: z.string().min(1).max(255).regex(/^[^\x00-\x1f:]+$/, {
    error: "expected a full name without control characters or ':'",
  }).optional().meta({
    description: "macOS guests: the account's full name. Default: the user name.",
  }),
  autoLogin: z.boolean().default(false).meta({
    description: "macOS guests (27+): log the user in automatically at startup.",
  }),
  ssh: z.boolean().default(true).meta({
    description: "macOS guests (27+): turn on Remote Login (ssh) at first boot.",
  }),
  sshKeys: z.array(z.string()).default([]).meta({
    description: "Public keys; cove's own key is added when empty.",
  }),
  hostname: z.string().regex(/^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/, {
    error: "expected a hostname (letters, digits and '-')",
  }).optional().meta({ description: "Guest hostname. Default: the VM's name." }),
  commands: z.array(z.string()).default([]).meta({
    description: "Extra shell commands run once at first boot.",
  }),
  sshPort: z.int().min(1).max(65535).default(22).meta({ description: "Guest SSH port." }),
});

/** The keyboard device kinds. */
export const KeyboardKind = z.enum(["auto", "usb", "mac", "none"]);
/** A keyboard: a device kind, or an object with a kind and the host keyboard's layout. */
export const Keyboard = z.union([
  KeyboardKind,
  z.strictObject({
    type: KeyboardKind.default("auto").meta({ description: "auto, usb, mac or none." }),
    layout: z.enum(["ansi", "iso"]).default("ansi").meta({
      description:
        "The host keyboard's layout. iso: macOS guests get a hidutil LaunchAgent that swaps the keys VZ's ANSI keyboard puts wrong (the key left of 1 and the one beside left shift).",
    }),
  }),
]).default("auto").meta({
  description:
    "auto: mac for macOS guests (macOS 14+ hosts), usb otherwise; or {type, layout: ansi|iso}.",
});

export const QemuOptions = z.strictObject({
  accel: z.enum(["auto", "kvm", "hvf", "tcg"]).default("auto").meta({
    description: "Accelerator; COVE_QEMU_ACCEL overrides it.",
  }),
  binary: z.string().optional().meta({
    description:
      "qemu-system-* binary to use. It runs as you; never taken from a pulled image; shown by cove get and cove start.",
  }),
  machine: z.string().optional().meta({ description: "Machine type; default q35 or virt." }),
  cpu: z.string().optional().meta({ description: "CPU model; default host or max." }),
  args: z.array(z.string()).default([]).meta({
    description:
      "Extra arguments, appended. They run as you; never taken from a pulled image; shown by cove get and cove start.",
  }),
});

/** The whole VM spec as written in cove.yaml. */
export const SpecSchema = z.strictObject({
  os: Os.optional(),
  arch: Arch.optional(),
  engine: EngineName.default("auto"),
  cpus: z.int().min(1).max(256).optional().meta({
    description: "Virtual CPUs. Default: 2 (Linux), 4 (macOS), at most the host's.",
  }),
  memory: Size.optional().meta({
    description: "Memory size. Default: 2GiB (Linux), 8GiB (macOS), at most half the host's.",
  }),
  disks: z.array(Disk).optional().meta({ description: "Disks; the first is the root disk." }),
  boot: Boot.optional().meta({
    description: "Default: macos for macOS guests, efi for Linux; kernel with --kernel.",
  }),
  networks: z.array(Network).optional().meta({
    description: "Network interfaces. Default: one nat interface.",
  }),
  shares: z.array(Share).default([]).meta({
    description: "Host directories shared with the guest.",
  }),
  rosetta: z.boolean().default(false).meta({
    description: "Linux arm64 guests on vz: share Rosetta to run x86_64 binaries.",
  }),
  nested: z.boolean().default(false).meta({
    description: "Nested virtualization (vz: macOS 15 and M3 or later; qemu: kvm).",
  }),
  display: Display.optional(),
  audio: z.boolean().default(false).meta({ description: "Sound output and input." }),
  keyboard: Keyboard,
  pointing: z.enum(["auto", "usb", "trackpad", "none"]).default("auto").meta({
    description: "auto: trackpad for macOS guests (macOS 13+ hosts), usb otherwise.",
  }),
  clipboard: z.boolean().default(false).meta({ description: "Spice agent clipboard sharing." }),
  serial: Serial.optional().meta({ description: "The serial console. Default: mode log." }),
  vsock: z.boolean().default(true).meta({ description: "A virtio socket device (host<->guest)." }),
  entropy: z.boolean().default(true).meta({ description: "A virtio entropy (RNG) device." }),
  balloon: z.boolean().default(true).meta({ description: "A virtio memory balloon." }),
  agent: z.boolean().optional().meta({
    description:
      "The QEMU guest agent channel (virtio serial port org.qemu.guest_agent.0). Default: true for Linux guests.",
  }),
  provision: Provision.optional().meta({
    description: "First-boot provisioning (cloud-init for Linux).",
  }),
  qemu: QemuOptions.optional().meta({ description: "QEMU engine options." }),
}).superRefine((spec, ctx) => {
  const user = spec.provision?.user;
  if (user !== undefined) {
    if (spec.os === "macos" || spec.boot?.loader === "macos") {
      if (!MACOS_SHORT_NAME.test(user)) {
        ctx.addIssue({
          code: "custom",
          path: ["provision", "user"],
          message:
            "expected a macOS short name (a letter, then letters, digits, '_', '-' or '.'; names starting with '_' are macOS's own)",
        });
      } else if ((MACOS_RESERVED_USERS as readonly string[]).includes(user.toLowerCase())) {
        ctx.addIssue({
          code: "custom",
          path: ["provision", "user"],
          message: `'${user}' is a name macOS keeps for itself; choose another`,
        });
      }
    } else if (!UNIX_USER_NAME.test(user)) {
      ctx.addIssue({
        code: "custom",
        path: ["provision", "user"],
        message: "expected a Unix user name (lower case, digits, '_' or '-')",
      });
    }
  }
  // No two NICs share a MAC: the guest (and cloud-init's network config) tells them apart by it.
  const macs = new Map<string, number>();
  (spec.networks ?? []).forEach((nic, i) => {
    if (!nic.mac) return;
    const mac = nic.mac.toLowerCase();
    const first = macs.get(mac);
    if (first !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["networks", i, "mac"],
        message: `networks[${first}] already has the MAC ${nic.mac}; give one of them another`,
      });
    } else macs.set(mac, i);
  });
  // Default tags (directory names) obey the tag rule too, and no two shares
  // may have one tag: macOS automount shares are named by their tags inside
  // one automount device, the others are devices of their own.
  const seen = new Map<string, number>();
  (spec.shares ?? []).forEach((share, i) => {
    const tag = shareTag(share);
    if (share.tag === undefined && !SHARE_TAG.test(tag)) {
      ctx.addIssue({
        code: "custom",
        path: ["shares", i, "path"],
        message:
          `its directory name '${tag}' is not a usable default tag (${SHARE_TAG_RULE}); set tag`,
      });
      return;
    }
    const group = spec.os === "macos" && share.automount ? "automount" : "device";
    const key = `${group}:${tag}`;
    const first = seen.get(key);
    if (first !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["shares", i, share.tag === undefined ? "path" : "tag"],
        message: `shares[${first}] already has the ${
          group === "automount" ? "automount name" : "tag"
        } '${tag}'; give one of them another tag`,
      });
    } else seen.set(key, i);
  });
}).meta({ title: "cove VM spec", description: "A cove virtual machine (cove.yaml)." });

/** The spec as written (every key optional). */
export type SpecInput = z.input<typeof SpecSchema>;
/** The spec after parsing, before defaults. */
export type SpecParsed = z.output<typeof SpecSchema>;
export type DiskSpec = z.output<typeof Disk>;
export type NetworkSpec = z.output<typeof Network>;
export type PortForwardSpec = z.output<typeof PortForward>;
export type AutoForwardSpec = z.output<typeof AutoForwardRules>;
export type ShareSpec = z.output<typeof Share>;
export type BootSpec = z.output<typeof Boot>;
export type DisplaySpec = z.output<typeof Display>;
export type OsName = z.output<typeof Os>;
export type ArchName = z.output<typeof Arch>;

/** A spec with all defaults applied: what engines read. */
export interface VmSpec extends
  Omit<
    SpecParsed,
    | "os"
    | "arch"
    | "cpus"
    | "memory"
    | "disks"
    | "boot"
    | "networks"
    | "display"
    | "serial"
    | "provision"
    | "qemu"
    | "agent"
  > {
  os: OsName;
  arch: ArchName;
  cpus: number;
  memory: string | number;
  disks: DiskSpec[];
  boot: BootSpec;
  networks: NetworkSpec[];
  display: DisplaySpec;
  serial: z.output<typeof Serial>;
  provision: z.output<typeof Provision> & { user: string };
  qemu: z.output<typeof QemuOptions>;
  /** The guest agent channel is attached. */
  agent: boolean;
}

/** The JSON Schema of cove.yaml, for editors. */
export function jsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(SpecSchema, { io: "input", unrepresentable: "any" });
  return { ...schema, $id: "https://cove.dev/schema/cove.yaml.json" };
}
