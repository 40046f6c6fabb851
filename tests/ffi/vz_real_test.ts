/**
 * The bindings against the REAL libcove_vz.dylib on macOS (CI: the macOS
 * workflow, after `make shim sign-dev`). Hosted runners cannot boot VMs, so
 * this checks loading, host info, identities and configuration building and
 * validation only. Elsewhere these tests are ignored (the C test double
 * covers the bindings there).
 */
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import {
  COVE_VZ_ABI_VERSION,
  COVE_VZ_ERROR_DOMAIN,
  type CoveVz,
  CoveVzErr,
  openCoveVz,
  type VzConfig,
  VzError,
} from "../../ffi/cove_vz.ts";

const onMac = Deno.build.os === "darwin";
let lib: CoveVz | undefined;

async function vz(): Promise<CoveVz> {
  lib ??= await openCoveVz();
  return lib;
}

async function files(): Promise<{ dir: string; kernel: string; disk: string }> {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "cove-vz-real-" }));
  const image = new Uint8Array(4096);
  image.set(new TextEncoder().encode("ARM\x64"), 0x38);
  await Deno.writeFile(`${dir}/Image`, image);
  const disk = await Deno.open(`${dir}/disk.img`, { write: true, create: true });
  await disk.truncate(64 * 2 ** 20);
  disk.close();
  return { dir, kernel: `${dir}/Image`, disk: `${dir}/disk.img` };
}

function linux(f: { kernel: string; disk: string }, extra: Partial<VzConfig> = {}): VzConfig {
  return {
    cpuCount: 1,
    memorySize: 512 * 2 ** 20,
    platform: { type: "generic" },
    bootLoader: { type: "linux", kernel: f.kernel, commandLine: "console=hvc0" },
    storage: [{
      type: "virtio-block",
      path: f.disk,
      readOnly: false,
      caching: "cached",
      sync: "full",
      identifier: "root",
    }],
    network: [{ macAddress: "52:54:00:12:34:56", attachment: { type: "nat" } }],
    entropy: true,
    memoryBalloon: true,
    socket: true,
    ...extra,
  };
}

Deno.test({
  name: "the real libcove_vz loads, speaks this ABI version and reports the host",
  ignore: !onMac,
  async fn() {
    const v = await vz();
    assertEquals(v.abiVersion, COVE_VZ_ABI_VERSION);
    const host = await v.hostInfo();
    assertMatch(host.macosVersion, /^\d+\.\d+\.\d+$/);
    assert(host.cpuCount.min >= 1 && host.cpuCount.max >= host.cpuCount.min);
    assert(["installed", "notInstalled", "notSupported"].includes(host.rosetta));
    if (Deno.env.get("COVE_VZ_EXPECT_ENTITLED") === "1") {
      assertEquals(
        host.entitlements.virtualization,
        true,
        "make sign-dev gave deno the entitlement",
      );
    }
  },
});

Deno.test({
  name: "the real shim builds and validates a Linux configuration without booting it",
  ignore: !onMac,
  async fn() {
    const v = await vz();
    const f = await files();
    try {
      const id = await v.machineIdentifierNew("generic");
      assert(id.length > 0);
      await v.efiVariableStoreCreate(`${f.dir}/efi-vars.fd`);
      assert((await Deno.stat(`${f.dir}/efi-vars.fd`)).isFile);
      const host = await v.hostInfo();
      const configs = [
        linux(f, { platform: { type: "generic", machineIdentifier: id } }),
        linux(f, { bootLoader: { type: "efi", variableStore: `${f.dir}/efi-vars.fd` } }),
        linux(f, {
          directoryShares: [{
            tag: "share",
            share: { type: "single", path: f.dir, readOnly: true },
          }],
        }),
        linux(f, {
          graphics: { type: "virtio", scanouts: [{ width: 1024, height: 768 }] },
          keyboards: ["usb"],
          pointingDevices: ["usb"],
        }),
        linux(f, {
          storage: [{
            type: "usb-mass-storage",
            path: f.disk,
            readOnly: true,
            caching: "automatic",
            sync: "full",
          }],
        }),
      ];
      for (const c of configs) {
        if (host.supported && host.entitlements.virtualization) {
          await v.validate(c);
        } else {
          // Without VZ support or the entitlement, VZ itself refuses; the shim still builds the objects.
          await v.validate(c).catch((e) => assert(e instanceof VzError, String(e)));
        }
      }
    } finally {
      await Deno.remove(f.dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "the real shim refuses bad configurations with its own error codes",
  ignore: !onMac,
  async fn() {
    const v = await vz();
    const f = await files();
    try {
      const host = await v.hostInfo();
      const bad = await assertRejects(() => v.validate(linux(f, { cpuCount: 100000 })), VzError);
      assertEquals([bad.domain, bad.code], [COVE_VZ_ERROR_DOMAIN, CoveVzErr.BadRequest]);
      assertMatch(bad.message, /^cpuCount: 100000 is outside/);
      const missing = await assertRejects(
        () => v.validate(linux(f, { bootLoader: { type: "linux", kernel: `${f.dir}/nope` } })),
        VzError,
      );
      assertEquals([missing.domain, missing.code], [COVE_VZ_ERROR_DOMAIN, CoveVzErr.Io]);
      if (Number(host.macosVersion.split(".")[0]) < 26) {
        const asif = await assertRejects(
          () =>
            v.validate(
              linux(f, {
                storage: [{
                  type: "virtio-block",
                  path: f.disk,
                  format: "asif",
                  readOnly: false,
                  caching: "automatic",
                  sync: "full",
                }],
              }),
            ),
          VzError,
        );
        assertEquals([asif.code, asif.requires], [CoveVzErr.Unsupported, "26.0"]);
      }
      const handle = await assertRejects(() => v.nextEvent(424242, 0), VzError);
      assertEquals(handle.code, CoveVzErr.NoSuchHandle);
    } finally {
      await Deno.remove(f.dir, { recursive: true });
    }
  },
});
