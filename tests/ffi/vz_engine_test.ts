/**
 * The vz engine end to end over the C TEST DOUBLE of libcove_vz (not a
 * Virtualization.framework): validate, start, the serial console over
 * pipes, guest and host stops, suspend and restore, and the macOS install
 * with progress and cancellation.
 */
import {
  assert,
  assertCoveError,
  assertEquals,
  assertMatch,
  assertRejects,
} from "../helpers/assert.ts";
import { buildDouble } from "./build.ts";
import { CoveError } from "../../core/errors.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import type { VmSpec } from "../../core/spec/schema.ts";
import type { EngineEvent, HostInfo, RunningVm, VmPaths } from "../../engines/engine.ts";
import { readIdentity, VzEngine } from "../../engines/vz/mod.ts";
import { installMacOS } from "../../engines/vz/install.ts";
import { openLibraryAt } from "../../ffi/cove_vz.ts";
import { Bundle } from "../../core/store/bundle.ts";

const host: HostInfo = {
  os: "darwin",
  arch: "arm64",
  cpus: 8,
  memory: 16 * 2 ** 30,
  macosVersion: "15.1",
};

async function engine(): Promise<VzEngine> {
  const { path } = await buildDouble();
  return new VzEngine({ open: () => Promise.resolve(openLibraryAt(path)) });
}

async function bundle(): Promise<VmPaths> {
  const dir = await Deno.makeTempDir({ prefix: "cove-vz-engine-" });
  await Deno.writeFile(`${dir}/disk.img`, new Uint8Array(4096));
  const image = new Uint8Array(128);
  image.set(new TextEncoder().encode("ARM\x64"), 0x38);
  await Deno.writeFile(`${dir}/Image`, image);
  return new Bundle("t", dir).vmPaths();
}

function spec(extra = ""): VmSpec {
  return applyDefaults(
    parseSpec(
      `os: linux\narch: arm64\ncpus: 2\nmemory: 1GiB\nboot: { loader: kernel, kernel: Image }\n${extra}`,
    ),
    host,
    "t",
  );
}

/** Reads the console until `needle` appears. */
function consoleReader(vm: RunningVm) {
  const reader = vm.consoleOutput.getReader();
  let text = "";
  return {
    async until(needle: string): Promise<string> {
      while (!text.includes(needle)) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`console ended before '${needle}': ${text}`);
        text += new TextDecoder().decode(value);
      }
      return text;
    },
    async rest(): Promise<void> {
      while (!(await reader.read()).done) { /* drain to the end */ }
    },
  };
}

