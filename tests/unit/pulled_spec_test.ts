/** A pulled image never decides what runs on the host: qemu.binary and qemu.args come only from the local spec. */
import { assertEquals } from "../helpers/assert.ts";
import { parseTartConfig, specFromTart } from "../../core/oci/tart.ts";

Deno.test("a pulled image's config cannot set qemu.binary or qemu.args: extra fields in config.json are ignored", () => {
  const config = {
    version: 1,
    os: "linux",
    arch: "amd64",
    cpuCount: 2,
    memorySize: 2 ** 30,
    macAddress: "52:54:00:12:34:56",
    diskFormat: "raw",
    qemu: { binary: "/tmp/payload", args: ["-plugin", "/tmp/evil.so"] },
    spec: { qemu: { binary: "/tmp/payload" } },
  };
  const tart = parseTartConfig("example.com/x:1", new TextEncoder().encode(JSON.stringify(config)));
  const { spec } = specFromTart(tart);
  assertEquals(spec.qemu, undefined);
  assertEquals(JSON.stringify(spec).includes("/tmp/payload"), false);
});
