/**
 * The libcove_vz Deno bindings (ffi/cove_vz.ts), tested through the C TEST
 * DOUBLE in tests/ffi/cove_vz_double.c (not a Virtualization.framework):
 * string passing and freeing, nonblocking waits, error envelopes, many VMs
 * at once, descriptors, and refusal of a wrong ABI version.
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../helpers/assert.ts";
import { buildDouble, WRONG_ABI_VERSION } from "./build.ts";
import {
  COVE_VZ_ABI_VERSION,
  COVE_VZ_ERROR_DOMAIN,
  CoveVz,
  CoveVzErr,
  FfiError,
  findLibrary,
  libraryCandidates,
  openCoveVz,
  openLibraryAt,
  unpackEmbedded,
  type VzConfig,
  VzError,
  type VzEvent,
} from "../../ffi/cove_vz.ts";
import { fds, readableFromFd, writeAllFd } from "../../ffi/fd.ts";

const linuxConfig = (extra: Partial<VzConfig> = {}): VzConfig => ({
  cpuCount: 2,
  memorySize: 2 * 2 ** 30,
  platform: { type: "generic" },
  bootLoader: { type: "linux", kernel: "/nonexistent/Image", commandLine: "console=hvc0" },
  socket: true,
  memoryBalloon: true,
  ...extra,
});

async function open(): Promise<CoveVz> {
  const { path } = await buildDouble();
  return openLibraryAt(path);
}

/** Collects a VM's events until pred matches one (or fails after many waits). */
async function waitFor(vz: CoveVz, vm: number, pred: (e: VzEvent) => boolean): Promise<VzEvent[]> {
  const seen: VzEvent[] = [];
  for (let i = 0; i < 200; i++) {
    const { event, closed } = await vz.nextEvent(vm, 100);
    if (event) {
      seen.push(event);
      if (pred(event)) return seen;
    }
    if (closed) break;
  }
  throw new Error(`event not seen; got ${JSON.stringify(seen)}`);
}

Deno.test("bindings refuse a library that speaks another ABI version", async () => {
  const { wrongAbiPath } = await buildDouble();
  const err = assertThrows(() => openLibraryAt(wrongAbiPath), FfiError);
  assertEquals(err.kind, "abi_mismatch");
  assertMatch(
    err.message,
    new RegExp(`ABI version ${WRONG_ABI_VERSION}, this cove needs ${COVE_VZ_ABI_VERSION}`),
  );
  assert(!err.message.includes("\n"), "the message is one line");
});

Deno.test("bindings accept the matching ABI version and report it", async () => {
  const vz = await open();
  try {
    assertEquals(vz.abiVersion, COVE_VZ_ABI_VERSION);
    assertEquals(vz.abiVersionOfLibrary(), COVE_VZ_ABI_VERSION);
  } finally {
    vz.close();
  }
});

