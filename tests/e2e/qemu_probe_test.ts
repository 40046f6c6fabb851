/**
 * The bounded KVM probe: its firmware really reaches 64-bit long mode and
 * exits through the debug port (checked under TCG, where it always runs),
 * and `cove doctor` reports whether KVM is usable and which accelerator
 * QEMU guests get.
 */
import { join } from "node:path";
import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { withTempDir } from "../helpers/cli.ts";
import { probeArgs, probeFirmware } from "../../engines/qemu/accel.ts";
import { requireTool, run } from "./qemu_helpers.ts";

Deno.test("the KVM probe firmware reaches long mode and exits with status 85 under TCG", async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86");
  await withTempDir(async (dir) => {
    const fw = join(dir, "probe.bin");
    await Deno.writeFile(fw, probeFirmware("x86_64"));
    const args = probeArgs("x86_64", fw).map((
      a,
    ) => (a === "kvm" ? "tcg" : a === "host" ? "max" : a));
    const out = await new Deno.Command("qemu-system-x86_64", {
      args,
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(out.code, 85, new TextDecoder().decode(out.stderr));
  });
});

Deno.test("the arm64 KVM probe firmware powers off through PSCI under TCG", async () => {
  requireTool("qemu-system-aarch64", "qemu-system-arm");
  await withTempDir(async (dir) => {
    const fw = join(dir, "probe.bin");
    await Deno.writeFile(fw, probeFirmware("arm64"));
    const args = probeArgs("arm64", fw).map((a) =>
      a === "kvm" ? "tcg" : a === "host" ? "max" : a === "virt,gic-version=host" ? "virt" : a
    );
    const out = await new Deno.Command("qemu-system-aarch64", {
      args,
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  });
});

Deno.test("cove doctor says whether KVM is usable and which accelerator QEMU guests get", async () => {
  requireTool("qemu-system-x86_64", "qemu-system-x86");
  await withTempDir(async (home) => {
    const r = await run(home, ["doctor", "--format", "json"], { env: { COVE_QEMU_ACCEL: "" } });
    assertEquals(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as {
      engines: { engine: string; details: Record<string, unknown> }[];
    };
    const q = report.engines.find((e) => e.engine === "qemu")!;
    assertMatch(String(q.details.accel), /^(kvm|tcg( \(kvm not usable: .+\))?)$/);
    if (Deno.build.os === "linux") assertMatch(String(q.details.kvm), /^(usable|not usable: .+)$/);
    const text = await run(home, ["doctor"]);
    assertMatch(text.stdout, /accel\s+(kvm|tcg)/);
  });
});
