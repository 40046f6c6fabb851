/**
 * The shim's start options for macOS guests, pinned by golden files: the
 * first boot after install carries VZMacGuestProvisioningOptions' fields,
 * a later boot carries none. Run with UPDATE_GOLDEN=1 to rewrite them.
 */
import { assertEquals } from "../helpers/assert.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";
import { buildVzStartOptions } from "../../engines/vz/config.ts";
import type { GuestProvisioning, HostInfo } from "../../engines/engine.ts";

const golden = new URL("./golden/", import.meta.url).pathname;
const host: HostInfo = {
  os: "darwin",
  arch: "arm64",
  cpus: 10,
  memory: 32 * 2 ** 30,
  macosVersion: "27.0",
};

async function matchesGolden(file: string, actual: unknown): Promise<void> {
  const path = `${golden}${file}`;
  const text = JSON.stringify(actual, null, 2) + "\n";
  if (Deno.env.get("UPDATE_GOLDEN") === "1") await Deno.writeTextFile(path, text);
  let expected: string;
  try {
    expected = await Deno.readTextFile(path);
  } catch {
    throw new Error(`golden file ${file} is missing; run with UPDATE_GOLDEN=1 to create it`);
  }
  assertEquals(JSON.parse(text), JSON.parse(expected));
}

const spec = applyDefaults(
  parseSpec(
    "os: macos\nprovision: { user: jane.doe, fullName: Jane Doe, autoLogin: true, ssh: true }\n",
  ),
  host,
  "mac",
);

const firstBoot: GuestProvisioning = {
  username: "jane.doe",
  fullName: "Jane Doe",
  password: "golden-test-password",
  logsInAutomatically: true,
  enablesRemoteLogin: true,
};

Deno.test("a provisioned first boot maps to the golden start options", async () => {
  await matchesGolden("vz_macos_start_first_boot.json", buildVzStartOptions(spec, firstBoot));
});

Deno.test("a later boot of a macOS guest has no start options", async () => {
  await matchesGolden("vz_macos_start_later.json", buildVzStartOptions(spec, undefined));
});

Deno.test("a Linux guest never gets provisioning start options", () => {
  const linux = applyDefaults(parseSpec("os: linux\narch: arm64\n"), host, "l");
  assertEquals(buildVzStartOptions(linux, firstBoot), {});
});

Deno.test("the golden start options use only fields the Swift decoders know", async () => {
  let swift = "";
  for (const f of ["ConfigJSON.swift", "Provisioning.swift"]) {
    swift += await Deno.readTextFile(
      new URL(`../../swift-shim/Sources/CoveVZ/${f}`, import.meta.url),
    );
  }
  const start = /struct StartOptionsJSON: Decodable \{([^}]*)\}/.exec(swift)?.[1] ?? "";
  const prov = /struct ProvisioningJSON: Decodable \{([^}]*)\}/.exec(swift)?.[1] ?? "";
  const fields = (body: string) => [...body.matchAll(/^\s*var (\w+):/gm)].map((m) => m[1]);
  const options = JSON.parse(await Deno.readTextFile(`${golden}vz_macos_start_first_boot.json`));
  assertEquals(Object.keys(options).filter((k) => !fields(start).includes(k)), []);
  assertEquals(
    Object.keys(options.provisioning).sort(),
    fields(prov).sort(),
    "every provisioning field, and only those, reaches ProvisioningJSON",
  );
});
