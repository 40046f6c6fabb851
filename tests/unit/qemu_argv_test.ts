/**
 * Golden tests of the QEMU command line: the same spec and plan always give
 * exactly this argument array (x86_64 q35 direct kernel boot, x86_64 EFI
 * with every device, arm64 virt).
 */
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { type SpecInput, SpecSchema } from "../../core/spec/schema.ts";
import type { HostInfo } from "../../engines/engine.ts";
import {
  buildQemuArgs,
  driveCacheOptions,
  qemuEscape,
  type QemuPlan,
} from "../../engines/qemu/argv.ts";
import { qemuAccess } from "../../engines/qemu/mod.ts";

const HOST: HostInfo = { os: "linux", arch: "x86_64", cpus: 8, memory: 16 * 2 ** 30 };

function spec(input: SpecInput, host = HOST) {
  return applyDefaults(SpecSchema.parse(input), host, "t");
}

function plan(over: Partial<QemuPlan> = {}): QemuPlan {
  return {
    name: "t",
    accel: "tcg",
    diskPaths: ["/vm/t/disk.img"],
    forwards: [[]],
    shares: [],
    qmpSocket: "/run/t/qmp.sock",
    consoleSocket: "/run/t/console.sock",
    pidFile: "/run/t/qemu.pid",
    graphics: false,
    memoryBytes: 512 * 2 ** 20,
    ...over,
  };
}

Deno.test("x86_64 direct kernel boot gives the q35 golden argv", () => {
  const s = spec({
    engine: "qemu",
    cpus: 1,
    memory: "512MiB",
    boot: { loader: "kernel", kernel: "vmlinuz", initrd: "initrd", cmdline: "console=ttyS0" },
    networks: [{ mode: "user", mac: "52:54:00:12:34:56", forwards: [{ host: 2222, guest: 22 }] }],
    vsock: false,
  });
  const args = buildQemuArgs(
    s,
    plan({
      kernel: "/vm/t/vmlinuz",
      initrd: "/vm/t/initrd",
      uuid: "a314f631-caf0-496b-b2b6-af67a7897815",
      forwards: [[{ protocol: "tcp", address: "127.0.0.1", host: 2222, guest: 22 }]],
    }),
  );
  assertEquals(args, [
    "-name",
    "t,process=cove-t",
    "-uuid",
    "a314f631-caf0-496b-b2b6-af67a7897815",
    "-nodefaults",
    "-no-user-config",
    "-machine",
    "q35",
    "-accel",
    "tcg",
    "-cpu",
    "max",
    "-smp",
    "1",
    "-m",
    "512M",
    "-kernel",
    "/vm/t/vmlinuz",
    "-initrd",
    "/vm/t/initrd",
    "-append",
    "console=ttyS0",
    "-pidfile",
    "/run/t/qemu.pid",
    "-qmp",
    "unix:/run/t/qmp.sock,server=on,wait=off",
    "-chardev",
    "socket,id=cove-console,path=/run/t/console.sock,server=on,wait=on",
    "-serial",
    "chardev:cove-console",
    "-monitor",
    "none",
    "-display",
    "none",
    "-drive",
    "if=none,id=cove-disk0,format=raw,cache.direct=off,cache.no-flush=off,discard=unmap,file=/vm/t/disk.img",
    "-device",
    "virtio-blk-pci,drive=cove-disk0",
    "-netdev",
    "user,id=cove-net0,hostfwd=tcp:127.0.0.1:2222-:22",
    "-device",
    "virtio-net-pci,netdev=cove-net0,mac=52:54:00:12:34:56",
    "-object",
    "rng-random,id=cove-rng,filename=/dev/urandom",
    "-device",
    "virtio-rng-pci,rng=cove-rng",
    "-device",
    "virtio-balloon-pci",
  ]);
});

