/**
 * The QEMU command line, built from a VM spec as an argument array by one
 * pure function ({@link buildQemuArgs}). Everything that needs the host
 * (which binary, which accelerator, which firmware, which free ports, which
 * share backend) is decided before and passed in a {@link QemuPlan}, so the
 * result is deterministic and pinned by golden tests.
 *
 * Machines: x86_64 guests get `q35`, arm64 guests get `virt`. The serial
 * console is a unix socket chardev that QEMU serves and the supervisor
 * connects to (`wait=on`: no byte is lost before it attaches); QMP is a
 * second unix socket.
 * @module
 */
import { QGA_PORT_NAME } from "../engine.ts";
import type { DiskSpec, VmSpec } from "../../core/spec/schema.ts";
import { keyboardKind } from "../../core/spec/fields.ts";

/** The accelerators cove drives. */
export type Accel = "kvm" | "hvf" | "tcg";

/** Firmware for EFI boot. */
export interface FirmwarePlan {
  /** Read-only code image. */
  code: string;
  /** The VM's own writable variable store (pflash mode). */
  vars?: string;
  /** pflash: code and vars as flash drives; bios: a single `-bios` image. */
  mode: "pflash" | "bios";
}

/** A shared directory, with the backend chosen. */
export interface SharePlan {
  tag: string;
  path: string;
  readOnly: boolean;
  kind: "virtiofs" | "9p";
  /** virtiofsd's socket (virtiofs only). */
  socket?: string;
}

/** A port forward with its host port resolved (0 replaced by a free port). */
export interface ForwardPlan {
  protocol: "tcp" | "udp";
  address: string;
  host: number;
  guest: number;
}

/** Everything about the host that the command line depends on. */
export interface QemuPlan {
  name: string;
  accel: Accel;
  /** Absolute paths of the spec's disks (same order as spec.disks). */
  diskPaths: string[];
  /** Absolute kernel/initrd paths (kernel loader). */
  kernel?: string;
  initrd?: string;
  firmware?: FirmwarePlan;
  /** Port forwards per network (same order as spec.networks). */
  forwards: ForwardPlan[][];
  /**
   * Per network: true when a bridged NIC's `interface` is an existing tap
   * device, which QEMU opens itself (`-netdev tap`) instead of asking
   * qemu-bridge-helper to make one on a bridge.
   */
  taps?: boolean[];
  /** Per network: the switch socket of a cove network (mode: network). */
  networkSockets?: (string | undefined)[];
  shares: SharePlan[];
  /** vhost-vsock guest CID, when the host has /dev/vhost-vsock. */
  vsockCid?: number;
  qmpSocket: string;
  consoleSocket: string;
  /**
   * The guest agent channel: a unix socket QEMU serves (`wait=off`) and the
   * supervisor connects to, wired to the virtio serial port
   * `org.qemu.guest_agent.0`. Absent: no agent channel.
   */
  agentSocket?: string;
  pidFile: string;
  /** SMBIOS system UUID. */
  uuid?: string;
  /** Show a display window. */
  graphics: boolean;
  memoryBytes: number;
  /** Start waiting for a migration stream (`-incoming defer`): resuming saved state. */
  incoming?: boolean;
  /** Where `suspend` saves the machine state (not an argument of QEMU). */
  savedState?: string;
}

/**
 * The private user network of cove-network NIC `i`'s forward NIC (see
 * `qemuAccess.forwardNics`): 10.0.(200+i).0/24, away from 10.0.2.0/24, the
 * network of every user-networking NIC, which the same guest may also have.
 */
export function forwardNet(i: number): string {
  return `10.0.${200 + i}.0`;
}

/** The guest's address on {@link forwardNet}: .15, as on QEMU's user networks. */
export function forwardGuestAddress(i: number): string {
  return `10.0.${200 + i}.15`;
}

/** The MAC of a forward NIC: its NIC's, with the second octet changed (still locally administered). */
export function forwardMac(mac: string): string {
  const o = mac.toLowerCase().split(":");
  o[1] = ((parseInt(o[1], 16) ^ 0x01) & 0xff).toString(16).padStart(2, "0");
  return o.join(":");
}

/** The QEMU system binary name for a guest architecture. */
export function qemuSystemName(arch: VmSpec["arch"]): string {
  return arch === "arm64" ? "qemu-system-aarch64" : "qemu-system-x86_64";
}

/** Escapes a value for QEMU's comma-separated option syntax (',' doubles). */
export function qemuEscape(v: string): string {
  return v.replaceAll(",", ",,");
}

