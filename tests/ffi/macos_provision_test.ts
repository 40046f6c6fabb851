/**
 * A macOS guest's provisioning first boot through the vz engine over the C
 * TEST DOUBLE of libcove_vz (not a Virtualization.framework): the start
 * path carries the account to the library, a field VZ would refuse comes
 * back as one line, and core's bookkeeping around it passes the account on
 * the first boot only and deletes the password once the keys are in.
 */
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { buildDouble } from "./build.ts";
import { CoveError } from "../../core/errors.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { Bundle, BUNDLE_FILES } from "../../core/store/bundle.ts";
import type { HostInfo, VmPaths } from "../../engines/engine.ts";
import { VzEngine, writeIdentity } from "../../engines/vz/mod.ts";
import { openLibraryAt } from "../../ffi/cove_vz.ts";
import {
  applyMacProvisioning,
  completeFirstBoot,
  firstBootProvisioning,
  markGuestProvisioned,
  readInstallRecord,
  writeInstallRecord,
} from "../../core/provision/macos.ts";

const host: HostInfo = {
  os: "darwin",
  arch: "arm64",
  cpus: 8,
  memory: 16 * 2 ** 30,
  macosVersion: "27.0",
};

async function engine(): Promise<VzEngine> {
  const { path } = await buildDouble();
  return new VzEngine({ open: () => Promise.resolve(openLibraryAt(path)) });
}

/** An installed macOS bundle: disk, auxiliary storage and identity. */
async function installed(): Promise<{ bundle: Bundle; paths: VmPaths }> {
  const dir = await Deno.makeTempDir({ prefix: "cove-vz-prov-" });
  const bundle = new Bundle("mac", dir);
  await Deno.writeFile(`${dir}/disk.img`, new Uint8Array(4096));
  await Deno.writeFile(`${dir}/${BUNDLE_FILES.auxStorage}`, new Uint8Array(16));
  await writeIdentity(bundle.machinePath, { vzHardwareModel: "AAAA", vzMachineIdentifier: "BBBB" });
  await writeInstallRecord(bundle, {
    restoreImage: { version: "27.0", build: "27A5000a" },
    hostIdentity: "h",
    installedAt: new Date().toISOString(),
  });
  return { bundle, paths: bundle.vmPaths() };
}

const spec = applyDefaults(
  parseSpec("os: macos\nserial: { mode: none }\nprovision: { user: jane, fullName: Jane Doe }\n"),
  host,
  "mac",
);

Deno.test("the first boot passes the account to the library, deletes the password after the keys, and a later boot passes none", async () => {
  const eng = await engine();
  const { bundle, paths } = await installed();
  try {
    await applyMacProvisioning(bundle, { password: "first-boot-pw", host });
    const guestProvisioning = await firstBootProvisioning(bundle, spec);
    assertEquals(guestProvisioning?.username, "jane");
    const vm = await eng.start({
      host,
      name: "mac",
      spec,
      paths,
      graphics: false,
      restore: false,
      guestProvisioning,
    });
    assertEquals(vm.state(), "running");
    await markGuestProvisioned(bundle);
    await completeFirstBoot(bundle, spec, {
      waitSeconds: 5,
      keys: ["ssh-ed25519 AAAA cove"],
      address: () => Promise.resolve({ host: "127.0.0.1", port: 22 }),
      install: (req) => {
        assertEquals(req.password, "first-boot-pw");
        return Promise.resolve();
      },
    });
    await assertRejects(() => Deno.stat(bundle.provisionPasswordPath), Deno.errors.NotFound);
    assert((await readInstallRecord(bundle))?.keysInstalledAt);
    await vm.stop();
    await vm.wait();

    // The second boot: no options (and no password left to pass).
    assertEquals(await firstBootProvisioning(bundle, spec), undefined);
    const again = await eng.start({
      name: "mac",
      spec,
      paths,
      graphics: false,
      restore: false,
      host,
    });
    assertEquals(again.state(), "running");
    await again.stop();
    await again.wait();
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("a user name VZ refuses comes back from the start as one line naming the field", async () => {
  const eng = await engine();
  const { paths } = await installed();
  try {
    const e = await assertRejects(
      () =>
        eng.start({
          host,
          name: "mac",
          spec,
          paths,
          graphics: false,
          restore: false,
          guestProvisioning: {
            username: "",
            fullName: "Jane",
            password: "pw",
            logsInAutomatically: false,
            enablesRemoteLogin: true,
          },
        }),
      CoveError,
    );
    assertEquals(e.code, "vz.provisioning");
    assertMatch(e.message, /^start: macOS refused the guest's user name \(provision\.user\)/);
    assert(!e.message.includes("\n"));
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});