Deno.test("x86_64 EFI boot with disks, an ISO, shares, vsock and kvm gives the golden argv", () => {
  const s = spec({
    engine: "qemu",
    cpus: 4,
    memory: "2GiB",
    disks: [
      { path: "disk.img", size: "16GiB", cache: "uncached" },
      { path: "data.qcow2", format: "qcow2", sync: "none", bus: "nvme" },
      { path: "/isos/debian.iso", media: "cdrom" },
    ],
    networks: [{ mode: "nat", mac: "52:54:00:00:00:01" }, { mode: "none" }],
    shares: [{ path: "/home/me/src", tag: "src" }, {
      path: "/data,x",
      tag: "data_x",
      readOnly: true,
    }],
    entropy: false,
    qemu: { args: ["-rtc", "base=utc"] },
  });
  const args = buildQemuArgs(
    s,
    plan({
      accel: "kvm",
      diskPaths: ["/vm/t/disk.img", "/vm/t/data.qcow2", "/isos/debian.iso"],
      forwards: [[], []],
      firmware: {
        code: "/usr/share/OVMF/OVMF_CODE_4M.fd",
        vars: "/vm/t/efi-vars.fd",
        mode: "pflash",
      },
      shares: [
        {
          tag: "src",
          path: "/home/me/src",
          readOnly: false,
          kind: "virtiofs",
          socket: "/run/t/fs0.sock",
        },
        { tag: "data_x", path: "/data,x", readOnly: true, kind: "9p" },
      ],
      vsockCid: 1234,
      memoryBytes: 2 * 2 ** 30,
    }),
  );
  assertEquals(args, [
    "-name",
    "t,process=cove-t",
    "-nodefaults",
    "-no-user-config",
    "-machine",
    "q35,memory-backend=cove-mem",
    "-accel",
    "kvm",
    "-cpu",
    "host",
    "-smp",
    "4",
    "-m",
    "2048M",
    "-object",
    "memory-backend-memfd,id=cove-mem,size=2048M,share=on",
    "-drive",
    "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
    "-drive",
    "if=pflash,format=raw,unit=1,file=/vm/t/efi-vars.fd",
    "-pidfile",
    "/run/t/qemu.pid",
    "-qmp",
    "unix:/run/t/qmp.sock,server=on,wait=off",
    "-chardev",
    "socket,id=cove-console,path=/run/t/console.sock,server=on,wait=on",
    "-serial",
    "chardev:cove-console",
    "-monitor",
    "none",
    "-display",
    "none",
    "-drive",
    "if=none,id=cove-disk0,format=raw,cache.direct=on,cache.no-flush=off,discard=unmap,file=/vm/t/disk.img",
    "-device",
    "virtio-blk-pci,drive=cove-disk0,bootindex=0",
    "-drive",
    "if=none,id=cove-disk1,format=qcow2,cache.direct=off,cache.no-flush=on,discard=unmap,file=/vm/t/data.qcow2",
    "-device",
    "nvme,drive=cove-disk1,serial=cove1,bootindex=1",
    "-drive",
    "if=none,id=cove-cd2,media=cdrom,readonly=on,file=/isos/debian.iso",
    "-device",
    "ide-cd,drive=cove-cd2,bootindex=2",
    "-netdev",
    "user,id=cove-net0",
    "-device",
    "virtio-net-pci,netdev=cove-net0,mac=52:54:00:00:00:01",
    "-chardev",
    "socket,id=cove-fs0,path=/run/t/fs0.sock",
    "-device",
    "vhost-user-fs-pci,chardev=cove-fs0,tag=src",
    "-fsdev",
    "local,id=cove-fs1,path=/data,,x,security_model=none,readonly=on",
    "-device",
    "virtio-9p-pci,fsdev=cove-fs1,mount_tag=data_x",
    "-device",
    "virtio-balloon-pci",
    "-device",
    "vhost-vsock-pci,guest-cid=1234",
    "-rtc",
    "base=utc",
  ]);
});

Deno.test("arm64 guests get the virt machine, AAVMF pflash and USB for ISOs", () => {
  const s = spec({
    engine: "qemu",
    arch: "arm64",
    cpus: 2,
    memory: "1GiB",
    disks: [{ path: "disk.img", size: "8GiB" }, { path: "/isos/d.iso", media: "cdrom" }],
    networks: [{ mode: "user", mac: "52:54:00:00:00:02" }],
    balloon: false,
    entropy: false,
  });
  const args = buildQemuArgs(
    s,
    plan({
      diskPaths: ["/vm/t/disk.img", "/isos/d.iso"],
      firmware: {
        code: "/usr/share/AAVMF/AAVMF_CODE.fd",
        vars: "/vm/t/efi-vars.fd",
        mode: "pflash",
      },
      memoryBytes: 2 ** 30,
    }),
  );
  const joined = args.join(" ");
  assertMatch(joined, /-machine virt,gic-version=max -accel tcg -cpu max -smp 2 -m 1024M/);
  assertMatch(
    joined,
    /-drive if=pflash,format=raw,unit=0,readonly=on,file=\/usr\/share\/AAVMF\/AAVMF_CODE\.fd/,
  );
  assertMatch(
    joined,
    /-device qemu-xhci,id=cove-usb -device usb-storage,drive=cove-cd1,removable=on,bootindex=1/,
  );
  assertEquals(args.includes("virtio-balloon-pci"), false);
});

