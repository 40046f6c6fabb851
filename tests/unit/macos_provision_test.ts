/**
 * macOS guests ready for work, everything that needs no Mac: the password
 * sources and their refusals, macOS short names, what create says on a host
 * or image older than 27, the install record and each `cove get` answer
 * about iCloud (and that clone and the OCI config keep the record), the
 * VM-limit messages from VZ's error code and the running count, the refused
 * provisioning fields, the ISO keyboard LaunchAgent, and the first-boot
 * bookkeeping (options once, the password gone after the key install, kept
 * on a timeout).
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import plist from "plist";
import { CoveError } from "../../core/errors.ts";
import { parseSpec, SpecError } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { Bundle } from "../../core/store/bundle.ts";
import { Store } from "../../core/store/store.ts";
import {
  applyMacProvisioning,
  completeFirstBoot,
  firstBootProvisioning,
  generatePassword,
  icloudStatus,
  type InstallRecord,
  keyInstallPending,
  macosDetails,
  markGuestProvisioned,
  provisioningPlan,
  readInstallRecord,
  readPasswordFile,
  readPasswordStdin,
  resolvePassword,
  sha256Hex,
  writeInstallRecord,
} from "../../core/provision/macos.ts";
import {
  HID_GRAVE_TILDE,
  HID_NON_US_BACKSLASH,
  ISO_AGENT_LABEL,
  isoKeyboardAgentPlist,
  isoKeyboardAgentScript,
  isoKeyMapping,
} from "../../core/provision/keyboard.ts";
import { authorizedKeysScript } from "../../core/access/askpass.ts";
import { parseTartConfig, tartFromSpec } from "../../core/oci/tart.ts";
import { parseVzProcesses, vmLimitError, vzError } from "../../engines/vz/errors.ts";
import { VzError } from "../../ffi/cove_vz.ts";
import type { HostInfo } from "../../engines/engine.ts";

const host: HostInfo = {
  os: "darwin",
  arch: "arm64",
  cpus: 10,
  memory: 32 * 2 ** 30,
  macosVersion: "27.0",
};

async function tempBundle(name = "mac"): Promise<Bundle> {
  const dir = await Deno.makeTempDir({ prefix: "cove-macprov-" });
  return new Bundle(name, dir);
}

function macSpec(extra = "") {
  return applyDefaults(parseSpec(`os: macos\n${extra}`), host, "mac");
}

function record(extra: Partial<InstallRecord> = {}): InstallRecord {
  return {
    restoreImage: { version: "27.0", build: "27A5000a" },
    hostIdentity: "h-this-mac",
    installedAt: "2026-12-01T10:00:00.000Z",
    ...extra,
  };
}

// ------------------------------------------------------------ passwords

Deno.test("a 0600 one-line password file is read without its newline", async () => {
  const dir = await Deno.makeTempDir();
  const f = join(dir, "pw");
  await Deno.writeTextFile(f, "s3cret pass\n", { mode: 0o600 });
  await Deno.chmod(f, 0o600);
  assertEquals(await readPasswordFile(f), "s3cret pass");
});

Deno.test("a missing, empty, multi-line or group-readable password file is refused with one line", async () => {
  const dir = await Deno.makeTempDir();
  const missing = await assertRejects(() => readPasswordFile(join(dir, "nope")), CoveError);
  assertEquals(missing.code, "password.missing");
  const cases: [string, string, number, RegExp][] = [
    ["empty", "", 0o600, /is empty/],
    ["newline-only", "\n", 0o600, /is empty/],
    ["two", "one\ntwo\n", 0o600, /more than one line/],
    ["wide", "pw\n", 0o640, /readable by others \(mode 0640, wider than 0600\)/],
    ["world", "pw\n", 0o604, /mode 0604/],
  ];
  for (const [name, text, mode, re] of cases) {
    const f = join(dir, name);
    await Deno.writeTextFile(f, text);
    await Deno.chmod(f, mode);
    const e = await assertRejects(() => readPasswordFile(f), CoveError);
    assertMatch(e.message, re);
    assert(!e.message.includes("\n"), "one line");
    if (text.includes("pw")) assert(!e.message.includes("pw\n"), "the password is not shown");
  }
});

Deno.test("--password-stdin reads one line; an empty stdin is refused", async () => {
  const stream = (s: string) => ReadableStream.from([new TextEncoder().encode(s)]);
  assertEquals(await readPasswordStdin(stream("hunter2 horse\n")), "hunter2 horse");
  const e = await assertRejects(() => readPasswordStdin(stream("")), CoveError);
  assertEquals(e.code, "password.empty");
  const two = await assertRejects(() => readPasswordStdin(stream("a\nb\n")), CoveError);
  assertEquals(two.code, "password.lines");
});

Deno.test("without a password source cove generates a strong one, different each time", async () => {
  const a = generatePassword();
  const b = generatePassword();
  assertMatch(a, /^[A-HJ-NP-Za-km-z2-9]{5}(-[A-HJ-NP-Za-km-z2-9]{5}){3}$/);
  assert(a !== b, "random");
  const r = await resolvePassword({});
  assertEquals(r.generated, true);
  const both = await assertRejects(
    () => resolvePassword({ passwordFile: "/x", passwordStdin: true }),
    CoveError,
  );
  assertEquals(both.code, "password.both");
});

// ------------------------------------------------------------ user names

Deno.test("macOS short names: letters, digits, _ - . starting with a letter; reserved names refused", () => {
  assertEquals(macSpec("provision: { user: Jane.Doe-2 }\n").provision.user, "Jane.Doe-2");
  assertEquals(macSpec().provision.user, "admin");
  for (const bad of ["_jane", "jane doe", "jane/doe", "root", "Nobody", "-x", "ümlaut"]) {
    let err: unknown;
    try {
      parseSpec(`os: macos\nprovision: { user: "${bad}" }\n`);
    } catch (e) {
      err = e;
    }
    assert(err instanceof SpecError, `'${bad}' is refused`);
    assertMatch(String((err as SpecError).message), /provision\.user/);
  }
});

Deno.test("Linux user names keep the Unix rule (no upper case, no dots)", () => {
  assert(parseSpec("os: linux\nprovision: { user: dev }\n"));
  for (const bad of ["Dev", "a.b"]) {
    let err: unknown;
    try {
      parseSpec(`os: linux\nprovision: { user: "${bad}" }\n`);
    } catch (e) {
      err = e;
    }
    assert(err instanceof SpecError, `'${bad}' is refused for Linux`);
  }
});

Deno.test("the provision defaults for macOS: admin, no auto login, ssh on", () => {
  const s = macSpec();
  assertEquals([s.provision.user, s.provision.autoLogin, s.provision.ssh], ["admin", false, true]);
});

// ------------------------------------------------------------ create notices

Deno.test("provisioning on a host before macOS 27 says what happens and what to do instead", () => {
  const p = provisioningPlan({ macosVersion: "26.2" }, undefined, true);
  assertEquals(p.unattended, false);
  assertMatch(p.notice!, /needs a macOS 27 host \(this Mac runs 26\.2\)/);
  assertMatch(p.notice!, /Setup Assistant by hand .*Packer recipe/);
  assert(!p.notice!.includes("\n"));
});

Deno.test("an image older than 27 is named with its version and build at create", () => {
  const p = provisioningPlan({ macosVersion: "27.0" }, { version: "26.1", build: "25B78" }, true);
  assertEquals(p.unattended, false);
  assertMatch(p.notice!, /^macOS 26\.1 \(25B78\) ignores unattended first boot/);
  assertMatch(p.notice!, /Setup Assistant by hand/);
  assertEquals(provisioningPlan({ macosVersion: "27.0" }, { version: "27.0" }, true), {
    unattended: true,
  });
});

Deno.test("after installing an old image create keeps no password; a 27 image keeps it 0600", async () => {
  const old = await tempBundle();
  await writeInstallRecord(old, record({ restoreImage: { version: "26.1", build: "25B78" } }));
  const p = await applyMacProvisioning(old, { password: "pw", host });
  assertEquals(p.unattended, false);
  await assertRejects(() => Deno.stat(old.provisionPasswordPath), Deno.errors.NotFound);

  const b = await tempBundle();
  await writeInstallRecord(b, record());
  assertEquals(
    (await applyMacProvisioning(b, { password: "pw", host, waitSeconds: 42 })).unattended,
    true,
  );
  assertEquals((await Deno.stat(b.provisionPasswordPath)).mode! & 0o777, 0o600);
  const rec = await readInstallRecord(b);
  assertEquals([rec?.provisioning, rec?.waitSeconds], [true, 42]);
});

// ------------------------------------------------------------ first boot

Deno.test("the first boot gets the account once; a later boot gets none", async () => {
  const b = await tempBundle();
  const spec = macSpec("provision: { user: jane, fullName: Jane Doe, autoLogin: true }\n");
  await writeInstallRecord(b, record());
  await applyMacProvisioning(b, { password: "pw-1", host });
  assertEquals(await firstBootProvisioning(b, spec), {
    username: "jane",
    fullName: "Jane Doe",
    password: "pw-1",
    logsInAutomatically: true,
    enablesRemoteLogin: true,
  });
  await markGuestProvisioned(b);
  assertEquals(await firstBootProvisioning(b, spec), undefined);
  assertEquals(await keyInstallPending(b, spec), true);
});

Deno.test("the password is deleted once the keys are installed, and kept with one line on a timeout", async () => {
  const b = await tempBundle();
  const spec = macSpec();
  await writeInstallRecord(b, record());
  await applyMacProvisioning(b, { password: "pw-2", host });
  await markGuestProvisioned(b);

  // ssh never answers: bounded, one line naming both logs, password kept.
  const e = await assertRejects(
    () =>
      completeFirstBoot(b, spec, {
        waitSeconds: 0,
        keys: ["ssh-ed25519 AAAA k"],
        address: () => Promise.reject(new Error("no address yet")),
        install: () => Promise.resolve(),
      }),
    CoveError,
  );
  assertEquals(e.code, "provision.ssh_timeout");
  assert(e.message.includes(b.consoleLog) && e.message.includes(b.supervisorLog));
  assert((await Deno.stat(b.provisionPasswordPath)).isFile, "kept for the next start");
  assertMatch((await readInstallRecord(b))!.lastProvisionError!, /did not accept ssh/);

  const seen: string[] = [];
  await completeFirstBoot(b, spec, {
    waitSeconds: 5,
    keys: ["ssh-ed25519 AAAA k"],
    address: () => Promise.resolve({ host: "192.168.64.5", port: 22 }),
    install: (req) => {
      seen.push(`${req.user}:${req.password}:${req.keys.length}`);
      return Promise.resolve();
    },
  });
  assertEquals(seen, ["admin:pw-2:1"]);
  await assertRejects(() => Deno.stat(b.provisionPasswordPath), Deno.errors.NotFound);
  const rec = await readInstallRecord(b);
  assert(rec?.keysInstalledAt && !rec.lastProvisionError);
  assertEquals(await keyInstallPending(b, spec), false);
});

// ------------------------------------------------------------ iCloud

Deno.test("icloud: available, needs sign-in again, or not available (installed from macOS N)", () => {
  const here = { hostIdentity: "h-this-mac", machineIdentity: "m1" };
  assertEquals(icloudStatus(record({ machineIdentity: "m1" }), here), "available");
  assertEquals(
    icloudStatus(record({ machineIdentity: "m1" }), { ...here, hostIdentity: "h-other" }),
    "needs sign-in again (cloned or moved from another Mac)",
  );
  assertEquals(
    icloudStatus(record({ machineIdentity: "m1" }), { ...here, machineIdentity: "m2" }),
    "needs sign-in again (cloned or moved from another Mac)",
  );
  assertEquals(
    icloudStatus(record({ restoreImage: { version: "14.6", build: "23G80" } }), here),
    "not available (installed from macOS 14)",
  );
});

Deno.test("cove get's macOS lines come from the bundle's install record and this host", async () => {
  const prev = Deno.env.get("COVE_HOST_IDENTITY");
  Deno.env.set("COVE_HOST_IDENTITY", "test-mac-1");
  try {
    const b = await tempBundle();
    const spec = macSpec("keyboard: { layout: iso }\n");
    const { hostIdentityHash } = await import("../../core/provision/macos.ts");
    await writeInstallRecord(
      b,
      record({ hostIdentity: await hostIdentityHash(), machineIdentity: await sha256Hex("ID1") }),
    );
    const d = await macosDetails(b, spec, "ID1");
    assertEquals(d.icloud, "available");
    assertMatch(d.keyboard!, /^iso \(hidutil LaunchAgent/);
    Deno.env.set("COVE_HOST_IDENTITY", "test-mac-2");
    assertEquals(
      (await macosDetails(b, spec, "ID1")).icloud,
      "needs sign-in again (cloned or moved from another Mac)",
    );
    const none = await tempBundle();
    assertMatch((await macosDetails(none, spec, undefined)).icloud, /^not known/);
  } finally {
    if (prev === undefined) Deno.env.delete("COVE_HOST_IDENTITY");
    else Deno.env.set("COVE_HOST_IDENTITY", prev);
  }
});

Deno.test("cove clone keeps the install record, and the clone's new identity needs sign-in again", async () => {
  const home = await Deno.makeTempDir({ prefix: "cove-macprov-store-" });
  const store = new Store(home);
  const b = await store.create("mac", { spec: parseSpec("os: macos\n") });
  await b.writeMachine({
    uuid: crypto.randomUUID(),
    vzMachineIdentifier: "ID1",
    vzHardwareModel: "HW",
    created: new Date().toISOString(),
  });
  const rec = record({ machineIdentity: await sha256Hex("ID1") });
  await writeInstallRecord(b, rec);
  const { bundle: c } = await store.clone("mac", "mac2");
  assertEquals(await readInstallRecord(c), rec);
  const id = (await c.readMachine()).vzMachineIdentifier;
  const here = {
    hostIdentity: rec.hostIdentity,
    machineIdentity: id ? await sha256Hex(id) : "new",
  };
  assertEquals(icloudStatus(rec, here), "needs sign-in again (cloned or moved from another Mac)");
});

Deno.test("push and pull keep the install record in the image config", () => {
  const spec = macSpec();
  const rec = record({ machineIdentity: "abc", provisioning: true, keysInstalledAt: "t" });
  const cfg = tartFromSpec(spec, { vzMachineIdentifier: "ID", vzHardwareModel: "HW" }, rec);
  const back = parseTartConfig("r", new TextEncoder().encode(JSON.stringify(cfg)));
  assertEquals(back.coveInstall, {
    restoreImage: rec.restoreImage,
    hostIdentity: rec.hostIdentity,
    machineIdentity: "abc",
    installedAt: rec.installedAt,
  });
  // A Tart image without cove's field has none.
  const plain = parseTartConfig(
    "r",
    new TextEncoder().encode(JSON.stringify(tartFromSpec(spec, {}))),
  );
  assertEquals(plain.coveInstall, undefined);
});

// ------------------------------------------------------------ two macOS VMs

Deno.test("VZ's VM-limit error with fewer than two running says a slot leaked, and names what runs", () => {
  const e = vzError(
    new VzError("start", {
      domain: "VZErrorDomain",
      code: 6,
      message: "The virtual machine limit was exceeded.",
    }),
    "start",
  );
  assertEquals(e.code, "vz.limit");
  const leaked = vmLimitError("start", {
    cove: ["ci-1"],
    others: [{ pid: 4242, what: "tart" }, { pid: 4300, what: "Virtualization.framework VM" }],
  });
  assertEquals(leaked.code, "vz.limit_leaked");
  assertMatch(leaked.message, /only 1 of cove's run/);
  assertMatch(
    leaked.message,
    /cove 'ci-1', tart \(pid 4242\), Virtualization\.framework VM \(pid 4300\)/,
  );
  assertMatch(leaked.message, /Tart#1217/);
  assertMatch(leaked.hint!, /reboot this Mac/);
  const none = vmLimitError("start", { cove: [], others: [] });
  assertMatch(none.message, /only 0 of cove's run \(known VMs: none\)/);
  const full = vmLimitError("start", { cove: ["a", "b"], others: [] });
  assertEquals(full.code, "vz.limit");
  assertMatch(full.message, /at most two macOS VMs at once \(running: cove 'a', cove 'b'\)/);
});

Deno.test("VZ processes are found by name in ps output, not counting cove itself", () => {
  const ps = [
    "  1 /sbin/launchd",
    "  310 /System/Library/Frameworks/Virtualization.framework/Versions/A/XPCServices/com.apple.Virtualization.VirtualMachine.xpc/Contents/MacOS/com.apple.Virtualization.VirtualMachine",
    "  311 /opt/homebrew/bin/tart",
    "  400 /Applications/UTM.app/Contents/MacOS/UTM",
    "  500 /usr/local/bin/cove",
    "  600 /usr/bin/vim",
  ].join("\n");
  assertEquals(parseVzProcesses(ps, 500), [
    { pid: 310, what: "Virtualization.framework VM" },
    { pid: 311, what: "tart" },
    { pid: 400, what: "UTM" },
  ]);
});

Deno.test("a provisioning field VZ refuses becomes one line naming the field", () => {
  const e = vzError(
    new VzError("start", {
      domain: "VZErrorDomain",
      code: 40002,
      message: "The username for guest provisioning is invalid.",
    }),
    "start",
  );
  assertEquals(e.code, "vz.provisioning");
  assertMatch(e.message, /^start: macOS refused the guest's user name \(provision\.user\)/);
  assertMatch(e.hint!, /macOS short name/);
  assertEquals(
    vzError(new VzError("start", { domain: "VZErrorDomain", code: 40001, message: "x" }), "start")
      .code,
    "vz.provisioning",
  );
  assertMatch(
    vzError(new VzError("start", { domain: "VZErrorDomain", code: 40003, message: "x" }), "start")
      .hint!,
    /--password/,
  );
});

// ------------------------------------------------------------ ISO keyboards

Deno.test("the ISO mapping swaps HID 0x35 and 0x64 both ways", () => {
  assertEquals(HID_GRAVE_TILDE, 0x700000035);
  assertEquals(HID_NON_US_BACKSLASH, 0x700000064);
  assertEquals(
    isoKeyMapping(),
    '{"UserKeyMapping":[{"HIDKeyboardModifierMappingSrc":0x700000035,"HIDKeyboardModifierMappingDst":0x700000064},{"HIDKeyboardModifierMappingSrc":0x700000064,"HIDKeyboardModifierMappingDst":0x700000035}]}',
  );
});

async function plutil(): Promise<string | undefined> {
  for (const p of ["/usr/bin/plutil", "/usr/local/bin/plutil"]) {
    if (await Deno.stat(p).then(() => true, () => false)) return p;
  }
  return undefined;
}

Deno.test("the ISO LaunchAgent is a valid plist that runs hidutil at load", async () => {
  const xml = isoKeyboardAgentPlist();
  const lint = await plutil();
  if (lint) {
    const f = await Deno.makeTempFile({ suffix: ".plist" });
    await Deno.writeTextFile(f, xml);
    const out = await new Deno.Command(lint, { args: ["-lint", f] }).output();
    assert(out.success, new TextDecoder().decode(out.stdout));
  }
  // Parsed either way (no plutil on Linux): the structure launchd reads.
  const parsed = plist.parse(xml) as Record<string, unknown>;
  assertEquals(parsed.Label, ISO_AGENT_LABEL);
  assertEquals(parsed.RunAtLoad, true);
  assertEquals(parsed.ProgramArguments, ["/usr/bin/hidutil", "property", "--set", isoKeyMapping()]);
});

Deno.test("the agent script writes the plist that the parser reads back, via base64", () => {
  const script = isoKeyboardAgentScript();
  const b64 = /printf '%s' '([A-Za-z0-9+/=]+)' \| base64 -d/.exec(script)?.[1];
  assert(b64, "the plist travels base64-encoded");
  const decoded = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
  assertEquals(decoded, isoKeyboardAgentPlist());
  assertMatch(script, /Library\/LaunchAgents\/dev\.cove\.keyboard-iso\.plist/);
});

Deno.test("the keyboard spec accepts a layout object and keeps the device kind", () => {
  const s = macSpec("keyboard: { layout: iso }\n");
  assertEquals(s.keyboard, { type: "auto", layout: "iso" });
  assertEquals(macSpec().keyboard, "auto");
  let err: unknown;
  try {
    parseSpec("keyboard: { layout: jis }\n");
  } catch (e) {
    err = e;
  }
  assert(err instanceof SpecError);
});

Deno.test("the key install script appends each key once and keeps the files private", async () => {
  const home = await Deno.makeTempDir();
  const script = authorizedKeysScript();
  const run = () =>
    new Deno.Command("sh", {
      args: ["-c", script],
      env: { HOME: home },
      stdin: "piped",
    }).spawn();
  for (let i = 0; i < 2; i++) {
    const child = run();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode("ssh-ed25519 AAAA one\nssh-ed25519 BBBB two\n"));
    await w.close();
    assert((await child.status).success);
  }
  assertEquals(
    await Deno.readTextFile(join(home, ".ssh/authorized_keys")),
    "ssh-ed25519 AAAA one\nssh-ed25519 BBBB two\n",
  );
  assertEquals((await Deno.stat(join(home, ".ssh/authorized_keys"))).mode! & 0o777, 0o600);
  assertEquals((await Deno.stat(join(home, ".ssh"))).mode! & 0o777, 0o700);
});

// ------------------------------------------------------------ the CLI's refusals

Deno.test("cove create refuses a bad --user for macOS, and password options without an ipsw source", async () => {
  const { cove } = await import("../helpers/cli.ts");
  const home = await Deno.makeTempDir({ prefix: "cove-macprov-cli-" });
  const bad = await cove(home, ["create", "m", "--os", "macos", "--user", "_jane"]);
  assertEquals(bad.code, 2, bad.stderr);
  assertMatch(bad.stderr.trim(), /^cove: .*--user.*macOS short name/);
  assertEquals(bad.stderr.trim().split("\n").length, 1, "one line");
  const pw = await cove(home, ["create", "l", "--password-file", "/nonexistent"]);
  assertEquals(pw.code, 2, pw.stderr);
  assertMatch(pw.stderr, /--password-file and --password-stdin set a macOS guest's first account/);
  const list = await cove(home, ["list", "-q"]);
  assertEquals(list.stdout.trim(), "", "nothing half-made is listed");
});

Deno.test("cove get prints the icloud line of a macOS VM from its install record", async () => {
  const { cove } = await import("../helpers/cli.ts");
  const home = await Deno.makeTempDir({ prefix: "cove-macprov-get-" });
  const env = { COVE_HOST_IDENTITY: "get-test-mac" };
  assertEquals((await cove(home, ["create", "m", "--os", "macos"], { env })).code, 0);
  const b = new Bundle("m", join(home, "vms", "m"));
  const { hostIdentityHash } = await import("../../core/provision/macos.ts");
  const prev = Deno.env.get("COVE_HOST_IDENTITY");
  Deno.env.set("COVE_HOST_IDENTITY", "get-test-mac");
  const here = await hostIdentityHash();
  if (prev === undefined) Deno.env.delete("COVE_HOST_IDENTITY");
  else Deno.env.set("COVE_HOST_IDENTITY", prev);
  await writeInstallRecord(b, record({ hostIdentity: here }));
  const same = await cove(home, ["get", "m"], { env });
  assertMatch(same.stdout, /^icloud: available$/m);
  const moved = await cove(home, ["get", "m"], { env: { COVE_HOST_IDENTITY: "another-mac" } });
  assertMatch(moved.stdout, /^icloud: needs sign-in again \(cloned or moved from another Mac\)$/m);
  await writeInstallRecord(b, record({ restoreImage: { version: "13.6", build: "22G120" } }));
  const json = await cove(home, ["get", "m", "--format", "json"], { env });
  assertEquals(JSON.parse(json.stdout).macos.icloud, "not available (installed from macOS 13)");
});