async function collect(events: ReadableStream<EngineEvent>): Promise<EngineEvent[]> {
  const out: EngineEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

Deno.test("vz engine runs a Linux VM: console both ways, then the guest powers off", async () => {
  const eng = await engine();
  const paths = await bundle();
  try {
    const s = spec();
    await eng.validate(s, host, paths);
    const vm = await eng.start({ name: "t", spec: s, paths, graphics: false, restore: true, host });
    const events = collect(vm.events);
    const con = consoleReader(vm);
    await con.until("guest running\n");
    await vm.writeConsole(new TextEncoder().encode("hello vz\n"));
    await con.until("echo: hello vz\n");
    assertEquals(vm.state(), "running");
    assertEquals(vm.info().engine, "vz");
    await vm.writeConsole(new TextEncoder().encode("poweroff\n"));
    assertEquals(await vm.wait(), { reason: "guest" });
    await con.rest(); // the console stream ends with the VM
    const seen = await events;
    assertEquals(seen.at(-1), { type: "exit", exit: { reason: "guest" } });
    assert(
      seen.some((e) => e.type === "state" && e.state === "running"),
      "a running state was reported",
    );
    const id = await readIdentity(paths.machine);
    assert(id.vzMachineIdentifier, "a generic machine identifier was created and kept");
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("vz engine: request stop ends as a guest stop, stop ends as a host stop", async () => {
  const eng = await engine();
  const paths = await bundle();
  try {
    const a = await eng.start({
      name: "t",
      spec: spec(),
      paths,
      graphics: false,
      restore: false,
      host,
    });
    await a.requestStop();
    assertEquals(await a.wait(), { reason: "guest" });
    const b = await eng.start({
      name: "t",
      spec: spec(),
      paths,
      graphics: false,
      restore: false,
      host,
    });
    await b.pause();
    await b.resume();
    await b.stop();
    assertEquals(await b.wait(), { reason: "host" });
    await assertCoveError(() => b.writeConsole(new Uint8Array([1])));
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("vz engine suspends to the bundle and the next start resumes from it", async () => {
  const eng = await engine();
  const paths = await bundle();
  try {
    const s = spec("entropy: false\n"); // the double, like VZ, cannot save an entropy device
    const a = await eng.start({ name: "t", spec: s, paths, graphics: false, restore: true, host });
    await a.suspend();
    assertEquals(await a.wait(), { reason: "suspended" });
    assert((await Deno.stat(paths.savedState)).isFile, "the machine state was saved");
    const b = await eng.start({ name: "t", spec: s, paths, graphics: false, restore: true, host });
    assertEquals(b.state(), "running");
    await assertRejects(() => Deno.stat(paths.savedState), Deno.errors.NotFound);
    await b.stop();
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("vz engine refuses to suspend a VM whose devices VZ cannot save, and it keeps running", async () => {
  const eng = await engine();
  const paths = await bundle();
  try {
    const vm = await eng.start({
      name: "t",
      spec: spec("entropy: true\n"),
      paths,
      graphics: false,
      restore: false,
      host,
    });
    const err = await assertCoveError(() => vm.suspend());
    assertEquals(err.code, "vz.suspend");
    assertMatch(err.message, /cannot be suspended: Saving is not supported with an entropy device/);
    assertEquals(vm.state(), "running");
    await vm.stop();
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("vz engine saves the state of a paused VM for a snapshot, stays paused, and a start resumes from it keeping the file", async () => {
  const eng = await engine();
  const paths = await bundle();
  try {
    const s = spec("entropy: false\n");
    const a = await eng.start({ name: "t", spec: s, paths, graphics: false, restore: false, host });
    await a.pause();
    const state = `${paths.dir}/snap.state`;
    await a.saveState(state);
    assertEquals(a.state(), "paused");
    await a.resume();
    assertEquals(a.state(), "running");
    await a.stop();
    const b = await eng.start({
      name: "t",
      spec: s,
      paths,
      graphics: false,
      restore: false,
      host,
      resumeFrom: state,
    });
    assertEquals(b.state(), "running");
    assert((await Deno.stat(state)).isFile, "a snapshot's state stays for later restores");
    await b.stop();
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("vz engine refuses a snapshot's state save in one line when VZ cannot save the configuration", async () => {
  const eng = await engine();
  const paths = await bundle();
  try {
    const vm = await eng.start({
      name: "t",
      spec: spec("entropy: true\n"),
      paths,
      graphics: false,
      restore: false,
      host,
    });
    const support = vm.saveStateSupport();
    assertEquals(support.available, false);
    assertMatch(support.reason ?? "", /^Saving is not supported with an entropy device/);
    await vm.pause();
    const err = await assertRejects(() => vm.saveState(`${paths.dir}/x.state`), CoveError);
    assertEquals(err.code, "vz.save");
    assertMatch(
      err.message,
      /state cannot be saved: Saving is not supported with an entropy device/,
    );
    await vm.resume();
    await vm.stop();
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("vz engine refuses a macOS VM that was never installed", async () => {
  const eng = await engine();
  const paths = await bundle();
  try {
    const s = applyDefaults(parseSpec("os: macos\n"), host, "m");
    const err = await assertRejects(
      () => eng.start({ name: "m", spec: s, paths, graphics: false, restore: false, host }),
      CoveError,
    );
    assertEquals(err.code, "vz.not_installed");
    assertMatch(err.hint ?? "", /--from ipsw:latest/);
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("vz engine names the missing piece of an installed macOS VM's identity", async () => {
  const eng = await engine();
  const paths = await bundle();
  try {
    const s = applyDefaults(parseSpec("os: macos\n"), host, "m");
    await Deno.writeFile(paths.auxStorage, new Uint8Array(16));
    await Deno.writeTextFile(paths.machine, JSON.stringify({ vzMachineIdentifier: "AAAA" }));
    const noModel = await assertRejects(
      () => eng.start({ name: "m", spec: s, paths, graphics: false, restore: false, host }),
      CoveError,
    );
    assertEquals(noModel.code, "vz.identity");
    assertMatch(noModel.message, /lost its macOS hardware model/);
    await Deno.writeTextFile(paths.machine, JSON.stringify({ vzHardwareModel: "AAAA" }));
    const noId = await assertRejects(
      () => eng.start({ name: "m", spec: s, paths, graphics: false, restore: false, host }),
      CoveError,
    );
    assertEquals(noId.code, "vz.identity");
    assertMatch(noId.message, /lost its macOS machine identifier/);
  } finally {
    await Deno.remove(paths.dir, { recursive: true });
  }
});

Deno.test("vz engine capabilities come from the library's host info", async () => {
  const eng = await engine();
  const caps = await eng.capabilities(host);
  assertEquals(caps.available, true);
  assertEquals(caps.guests["linux/arm64"].available, true);
  assertEquals(caps.guests["linux/x86_64"].available, false);
  assertEquals(caps.features.bridged?.available, false);
  assertEquals(caps.features.suspend?.available, true);
  const linux = await eng.capabilities({ ...host, os: "linux", arch: "x86_64" });
  assertEquals(linux.available, false);
});

Deno.test("macOS install records the identity, reports growing progress, and can be cancelled", async () => {
  const { path } = await buildDouble();
  const vz = openLibraryAt(path);
  const paths = await bundle();
  try {
    const ipsw = `${paths.dir}/restore.ipsw`;
    await Deno.writeTextFile(ipsw, "x");
    const progress: number[] = [];
    const r = await installMacOS({
      ipsw,
      auxiliaryStorage: paths.auxStorage,
      machine: paths.machine,
      disk: `${paths.dir}/disk.img`,
      vz,
    }, (f) => progress.push(f));
    assertEquals(progress.at(-1), 1);
    assert(progress.every((f, i) => i === 0 || f >= progress[i - 1]), "progress only grows");
    assertEquals(r.cpus, 4);
    const id = await readIdentity(paths.machine);
    assertEquals(id.vzHardwareModel, r.hardwareModel);
    assertEquals(id.vzMachineIdentifier, r.machineIdentifier);
    assert((await Deno.stat(r.auxiliaryStorage)).isFile);

    const ac = new AbortController();
    const err = await assertRejects(
      () =>
        installMacOS({
          ipsw,
          auxiliaryStorage: paths.auxStorage,
          machine: paths.machine,
          disk: `${paths.dir}/disk.img`,
          vz,
          signal: ac.signal,
        }, () => ac.abort()),
      CoveError,
    );
    assertEquals(err.code, "vz.cancelled");
  } finally {
    vz.close();
    await Deno.remove(paths.dir, { recursive: true });
  }
});