Deno.test("a bios-style firmware image is passed with -bios and no variable store", () => {
  const s = spec({
    engine: "qemu",
    arch: "arm64",
    memory: "1GiB",
    disks: [{ path: "d.img", size: "1GiB" }],
  });
  const args = buildQemuArgs(
    s,
    plan({ firmware: { code: "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", mode: "bios" } }),
  );
  assertEquals(args[args.indexOf("-bios") + 1], "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd");
  assertEquals(args.filter((a) => a.startsWith("if=pflash")).length, 0);
});

Deno.test("a display adds a GPU and USB keyboard and tablet only when graphics are on", () => {
  const s = spec({
    engine: "qemu",
    memory: "1GiB",
    display: { width: 1280, height: 800 },
    disks: [{ path: "d.img", size: "1GiB" }],
  });
  const headless = buildQemuArgs(s, plan()).join(" ");
  assertMatch(headless, /-display none/);
  const shown = buildQemuArgs(s, plan({ graphics: true })).join(" ");
  assertMatch(
    shown,
    /-display default -device virtio-vga -device qemu-xhci,id=cove-usb -device usb-kbd -device usb-tablet/,
  );
});

Deno.test("disk cache and sync modes map to QEMU cache options", () => {
  assertEquals(
    driveCacheOptions({ cache: "auto", sync: "full" }),
    "cache.direct=off,cache.no-flush=off",
  );
  assertEquals(
    driveCacheOptions({ cache: "cached", sync: "fsync" }),
    "cache.direct=off,cache.no-flush=off",
  );
  assertEquals(
    driveCacheOptions({ cache: "uncached", sync: "full" }),
    "cache.direct=on,cache.no-flush=off",
  );
  assertEquals(
    driveCacheOptions({ cache: "uncached", sync: "none" }),
    "cache.direct=on,cache.no-flush=on",
  );
});

Deno.test("commas in paths are doubled for QEMU's option syntax", () => {
  assertEquals(qemuEscape("/a,b/c,,d"), "/a,,b/c,,,,d");
});

Deno.test("a minimal spec (no UUID, MAC or firmware in the plan) gives exactly the default argv", () => {
  const s = spec({ engine: "qemu", memory: "1GiB", disks: [{ path: "d.img", size: "1GiB" }] });
  // The default spec: 2 CPUs, one user-mode NIC without a fixed MAC, the root disk bootable;
  // -m comes from the plan (the engine's resolved memory), not from the spec's text.
  assertEquals(buildQemuArgs(s, plan()), [
    "-name",
    "t,process=cove-t",
    "-nodefaults",
    "-no-user-config",
    "-machine",
    "q35",
    "-accel",
    "tcg",
    "-cpu",
    "max",
    "-smp",
    "2",
    "-m",
    "512M",
    "-pidfile",
    "/run/t/qemu.pid",
    "-qmp",
    "unix:/run/t/qmp.sock,server=on,wait=off",
    "-chardev",
    "socket,id=cove-console,path=/run/t/console.sock,server=on,wait=on",
    "-serial",
    "chardev:cove-console",
    "-monitor",
    "none",
    "-display",
    "none",
    "-drive",
    "if=none,id=cove-disk0,format=raw,cache.direct=off,cache.no-flush=off,discard=unmap,file=/vm/t/disk.img",
    "-device",
    "virtio-blk-pci,drive=cove-disk0,bootindex=0",
    "-netdev",
    "user,id=cove-net0",
    "-device",
    "virtio-net-pci,netdev=cove-net0",
    "-object",
    "rng-random,id=cove-rng,filename=/dev/urandom",
    "-device",
    "virtio-rng-pci,rng=cove-rng",
    "-device",
    "virtio-balloon-pci",
  ]);
});

Deno.test("resuming saved state adds -incoming defer; a normal start does not", () => {
  const s = spec({ engine: "qemu", memory: "1GiB", disks: [{ path: "d.img", size: "1GiB" }] });
  const args = buildQemuArgs(s, plan({ incoming: true, savedState: "/b/state" }));
  assertEquals(args[args.indexOf("-incoming") + 1], "defer");
  assertEquals(args.includes("/b/state"), false);
  assertEquals(buildQemuArgs(s, plan()).includes("-incoming"), false);
});