/** QEMU -drive cache options for a disk's cache and sync modes. */
export function driveCacheOptions(d: Pick<DiskSpec, "cache" | "sync">): string {
  const direct = d.cache === "uncached" ? "on" : "off";
  const noFlush = d.sync === "none" ? "on" : "off";
  return `cache.direct=${direct},cache.no-flush=${noFlush}`;
}

/**
 * Builds the QEMU arguments (without the binary) for a spec and a plan.
 * Pure: the same input always gives the same array.
 */
export function buildQemuArgs(spec: VmSpec, plan: QemuPlan): string[] {
  const x86 = spec.arch === "x86_64";
  const a: string[] = [];
  const memMiB = Math.max(1, Math.floor(plan.memoryBytes / 2 ** 20));
  const useMemfd = plan.shares.some((s) => s.kind === "virtiofs");

  a.push("-name", `${qemuEscape(plan.name)},process=cove-${qemuEscape(plan.name)}`);
  if (plan.uuid) a.push("-uuid", plan.uuid);
  a.push("-nodefaults", "-no-user-config");

  const machine = [spec.qemu.machine ?? (x86 ? "q35" : "virt")];
  if (!x86 && !spec.qemu.machine) {
    machine.push(plan.accel === "tcg" ? "gic-version=max" : "gic-version=host");
  }
  if (useMemfd) machine.push("memory-backend=cove-mem");
  a.push("-machine", machine.join(","));
  a.push("-accel", plan.accel);
  a.push("-cpu", spec.qemu.cpu ?? (plan.accel === "tcg" ? "max" : "host"));
  a.push("-smp", String(spec.cpus));
  a.push("-m", `${memMiB}M`);
  if (useMemfd) {
    a.push("-object", `memory-backend-memfd,id=cove-mem,size=${memMiB}M,share=on`);
  }

  // Boot.
  if (spec.boot.loader === "kernel") {
    if (plan.kernel) a.push("-kernel", plan.kernel);
    if (plan.initrd) a.push("-initrd", plan.initrd);
    if (spec.boot.cmdline !== undefined) a.push("-append", spec.boot.cmdline);
  } else if (plan.firmware) {
    if (plan.firmware.mode === "bios") {
      a.push("-bios", plan.firmware.code);
    } else {
      a.push(
        "-drive",
        `if=pflash,format=raw,unit=0,readonly=on,file=${qemuEscape(plan.firmware.code)}`,
      );
      if (plan.firmware.vars) {
        a.push("-drive", `if=pflash,format=raw,unit=1,file=${qemuEscape(plan.firmware.vars)}`);
      }
    }
  }

  // Control and console.
  a.push("-pidfile", plan.pidFile);
  a.push("-qmp", `unix:${plan.qmpSocket},server=on,wait=off`);
  a.push(
    "-chardev",
    `socket,id=cove-console,path=${qemuEscape(plan.consoleSocket)},server=on,wait=on`,
  );
  a.push("-serial", "chardev:cove-console");
  a.push("-monitor", "none");
  if (plan.incoming) a.push("-incoming", "defer");
  if (plan.agentSocket) {
    a.push(
      "-chardev",
      `socket,id=cove-agent,path=${qemuEscape(plan.agentSocket)},server=on,wait=off`,
    );
    a.push("-device", "virtio-serial-pci,id=cove-vserial");
    a.push("-device", `virtserialport,chardev=cove-agent,name=${QGA_PORT_NAME}`);
  }

  // Display and input.
  const display = plan.graphics && spec.display !== "none";
  let usb = false;
  const needUsb = () => {
    if (!usb) a.push("-device", "qemu-xhci,id=cove-usb");
    usb = true;
  };
  if (display) {
    a.push("-display", "default");
    a.push("-device", x86 ? "virtio-vga" : "virtio-gpu-pci");
    if (keyboardKind(spec.keyboard) !== "none") {
      needUsb();
      a.push("-device", "usb-kbd");
    }
    if (spec.pointing !== "none") {
      needUsb();
      a.push("-device", "usb-tablet");
    }
  } else {
    a.push("-display", "none");
  }

  // Disks: writable disks first (boot order), then installers. Boot order
  // is for the firmware only: a direct kernel boot claims bootindex 0 itself.
  let boot = 0;
  const bootIndex = () => (spec.boot.loader === "kernel" ? "" : `,bootindex=${boot++}`);
  spec.disks.forEach((d, i) => {
    const path = plan.diskPaths[i];
    const id = `cove-disk${i}`;
    if (d.media === "cdrom") return;
    const format = d.format === "qcow2" ? "qcow2" : "raw";
    const opts = [
      "if=none",
      `id=${id}`,
      `format=${format}`,
      driveCacheOptions(d),
      "discard=unmap",
      `file=${qemuEscape(path)}`,
    ];
    if (d.readOnly) opts.push("readonly=on");
    a.push("-drive", opts.join(","));
    if (d.bus === "nvme") a.push("-device", `nvme,drive=${id},serial=cove${i}${bootIndex()}`);
    else if (d.bus === "usb") {
      needUsb();
      a.push("-device", `usb-storage,drive=${id}${bootIndex()}`);
    } else a.push("-device", `virtio-blk-pci,drive=${id}${bootIndex()}`);
  });
  spec.disks.forEach((d, i) => {
    if (d.media !== "cdrom") return;
    const id = `cove-cd${i}`;
    a.push(
      "-drive",
      `if=none,id=${id},media=cdrom,readonly=on,file=${qemuEscape(plan.diskPaths[i])}`,
    );
    if (x86 && d.bus !== "usb") a.push("-device", `ide-cd,drive=${id}${bootIndex()}`);
    else {
      needUsb();
      a.push("-device", `usb-storage,drive=${id},removable=on${bootIndex()}`);
    }
  });

  // Networks.
  spec.networks.forEach((n, i) => {
    const id = `cove-net${i}`;
    if (n.mode === "none") return;
    if (n.mode === "network") {
      // A cove network: frames over a unix stream socket to cove's switch.
      const path = qemuEscape(plan.networkSockets?.[i] ?? "");
      a.push("-netdev", `stream,id=${id},server=off,addr.type=unix,addr.path=${path}`);
    } else if (n.mode === "bridged" && plan.taps?.[i]) {
      a.push(
        "-netdev",
        `tap,id=${id},ifname=${qemuEscape(n.interface ?? "")},script=no,downscript=no`,
      );
    } else if (n.mode === "bridged") {
      a.push("-netdev", `bridge,id=${id},br=${qemuEscape(n.interface ?? "br0")}`);
    } else {
      const opts = [`user,id=${id}`];
      for (const f of plan.forwards[i] ?? []) {
        opts.push(`hostfwd=${f.protocol}:${f.address}:${f.host}-:${f.guest}`);
      }
      a.push("-netdev", opts.join(","));
    }
    a.push("-device", `virtio-net-pci,netdev=${id}${n.mac ? `,mac=${n.mac}` : ""}`);
  });
  // After every spec NIC (so the spec's NICs keep their order): a cove network's forward NIC.
  spec.networks.forEach((n, i) => {
    if (n.mode !== "network" || !n.mac) return;
    const id = `cove-fwd${i}`;
    const opts = [`user,id=${id}`, "restrict=on", `net=${forwardNet(i)}/24`];
    for (const f of plan.forwards[i] ?? []) {
      opts.push(
        `hostfwd=${f.protocol}:${f.address}:${f.host}-${forwardGuestAddress(i)}:${f.guest}`,
      );
    }
    a.push("-netdev", opts.join(","));
    a.push("-device", `virtio-net-pci,netdev=${id},mac=${forwardMac(n.mac)}`);
  });

  // Shares.
  plan.shares.forEach((s, i) => {
    if (s.kind === "virtiofs") {
      a.push("-chardev", `socket,id=cove-fs${i},path=${qemuEscape(s.socket ?? "")}`);
      a.push("-device", `vhost-user-fs-pci,chardev=cove-fs${i},tag=${s.tag}`);
    } else {
      const opts = [`local,id=cove-fs${i}`, `path=${qemuEscape(s.path)}`, "security_model=none"];
      if (s.readOnly) opts.push("readonly=on");
      a.push("-fsdev", opts.join(","));
      a.push("-device", `virtio-9p-pci,fsdev=cove-fs${i},mount_tag=${s.tag}`);
    }
  });

  // Small devices.
  if (spec.entropy) {
    a.push("-object", "rng-random,id=cove-rng,filename=/dev/urandom");
    a.push("-device", "virtio-rng-pci,rng=cove-rng");
  }
  if (spec.balloon) a.push("-device", "virtio-balloon-pci");
  if (plan.vsockCid !== undefined) a.push("-device", `vhost-vsock-pci,guest-cid=${plan.vsockCid}`);

  a.push(...spec.qemu.args);
  return a;
}
