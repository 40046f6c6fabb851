/**
 * QEMU engine checks that need no guest: kernel headers, firmware lookup,
 * accelerator choice and its overrides, share tags, the KVM probe image and
 * the parent-death wrapper.
 */
import { join } from "node:path";
import { assert, assertCoveError, assertEquals, assertMatch } from "../helpers/assert.ts";
import { withTempDir } from "../helpers/cli.ts";
import { checkKernel, kernelFits, kernelKind } from "../../engines/qemu/kernel.ts";
import { findFirmware, prepareFirmware, requireFirmware } from "../../engines/qemu/firmware.ts";
import { chooseAccel, probeFirmware, requestedAccel } from "../../engines/qemu/accel.ts";
import { reaped, WATCHDOG_SCRIPT } from "../../engines/qemu/reaper.ts";
import { findQemu } from "../../engines/qemu/host.ts";
import { shareTag } from "../../engines/qemu/mod.ts";
import { Qmp, QmpError, withTimeout } from "../../engines/qemu/qmp.ts";
import type { HostInfo } from "../../engines/engine.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import { linuxTest } from "../helpers/guard.ts";

function header(at: number, s: string, size = 0x400): Uint8Array {
  const b = new Uint8Array(size);
  b.set(new TextEncoder().encode(s), at);
  return b;
}

async function withEnv<T>(
  vars: Record<string, string | undefined>,
  fn: () => Promise<T> | T,
): Promise<T> {
  const old: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(vars)) {
    old[k] = Deno.env.get(k);
    if (v === undefined) Deno.env.delete(k);
    else Deno.env.set(k, v);
  }
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(old)) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
  }
}

Deno.test("kernel headers are recognised: bzImage, arm64 Image, gzip, zboot, ELF", () => {
  assertEquals(kernelKind(header(0x202, "HdrS")), "bzimage");
  assertEquals(kernelKind(header(0x38, "ARM\x64")), "arm64-image");
  assertEquals(kernelKind(Uint8Array.from([0x1f, 0x8b, 8, 0])), "gzip");
  assertEquals(kernelKind(header(0, "MZ\0\0zimg")), "zboot");
  assertEquals(kernelKind(header(0, "\x7fELF")), "elf");
  assertEquals(kernelKind(header(0, "MZ")), "unknown");
  assertEquals(kernelKind(new TextEncoder().encode("#!/bin/sh\necho hi\n")), "unknown");
  assert(kernelFits("bzimage", "x86_64"));
  assert(!kernelFits("bzimage", "arm64"));
  assert(kernelFits("gzip", "arm64"));
  assert(!kernelFits("arm64-image", "x86_64"));
});

Deno.test("a file that is not a kernel fails with one line naming it", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "vmlinuz");
    await Deno.writeTextFile(p, "this is not a kernel\n");
    const e = await assertCoveError(() => checkKernel(p, "x86_64"));
    assertEquals(e.code, "boot.bad_kernel");
    assertMatch(e.line(), /^boot\.kernel: '.*vmlinuz' is not a Linux kernel/);
    assertEquals(e.line().includes("\n"), false);
    await Deno.writeFile(p, header(0x202, "HdrS"));
    await checkKernel(p, "x86_64");
    const arm = await assertCoveError(() => checkKernel(p, "arm64"));
    assertMatch(arm.message, /is a x86 kernel, not one for arm64 guests/);
    const missing = await assertCoveError(() => checkKernel(join(dir, "nope"), "x86_64"));
    assertEquals(missing.code, "boot.not_found");
  });
});

Deno.test("firmware is found in the configured share directories and copied per VM", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "OVMF"));
    await Deno.writeFile(join(dir, "OVMF", "OVMF_CODE_4M.fd"), new Uint8Array(16));
    await Deno.writeFile(join(dir, "OVMF", "OVMF_VARS_4M.fd"), new Uint8Array(8).fill(7));
    await Deno.writeFile(join(dir, "OVMF", "OVMF_CODE.fd"), new Uint8Array(16));
    await Deno.writeFile(join(dir, "OVMF", "OVMF_VARS.fd"), new Uint8Array(4));
    await withEnv({ COVE_FIRMWARE_DIRS: dir }, async () => {
      const fw = findFirmware("x86_64")!;
      assertEquals(fw.code, join(dir, "OVMF", "OVMF_CODE_4M.fd"));
      // An existing 2M variable store keeps the 2M code image.
      const old = join(dir, "old-vars.fd");
      await Deno.writeFile(old, new Uint8Array(4));
      assertEquals(findFirmware("x86_64", old)!.code, join(dir, "OVMF", "OVMF_CODE.fd"));
      const vars = join(dir, "vm-vars.fd");
      const planned = await prepareFirmware(fw, vars);
      assertEquals(planned, { code: fw.code, vars, mode: "pflash" });
      assertEquals(await Deno.readFile(vars), new Uint8Array(8).fill(7));
      assertEquals(findFirmware("arm64"), undefined);
    });
  });
});

