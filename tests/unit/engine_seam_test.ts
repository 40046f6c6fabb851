/**
 * The engine seam: what differs between engines is a method of the Engine
 * (guest access, restore-image install), with defaults from BaseEngine;
 * core asks the engine and never its name.
 */
import { assertEquals } from "../helpers/assert.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { parseSpec } from "../../core/spec/load.ts";
import type { HostInfo } from "../../core/host.ts";
import { withSshForward } from "../../core/provision/prepare.ts";
import { loadEngine, restoreImageEngineId } from "../../engines/select.ts";

const LINUX: HostInfo = { os: "linux", arch: "x86_64", cpus: 4, memory: 8 * 2 ** 30 };
const MAC: HostInfo = { os: "darwin", arch: "arm64", cpus: 8, memory: 16 * 2 ** 30 };

function spec(yaml: string) {
  return applyDefaults(parseSpec(yaml, "t.yaml"), LINUX, "dev");
}

Deno.test("qemu reaches user-mode NICs through a forward it adds for the ssh port; bridged NICs at their address", async () => {
  const qemu = await loadEngine("qemu");
  const access = qemu.guestAccess();
  const user = spec("networks: [{ mode: user }]");
  assertEquals(access.route(user.networks[0]), "port-forward");
  assertEquals(withSshForward(user, access).networks[0].forwards, [
    { host: 0, guest: 22, protocol: "tcp", address: "127.0.0.1" },
  ]);
  const once = withSshForward(user, access);
  assertEquals(withSshForward(once, access), once, "added once");
  const bridged = spec("networks: [{ mode: bridged, interface: en0 }]");
  assertEquals(access.route(bridged.networks[0]), "guest-address");
  assertEquals(withSshForward(bridged, access), bridged);
});

Deno.test("vz reaches guests at their address and adds nothing (the BaseEngine default)", async () => {
  const vz = await loadEngine("vz");
  const nat = spec("networks: [{ mode: nat }]");
  assertEquals(vz.guestAccess().route(nat.networks[0]), "guest-address");
  assertEquals(withSshForward(nat, vz.guestAccess()), nat);
  assertEquals((await loadEngine("qemu")).restoreImageInstaller(), undefined);
});

Deno.test("restore images are installed by the engine select.ts names for the host, and only vz has an installer", async () => {
  assertEquals(restoreImageEngineId(LINUX), undefined);
  assertEquals(restoreImageEngineId({ ...MAC, arch: "x86_64" }), undefined);
  const id = restoreImageEngineId(MAC);
  assertEquals(id, "vz");
  const installer = (await loadEngine(id!)).restoreImageInstaller();
  assertEquals(typeof installer?.install, "function");
  assertEquals(typeof installer?.latest, "function");
});