Deno.test("every string the library returns is freed exactly once, errors included", async () => {
  // A private copy of the double gets its own counters.
  const { path } = await buildDouble();
  const dir = await Deno.makeTempDir();
  const copy = `${dir}/libcove_vz.so`;
  await Deno.copyFile(path, copy);
  const counters = Deno.dlopen(copy, {
    cove_double_live_strings: { parameters: [], result: "i64" },
    cove_double_bad_frees: { parameters: [], result: "i64" },
  });
  const vz = openLibraryAt(copy);
  try {
    await vz.hostInfo();
    await vz.validate(linuxConfig());
    await assertRejects(() => vz.validate(linuxConfig({ cpuCount: 0 })), VzError);
    const vm = await vz.create(linuxConfig());
    await vz.start(vm);
    await vz.nextEvent(vm, 0);
    await vz.state(vm);
    await assertRejects(() => vz.start(vm), VzError);
    await vz.stop(vm);
    await vz.release(vm);
    await assertRejects(() => vz.state(vm), VzError);
    assertThrows(() => vz.showWindow(1_000_000, { title: "x", width: 1, height: 1 }), VzError);
    assertEquals(vz.pump(0), 0);
  } finally {
    assertEquals(Number(counters.symbols.cove_double_live_strings()), 0, "strings left unfreed");
    assertEquals(Number(counters.symbols.cove_double_bad_frees()), 0, "frees of unknown pointers");
    vz.close();
    counters.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("strings cross the boundary as UTF-8 unchanged in both directions", async () => {
  const vz = await open();
  const dir = await Deno.makeTempDir();
  try {
    const ipsw = `${dir}/Ünïcødé 🚀 macOS.ipsw`;
    await Deno.writeTextFile(ipsw, "not really an IPSW");
    const image = await vz.restoreImageLoad(ipsw);
    assertEquals(image.url, ipsw);
    assertEquals(image.requirements?.minimumCPUCount, 2);
  } finally {
    vz.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a blocking next_event leaves the event loop running", async () => {
  const vz = await open();
  try {
    const vm = await vz.create(linuxConfig());
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    let ticksWhenDone = -1;
    // No event is queued on a fresh VM: the call blocks in C for its full timeout.
    const pending = vz.nextEvent(vm, 300).then((r) => {
      ticksWhenDone = ticks;
      return r;
    });
    await new Promise((r) => setTimeout(r, 60));
    const ticksMeanwhile = ticks;
    const r = await pending;
    clearInterval(timer);
    assertEquals(r.event, null);
    assert(ticksMeanwhile > 0, "timers fired while next_event was blocked");
    assert(ticksWhenDone >= ticksMeanwhile, "the call resolved after the timers ran");
    await vz.release(vm);
  } finally {
    vz.close();
  }
});

Deno.test("failures come back as envelopes with the NSError domain, code and message", async () => {
  const vz = await open();
  try {
    const bad = await assertRejects(() => vz.validate(linuxConfig({ cpuCount: 0 })), VzError);
    assertEquals(bad.domain, "VZErrorDomain");
    assertEquals(bad.code, 2);
    assertMatch(bad.message, /number of CPUs/);

    const unknown = await assertRejects(() => vz.state(987654), VzError);
    assertEquals(unknown.domain, COVE_VZ_ERROR_DOMAIN);
    assertEquals(unknown.code, CoveVzErr.NoSuchHandle);

    const malformed = await (async () => {
      const b = new TextEncoder().encode("{not json\0");
      const ptr = await vz.raw.cove_vz_validate(b);
      const text = Deno.UnsafePointerView.getCString(ptr!);
      vz.raw.cove_free(ptr);
      return JSON.parse(text);
    })();
    assertEquals(malformed.ok, false);
    assertEquals(malformed.error.domain, COVE_VZ_ERROR_DOMAIN);
    assertEquals(malformed.error.code, CoveVzErr.BadRequest);

    const vm = await vz.create(linuxConfig());
    const transition = await assertRejects(() => vz.pause(vm), VzError);
    assertEquals([transition.domain, transition.code], ["VZErrorDomain", 4]);
    const refused = await (async () => {
      await vz.start(vm);
      return await assertRejects(() => vz.vsockConnect(vm, 22), VzError);
    })();
    assertEquals([refused.domain, refused.code], ["NSPOSIXErrorDomain", 61]);
    await vz.stop(vm);
    await vz.release(vm);
  } finally {
    vz.close();
  }
});

Deno.test("many VMs run at once, each with its own handle and event queue", async () => {
  const vz = await open();
  const n = 16;
  try {
    const handles = await Promise.all(Array.from({ length: n }, () => vz.create(linuxConfig())));
    assertEquals(new Set(handles).size, n, "handles are distinct");
    await Promise.all(handles.map((h) => vz.start(h)));
    const histories = await Promise.all(
      handles.map((h) => waitFor(vz, h, (e) => e.type === "state" && e.state === "running")),
    );
    for (const hist of histories) {
      assertEquals(hist.map((e) => e.type === "state" ? e.state : e.type), ["starting", "running"]);
    }
    // Stop half by force and half by a guest shutdown, concurrently.
    await Promise.all(handles.map((h, i) => i % 2 ? vz.stop(h) : vz.requestStop(h)));
    const ends = await Promise.all(
      handles.map((h, i) =>
        waitFor(
          vz,
          h,
          (e) => i % 2 ? e.type === "state" && e.state === "stopped" : e.type === "guest-stopped",
        )
      ),
    );
    assertEquals(ends.length, n);
    for (const h of handles) assertEquals((await vz.state(h)).state, "stopped");
    await Promise.all(handles.map((h) => vz.release(h)));
    for (const h of handles) assertEquals((await vz.nextEvent(h, 0)).closed, true);
  } finally {
    vz.close();
  }
});

Deno.test("lifecycle calls follow VZ's states: pause, resume, save, restore", async () => {
  const vz = await open();
  const dir = await Deno.makeTempDir();
  try {
    const vm = await vz.create(linuxConfig());
    await vz.start(vm);
    await vz.pause(vm);
    assertEquals((await vz.state(vm)).state, "paused");
    await vz.save(vm, `${dir}/state.vzvmsave`);
    await vz.stop(vm);
    await vz.restore(vm, `${dir}/state.vzvmsave`);
    assertEquals((await vz.state(vm)).state, "paused");
    await vz.resume(vm);
    const s = await vz.state(vm);
    assertEquals([s.state, s.canPause, s.canRequestStop], ["running", true, true]);
    assertEquals(await vz.setBalloonTarget(vm, 1024 * 2 ** 20 + 5), 1024 * 2 ** 20);
    await vz.stop(vm);
    await vz.release(vm);
  } finally {
    vz.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vsock connect returns a descriptor the caller reads and writes", async () => {
  const vz = await open();
  try {
    const vm = await vz.create(linuxConfig());
    await vz.start(vm);
    const conn = await vz.vsockConnect(vm, 2222);
    assertEquals(conn.destinationPort, 2222);
    await writeAllFd(conn.fd, new TextEncoder().encode("ping\n"));
    const reader = readableFromFd(conn.fd, { sliceMs: 20 }).getReader();
    const { value } = await reader.read();
    assertEquals(new TextDecoder().decode(value), "ping\n");
    await reader.cancel();
    await vz.stop(vm);
    await vz.release(vm);
  } finally {
    vz.close();
  }
});

Deno.test("vsock listen delivers guest connections as events carrying descriptors", async () => {
  const vz = await open();
  try {
    const vm = await vz.create(linuxConfig());
    await vz.start(vm);
    await vz.vsockListen(vm, 5000);
    const events = await waitFor(vz, vm, (e) => e.type === "vsock-connection");
    const ev = events.at(-1)!;
    assert(ev.type === "vsock-connection");
    assertEquals(ev.port, 5000);
    const chunks: string[] = [];
    for await (const c of readableFromFd(ev.fd, { sliceMs: 20 })) {
      chunks.push(new TextDecoder().decode(c));
    }
    assertEquals(chunks.join(""), "hello from guest port 5000\n");
    await vz.vsockUnlisten(vm, 5000);
    await vz.stop(vm);
    await vz.release(vm);
  } finally {
    vz.close();
  }
});

Deno.test("the serial console is carried over pipes the caller creates", async () => {
  const vz = await open();
  const f = fds();
  const [guestIn, hostOut] = f.pipe(); // host writes -> guest reads
  const [hostIn, guestOut] = f.pipe(); // guest writes -> host reads
  try {
    const vm = await vz.create(linuxConfig({
      serialPorts: [{ type: "fileHandles", readFd: guestIn, writeFd: guestOut }],
    }));
    // The library dup()s what it is given: the caller closes its guest ends now.
    f.close(guestIn);
    f.close(guestOut);
    await vz.start(vm);
    const reader = readableFromFd(hostIn, { sliceMs: 20 }).getReader();
    let text = "";
    const readUntil = async (needle: string) => {
      while (!text.includes(needle)) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
    };
    await readUntil("guest running\n");
    await writeAllFd(hostOut, new TextEncoder().encode("uname\n"));
    await readUntil("echo: uname\n");
    await writeAllFd(hostOut, new TextEncoder().encode("poweroff\n"));
    await waitFor(vz, vm, (e) => e.type === "guest-stopped");
    await vz.release(vm);
    await readUntil("\u0000never"); // the library closed its ends: the stream ends
    assertMatch(text, /cove-double: guest running\necho: uname\n/);
  } finally {
    f.close(hostOut);
    vz.close();
  }
});

Deno.test("macOS install reports progress, finishes, and can be cancelled", async () => {
  const vz = await open();
  const dir = await Deno.makeTempDir();
  try {
    const ipsw = `${dir}/restore.ipsw`;
    await Deno.writeTextFile(ipsw, "x");
    const image = await vz.restoreImageLoad(ipsw);
    const machineIdentifier = await vz.machineIdentifierNew("mac");
    await vz.macAuxiliaryStorageCreate(`${dir}/aux.img`, image.requirements!.hardwareModel);
    const exists = await assertRejects(
      () => vz.macAuxiliaryStorageCreate(`${dir}/aux.img`, image.requirements!.hardwareModel),
      VzError,
    );
    assertEquals([exists.domain, exists.code], ["NSCocoaErrorDomain", 516]);
    const config: VzConfig = {
      cpuCount: 2,
      memorySize: 4 * 2 ** 30,
      platform: {
        type: "mac",
        hardwareModel: image.requirements!.hardwareModel,
        machineIdentifier,
        auxiliaryStorage: `${dir}/aux.img`,
      },
      bootLoader: { type: "macos" },
    };
    const vm = await vz.create(config);
    await vz.installMacOS(vm, ipsw);
    const done = await waitFor(
      vz,
      vm,
      (e) => e.type === "install-finished" || e.type === "install-failed",
    );
    const fractions = done.flatMap((e) => e.type === "install-progress" ? [e.fraction] : []);
    assertEquals(fractions.at(-1), 1);
    assert(fractions.every((f, i) => i === 0 || f >= fractions[i - 1]), "progress only grows");
    assertEquals(done.at(-1)!.type, "install-finished");

    await vz.installMacOS(vm, ipsw);
    await vz.installCancel(vm);
    const cancelled = await waitFor(
      vz,
      vm,
      (e) => e.type === "install-failed" || e.type === "install-finished",
    );
    const last = cancelled.at(-1)!;
    assert(last.type === "install-failed", `expected install-failed, got ${last.type}`);
    assertEquals(last.error.code, 9);
    await vz.release(vm);
  } finally {
    vz.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the loader looks in COVE_VZ_LIBRARY, then next to the executable, then the dev build", () => {
  const env = (v?: string) => (n: string) => n === "COVE_VZ_LIBRARY" ? v : undefined;
  const dev = libraryCandidates({
    env: env(),
    execPath: "/opt/cove/bin/cove",
    root: "/src",
    standalone: false,
  });
  assertEquals(dev.map((c) => c.source), ["executable", "dev-release", "dev-debug"]);
  assertEquals(dev[0].path.startsWith("/opt/cove/bin/libcove_vz."), true);
  assertEquals(dev[1].path.startsWith("/src/swift-shim/.build/release/"), true);
  const compiled = libraryCandidates({
    env: env(),
    execPath: "/usr/local/bin/cove",
    root: "/v",
    standalone: true,
  });
  assertEquals(compiled.map((c) => c.source), ["executable", "embedded"]);
  const explicit = libraryCandidates({ env: env("/x/lib.dylib"), execPath: "/a/b", root: "/r" });
  assertEquals(explicit, [{ path: "/x/lib.dylib", source: "env" }]);
  const missing = assertThrows(
    () => findLibrary({ env: env("/nonexistent/libcove_vz.dylib") }),
    FfiError,
  );
  assertEquals(missing.kind, "not_found");
  assertMatch(
    missing.message,
    /^COVE_VZ_LIBRARY names \/nonexistent\/libcove_vz\.dylib, which does not exist$/,
  );
  const none = assertThrows(
    () =>
      findLibrary({
        env: env(),
        execPath: "/nonexistent/cove",
        root: "/nonexistent",
        standalone: false,
      }),
    FfiError,
  );
  assertMatch(none.message, /libcove_vz not found .*make shim/);
});

Deno.test("an embedded library is copied to a private cache dir, loaded, and version-checked", async () => {
  const { path, wrongAbiPath } = await buildDouble();
  const tree = await Deno.makeTempDir();
  try {
    const fake = `${tree}/vfs/swift-shim/.build/release`;
    await Deno.mkdir(fake, { recursive: true });
    await Deno.copyFile(path, `${fake}/libcove_vz.so`);
    const opts = {
      env: () => undefined,
      execPath: `${tree}/bin/cove`,
      root: `${tree}/vfs`,
      standalone: true,
      cacheDir: `${tree}/cache`,
      fileName: "libcove_vz.so",
    };
    const vz = await openCoveVz(opts);
    try {
      assert(vz.path.startsWith(`${tree}/cache/`), `loaded from the cache copy, not ${vz.path}`);
      const info = await Deno.stat(vz.path.slice(0, vz.path.lastIndexOf("/")));
      assertEquals(info.mode! & 0o777, 0o700);
      assertEquals((await vz.hostInfo()).testDouble, true);
    } finally {
      vz.close();
    }
    // The same content is reused, not copied again.
    assertEquals(await unpackEmbedded(`${fake}/libcove_vz.so`, opts), vz.path);
    // A wrong-ABI library embedded in the binary is refused too.
    await Deno.copyFile(wrongAbiPath, `${fake}/libcove_vz.so`);
    const err = await assertRejects(() => openCoveVz(opts), FfiError);
    assertEquals(err.kind, "abi_mismatch");
  } finally {
    await Deno.remove(tree, { recursive: true });
  }
});

Deno.test("an embedded library that cannot be unpacked fails with one clear line", async () => {
  const { path } = await buildDouble();
  const tree = await Deno.makeTempDir();
  try {
    // A cache "directory" under a regular file cannot be created, even by root.
    await Deno.writeTextFile(`${tree}/file`, "");
    const err = await assertRejects(
      () => unpackEmbedded(path, { cacheDir: `${tree}/file/cache`, fileName: "libcove_vz.so" }),
      FfiError,
    );
    assertEquals(err.kind, "embedded_unusable");
    assertMatch(err.message, /^cannot unpack the embedded libcove_vz into .*set COVE_VZ_LIBRARY/);
    assert(!err.message.includes("\n"));
  } finally {
    await Deno.remove(tree, { recursive: true });
  }
});

Deno.test("importing the bindings loads no library and needs no permission at all", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const main = `${dir}/main.ts`;
    await Deno.writeTextFile(
      main,
      `const m = await import(${
        JSON.stringify(new URL("../../ffi/cove_vz.ts", import.meta.url).href)
      });
console.log(typeof m.openCoveVz);\n`,
    );
    // No --allow-* flags: reading env, files or dlopen at import time would fail.
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--no-lock", "--no-config", main],
      env: { COVE_VZ_LIBRARY: "/nonexistent/libcove_vz.dylib", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(out.success, `import failed: ${new TextDecoder().decode(out.stderr)}`);
    assertEquals(new TextDecoder().decode(out.stdout).trim(), "function");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
