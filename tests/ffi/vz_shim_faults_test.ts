/**
 * The crash and hang paths of the shim, through the C TEST DOUBLE in
 * tests/ffi/cove_vz_double.c (not a Virtualization.framework), which
 * follows the fixed shim's rules (swift-shim/include/cove_vz.h): a release
 * during an install ends the install first, a vsock connect nobody answers
 * ends in COVE_VZ_ERR_TIMEOUT, and descriptors handed out are close-on-exec.
 * The Swift side of each rule is only exercised on a Mac (vz_real_test.ts).
 */
import { assert, assertEquals, assertRejects } from "../helpers/assert.ts";
import { buildDouble } from "./build.ts";
import {
  COVE_VZ_ERROR_DOMAIN,
  CoveVz,
  CoveVzErr,
  openLibraryAt,
  type VzConfig,
  VzError,
  type VzEvent,
} from "../../ffi/cove_vz.ts";
import { fds } from "../../ffi/fd.ts";
import { vzError } from "../../engines/vz/errors.ts";

const linuxConfig: VzConfig = {
  cpuCount: 2,
  memorySize: 2 * 2 ** 30,
  platform: { type: "generic" },
  bootLoader: { type: "linux", kernel: "/nonexistent/Image" },
  socket: true,
};

async function open(): Promise<CoveVz> {
  return openLibraryAt((await buildDouble()).path);
}

/** Every event until the queue says closed (bounded). */
async function drain(vz: CoveVz, vm: number): Promise<{ events: VzEvent[]; closed: boolean }> {
  const events: VzEvent[] = [];
  for (let i = 0; i < 100; i++) {
    const { event, closed } = await vz.nextEvent(vm, 50);
    if (event) events.push(event);
    else if (closed) return { events, closed: true };
  }
  return { events, closed: false };
}

/** Whether a child process that cove spawns sees descriptor fd open. */
async function childSees(fd: number): Promise<boolean> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `test -e /dev/fd/${fd}`],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output();
  return out.success;
}

Deno.test("install preconditions are refused first; a release during an install ends it, then the queue closes", async () => {
  const vz = await open();
  const dir = await Deno.makeTempDir();
  try {
    const ipsw = `${dir}/restore.ipsw`;
    await Deno.writeTextFile(ipsw, "x");
    const image = await vz.restoreImageLoad(ipsw);
    const vm = await vz.create({
      cpuCount: 2,
      memorySize: 4 * 2 ** 30,
      platform: {
        type: "mac",
        hardwareModel: image.requirements!.hardwareModel,
        machineIdentifier: await vz.machineIdentifierNew("mac"),
        auxiliaryStorage: `${dir}/aux.img`,
      },
      bootLoader: { type: "macos" },
    });
    // Preconditions VZMacOSInstaller would raise an exception on are refused first.
    const missing = await assertRejects(() => vz.installMacOS(vm, `${dir}/none.ipsw`), VzError);
    assertEquals([missing.domain, missing.code], [COVE_VZ_ERROR_DOMAIN, CoveVzErr.Io]);
    const isDir = await assertRejects(() => vz.installMacOS(vm, dir), VzError);
    assertEquals([isDir.domain, isDir.code], [COVE_VZ_ERROR_DOMAIN, CoveVzErr.Io]);
    const linux = await vz.create(linuxConfig);
    const notMac = await assertRejects(() => vz.installMacOS(linux, ipsw), VzError);
    assertEquals([notMac.domain, notMac.code], [COVE_VZ_ERROR_DOMAIN, CoveVzErr.BadRequest]);
    await vz.release(linux);

    await vz.installMacOS(vm, ipsw);
    await vz.release(vm);
    const { events, closed } = await drain(vz, vm);
    assert(closed, `the queue closed; events: ${JSON.stringify(events)}`);
    const last = events.at(-1);
    assert(
      last?.type === "install-failed",
      `the install ended cancelled: ${JSON.stringify(events)}`,
    );
    assertEquals(last.error.code, 9);
    await assertRejects(() => vz.installMacOS(vm, ipsw), VzError);
  } finally {
    vz.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a vsock connect to a port nobody listens on fails with a timeout, not a hang", async () => {
  const vz = await open();
  try {
    const vm = await vz.create(linuxConfig);
    await vz.start(vm);
    const e = await assertRejects(() => vz.vsockConnect(vm, 40001), VzError);
    assertEquals([e.domain, e.code], [COVE_VZ_ERROR_DOMAIN, CoveVzErr.Timeout]);
    const cove = vzError(e, "connecting to the guest agent");
    assertEquals(cove.code, "vz.timeout");
    // The VM is still usable afterwards.
    const conn = await vz.vsockConnect(vm, 2222);
    fds().close(conn.fd);
    await vz.stop(vm);
    await vz.release(vm);
  } finally {
    vz.close();
  }
});

Deno.test("descriptors the library hands out are close-on-exec: spawned children do not inherit them", async () => {
  const { path } = await buildDouble();
  const vz = openLibraryAt(path);
  const testOnly = Deno.dlopen(path, {
    cove_double_dup_inheritable: { parameters: ["i32"], result: "i32" },
  });
  try {
    const vm = await vz.create(linuxConfig);
    await vz.start(vm);
    const conn = await vz.vsockConnect(vm, 2222);
    await vz.vsockListen(vm, 5000);
    let accepted: number | undefined;
    for (let i = 0; i < 100 && accepted === undefined; i++) {
      const { event } = await vz.nextEvent(vm, 50);
      if (event?.type === "vsock-connection") accepted = event.fd;
    }
    assert(accepted !== undefined, "a guest connection arrived");
    // The probe itself: an inheritable duplicate is seen by the child.
    const inheritable = testOnly.symbols.cove_double_dup_inheritable(conn.fd);
    assert(inheritable >= 0);
    assert(await childSees(inheritable), "a child sees an inheritable descriptor");
    fds().close(inheritable);
    assertEquals(await childSees(conn.fd), false, "vsock connect descriptor");
    assertEquals(await childSees(accepted), false, "vsock-connection event descriptor");
    fds().close(conn.fd);
    fds().close(accepted);
    await vz.stop(vm);
    await vz.release(vm);
  } finally {
    testOnly.close();
    vz.close();
  }
});

Deno.test("a released VM's queued descriptors are closed and its queue takes no new ones", async () => {
  const vz = await open();
  try {
    const vm = await vz.create(linuxConfig);
    await vz.start(vm);
    await vz.vsockListen(vm, 5001); // queues a vsock-connection event with an fd
    await vz.stop(vm);
    await vz.release(vm);
    const { events, closed } = await drain(vz, vm);
    assert(closed, "the queue closed");
    assertEquals(events.filter((e) => e.type === "vsock-connection"), []);
  } finally {
    vz.close();
  }
});

Deno.test("a recoveryOS start of a VM without a mac platform is refused, and the VM stays startable", async () => {
  const vz = await open();
  try {
    const vm = await vz.create(linuxConfig);
    const e = await assertRejects(() => vz.start(vm, { recovery: true }), VzError);
    assertEquals([e.domain, e.code], [COVE_VZ_ERROR_DOMAIN, CoveVzErr.BadRequest]);
    assertEquals((await vz.state(vm)).state, "stopped");
    await vz.start(vm);
    await vz.stop(vm);
    await vz.release(vm);
  } finally {
    vz.close();
  }
});