Deno.test("no EFI firmware is one clear host error", async () => {
  await withEnv({ COVE_FIRMWARE_DIRS: "/nonexistent" }, () => {
    const e = assertCoveError(() => requireFirmware("x86_64"));
    assertEquals(e.code, "qemu.no_firmware");
    assertMatch(
      e.line(),
      /no EFI firmware for x86_64 guests was found \(install it \('apt-get install ovmf'/,
    );
  });
});

Deno.test("no qemu binary is one clear host error", async () => {
  await withEnv({ PATH: "/nonexistent" }, () => {
    const e = assertCoveError(() => findQemu("x86_64", "qemu-system-nothing"));
    assertEquals(e.code, "qemu.not_found");
    assertMatch(e.line(), /^qemu-system-nothing is not installed/);
  });
});

const LINUX: HostInfo = { os: "linux", arch: "x86_64", cpus: 2, memory: 2 ** 33 };
const accelSpec = (accel: VmSpec["qemu"]["accel"], arch: VmSpec["arch"] = "x86_64") => ({
  arch,
  qemu: { accel, args: [] },
});

Deno.test("COVE_QEMU_ACCEL overrides the spec's accelerator", async () => {
  await withEnv({ COVE_QEMU_ACCEL: "tcg" }, async () => {
    assertEquals(requestedAccel(accelSpec("kvm")), "tcg");
    const c = await chooseAccel(accelSpec("kvm"), LINUX, "/bin/false");
    assertEquals(c.accel, "tcg");
    assertMatch(c.why, /COVE_QEMU_ACCEL=tcg/);
  });
  await withEnv({ COVE_QEMU_ACCEL: "warp" }, () => {
    const e = assertCoveError(() => requestedAccel(accelSpec("auto")));
    assertMatch(e.message, /COVE_QEMU_ACCEL: 'warp' is not an accelerator/);
  });
});

Deno.test("a guest of another architecture runs under tcg and hvf needs macOS", async () => {
  await withEnv({ COVE_QEMU_ACCEL: undefined }, async () => {
    assertEquals((await chooseAccel(accelSpec("auto", "arm64"), LINUX, "/bin/false")).accel, "tcg");
    await assertCoveError(() => chooseAccel(accelSpec("hvf"), LINUX, "/bin/false"));
    const mac: HostInfo = { os: "darwin", arch: "arm64", cpus: 8, memory: 2 ** 34 };
    assertEquals((await chooseAccel(accelSpec("auto", "arm64"), mac, "/bin/false")).accel, "hvf");
    assertEquals((await chooseAccel(accelSpec("auto", "x86_64"), mac, "/bin/false")).accel, "tcg");
  });
});

Deno.test("the KVM probe firmware is a 64 KiB image with a far jump at the reset vector", () => {
  const img = probeFirmware("x86_64");
  assertEquals(img.length, 0x10000);
  assertEquals(Array.from(img.subarray(0xfff0, 0xfff5)), [0xea, 0x00, 0x00, 0x00, 0xf0]);
  assertEquals(img[0], 0xfa); // cli
  assertEquals(probeFirmware("arm64").length, 16);
});

Deno.test("share tags default to the directory name, made safe", () => {
  assertEquals(shareTag("/home/me/src/", undefined, 0), "src");
  assertEquals(shareTag("/data/my dir,x", undefined, 1), "my_dir_x");
  assertEquals(shareTag("/", undefined, 2), "share2");
  assertEquals(shareTag("/x", "tag", 3), "tag");
});

Deno.test("QEMU is wrapped so that it dies with its parent: setpriv on Linux, else a watchdog", async () => {
  if (Deno.build.os === "linux") {
    const r = reaped("/usr/bin/qemu", ["-a", "b"]);
    assertEquals(r.kind, "pdeathsig");
    assertEquals(r.args.slice(-4), ["--", "/usr/bin/qemu", "-a", "b"]);
  }
  await withEnv({ COVE_REAPER: "sh" }, () => {
    const r = reaped("/usr/bin/qemu", ["-a", "b; rm -rf /"]);
    assertEquals(r.command, "/bin/sh");
    assertEquals(r.args, [
      "-c",
      WATCHDOG_SCRIPT,
      "cove-watchdog",
      "/usr/bin/qemu",
      "-a",
      "b; rm -rf /",
    ]);
    assert(r.holdStdin);
  });
});

linuxTest(
  "finds the watchdog's children through /proc",
  "the sh watchdog kills its command when its stdin closes",
  async () => {
    await withEnv({ COVE_REAPER: "sh" }, async () => {
      const r = reaped("sleep", ["300"]);
      const child = new Deno.Command(r.command, {
        args: r.args,
        stdin: "piped",
        stdout: "null",
        stderr: "null",
      }).spawn();
      await new Promise((res) => setTimeout(res, 300));
      const sleeper = findChild(child.pid, "sleep");
      assert(sleeper, "the watchdog started its command");
      await child.stdin.close();
      const st = await child.status;
      assert(!st.success, "the command was killed, not finished");
      assert(!alive(sleeper), "no orphan is left");
    });
  },
);

function findChild(ppid: number, comm: string): number | undefined {
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const m = /^\d+ \((.*)\) \S+ (\d+)/.exec(stat);
      if (m && m[1] === comm && Number(m[2]) === ppid) return Number(e.name);
    } catch { /* gone */ }
  }
  return undefined;
}

function alive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

Deno.test("a QEMU that greets on QMP but never answers makes connect and commands time out", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "qmp.sock");
    const listener = Deno.listen({ transport: "unix", path });
    const conns: Deno.Conn[] = [];
    const accepting = (async () => {
      for await (const c of listener) {
        conns.push(c);
        await c.write(new TextEncoder().encode('{"QMP": {"version": {}}}\n'));
      }
    })().catch(() => {});
    try {
      let err: unknown;
      await Qmp.connect(path, 100).catch((e) => (err = e));
      assert(err instanceof QmpError && err.cls === "Timeout", String(err));
      err = undefined;
      await withTimeout(new Promise(() => {}), 10, "never").catch((e) => (err = e));
      assert(err instanceof QmpError && err.cls === "Timeout", String(err));
    } finally {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await accepting;
    }
  });
});
