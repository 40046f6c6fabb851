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
import { linuxTest } from "../helpers/guard.ts";

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

/** What this host's KVM really does with the probe firmware, found without cove's probe code. */
async function kvmTruth(dir: string): Promise<"absent" | "usable" | "hangs" | "fails"> {
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
  } catch {
    return "absent";
  }
  const fw = join(dir, "truth.bin");
  await Deno.writeFile(fw, probeFirmware("x86_64"));
  const child = new Deno.Command("qemu-system-x86_64", {
    args: probeArgs("x86_64", fw),
    stdout: "null",
    stderr: "null",
  }).spawn();
  // Twice cove's default bound (5 s): a guest that has not exited by then hangs.
  let hung = false;
  const timer = setTimeout(() => {
    hung = true;
    child.kill("SIGKILL");
  }, 10_000);
  const st = await child.status;
  clearTimeout(timer);
  return hung ? "hangs" : st.code === 85 ? "usable" : "fails";
}

linuxTest({
  name:
    "cove doctor reports what KVM really does on this host (here: nested KVM hangs, so 'not usable' within the probe's bound) and the accelerator that follows",
  needs: "KVM is Linux's (/dev/kvm); on a Mac QEMU guests get hvf or tcg",
  fn: async () => {
    requireTool("qemu-system-x86_64", "qemu-system-x86");
    await withTempDir(async (home) => {
      const truth = await kvmTruth(home);
      // A private TMPDIR: a fresh probe, not an answer cached by an earlier run.
      const tmp = join(home, "tmp");
      await Deno.mkdir(tmp);
      const env = { COVE_QEMU_ACCEL: "", TMPDIR: tmp, COVE_KVM_PROBE_TIMEOUT_MS: "3000" };
      // The probe is bounded: doctor returns well before this kill.
      const r = await run(home, ["doctor", "--format", "json"], { env, timeoutMs: 60_000 });
      assertEquals(r.code, 0, r.stderr);
      const report = JSON.parse(r.stdout) as {
        engines: { engine: string; details: Record<string, unknown> }[];
      };
      const q = report.engines.find((e) => e.engine === "qemu")!;
      const kvm = String(q.details.kvm);
      const accel = String(q.details.accel);
      if (truth === "usable") {
        assertEquals([kvm, accel], ["usable", "kvm"]);
      } else {
        const why = {
          absent: /^not usable: \/dev\/kvm (does not exist|cannot be opened)/,
          hangs: /^not usable: a test guest hung under KVM for 3s \(nested virtualization\?\)$/,
          fails: /^not usable: a test guest failed under KVM: /,
        }[truth];
        assertMatch(kvm, why);
        assertMatch(accel, /^tcg \(kvm not usable: .+\)$/);
      }
      const text = await run(home, ["doctor"], { env });
      assertMatch(text.stdout, new RegExp(`accel\\s+${truth === "usable" ? "kvm" : "tcg"}`));
    });
  },
});