Deno.test("the guest agent channel is a virtio serial port named org.qemu.guest_agent.0 on a unix socket QEMU serves", () => {
  const s = spec({
    engine: "qemu",
    cpus: 1,
    memory: "512MiB",
    boot: { loader: "kernel", kernel: "vmlinuz" },
    networks: [{ mode: "none" }],
    vsock: false,
    entropy: false,
    balloon: false,
  });
  assertEquals(s.agent, true);
  const args = buildQemuArgs(s, plan({ agentSocket: "/run/t/agent.sock" }));
  const at = args.indexOf("-monitor") + 2;
  assertEquals(args.slice(at, at + 6), [
    "-chardev",
    "socket,id=cove-agent,path=/run/t/agent.sock,server=on,wait=off",
    "-device",
    "virtio-serial-pci,id=cove-vserial",
    "-device",
    "virtserialport,chardev=cove-agent,name=org.qemu.guest_agent.0",
  ]);
  // Without a planned socket (agent: false, or a caller that gives none) there is no channel.
  const none = buildQemuArgs(spec({ engine: "qemu", agent: false }), plan());
  assertEquals(none.filter((a) => a.includes("cove-agent") || a.includes("virtio-serial")), []);
});

Deno.test("a bridged NIC on an existing tap device opens the tap itself; on a bridge it asks the helper", () => {
  const s = spec({
    os: "linux",
    networks: [{ mode: "bridged", interface: "tap7" }, { mode: "bridged", interface: "br0" }],
  });
  const a = buildQemuArgs(s, plan({ forwards: [[], []], taps: [true, false] }));
  const netdevs = a.filter((_, i) => a[i - 1] === "-netdev");
  assertEquals(netdevs, [
    "tap,id=cove-net0,ifname=tap7,script=no,downscript=no",
    "bridge,id=cove-net1,br=br0",
  ]);
});

Deno.test("a NIC on a cove network gets a private forward NIC after every spec NIC: restricted user networking whose hostfwd carries its forwards", () => {
  const s = spec({
    os: "linux",
    networks: [
      {
        mode: "network",
        network: "lab",
        mac: "52:54:00:aa:bb:01",
        forwards: [{ host: 8080, guest: 80 }],
      },
      { mode: "user", mac: "52:54:00:aa:bb:02" },
    ],
  });
  const a = buildQemuArgs(
    s,
    plan({
      forwards: [[{ protocol: "tcp", address: "127.0.0.1", host: 8080, guest: 80 }], []],
      networkSockets: ["/run/lab.sock", undefined],
    }),
  );
  const after = (flag: string) => a.filter((_, i) => a[i - 1] === flag);
  assertEquals(after("-netdev"), [
    "stream,id=cove-net0,server=off,addr.type=unix,addr.path=/run/lab.sock",
    "user,id=cove-net1",
    "user,id=cove-fwd0,restrict=on,net=10.0.200.0/24,hostfwd=tcp:127.0.0.1:8080-10.0.200.15:80",
  ]);
  assertEquals(after("-device").filter((d) => d.startsWith("virtio-net-pci")), [
    "virtio-net-pci,netdev=cove-net0,mac=52:54:00:aa:bb:01",
    "virtio-net-pci,netdev=cove-net1,mac=52:54:00:aa:bb:02",
    "virtio-net-pci,netdev=cove-fwd0,mac=52:55:00:aa:bb:01",
  ]);
  // The seed gives the guest that NIC's address, and QEMU's access says which NIC it is.
  assertEquals(qemuAccess.forwardNics(s), [
    { nic: 0, mac: "52:55:00:aa:bb:01", address: "10.0.200.15/24" },
  ]);
});

Deno.test("cove reaches a guest's SSH through a user NIC's forward, and a guest on cove networks only through its first cove-network NIC's", () => {
  const lab = { mode: "network" as const, network: "lab", mac: "52:54:00:aa:bb:01" };
  const ssh = { host: 0, guest: 22, protocol: "tcp", address: "127.0.0.1" };
  const both = qemuAccess.withAccess(
    spec({ os: "linux", networks: [lab, { mode: "user", mac: "52:54:00:aa:bb:02" }] }),
  );
  assertEquals(both.networks.map((n) => n.forwards), [[], [ssh]]);
  const only = qemuAccess.withAccess(spec({ os: "linux", networks: [lab] }));
  assertEquals(only.networks[0].forwards, [ssh]);
  // The forward NIC carries it, so `cove ip` finds it in the live status as for user networking.
  assertEquals(qemuAccess.route(only.networks[0]), "port-forward");
  assertEquals(qemuAccess.forwardNics(only).length, 1);
  // Already forwarded: unchanged.
  assertEquals(qemuAccess.withAccess(only), only);
});
