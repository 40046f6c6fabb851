/**
 * cli/plain_yaml.ts writes what the yaml package writes, or declines: for
 * every value it prints, the text is the library's to the byte.
 */
import { stringify } from "yaml";
import { assert, assertEquals } from "../helpers/assert.ts";
import { plainYaml } from "../../cli/plain_yaml.ts";
import { parseSpec } from "../../core/spec/load.ts";
import { applyDefaults } from "../../core/spec/defaults.ts";

const HOST = { os: "linux", arch: "x86_64", cpus: 8, memory: 16 * 2 ** 30 } as const;

function same(value: unknown): boolean {
  const mine = plainYaml(value);
  if (mine === undefined) return false;
  assertEquals(mine, stringify(value, { lineWidth: 0 }), JSON.stringify(value));
  return true;
}

Deno.test("plain yaml: the specs cove writes print as the yaml package prints them", () => {
  const texts = [
    "",
    "os: macos\n",
    "cpus: 3\nmemory: 3GiB\nengine: qemu\ndisks: [{ path: root.raw, size: 2MiB }, { path: /srv/data.img, readOnly: true }]\n",
    "networks: [{ mode: user, forwards: [{ host: 2222, guest: 22 }] }, { mode: none }]\n",
    "shares: [{ path: /home/me/src, tag: src, readOnly: true }]\n",
    "provision: { sshKeys: ['ssh-ed25519 AAAA me@host'], commands: ['apt-get update'] }\n",
    "boot: { loader: kernel, kernel: vmlinuz, initrd: initrd.img, cmdline: 'console=ttyS0 root=/dev/vda' }\n",
    "qemu: { binary: /opt/qemu/bin/qemu-system-x86_64, args: ['-d', 'int'] }\n",
    "display: { width: 1920, height: 1080, ppi: 144 }\n",
  ];
  let printed = 0;
  for (const t of texts) {
    const spec = applyDefaults(parseSpec(t), HOST, "dev-1");
    if (same({ spec })) printed++;
  }
  assert(same({ spec: applyDefaults(parseSpec(""), HOST, "dev") }), "the default spec is plain");
  assert(printed >= 4, `most specs print without the library (${printed})`);
});

Deno.test("plain yaml: any value it prints is the library's text, byte for byte", () => {
  const pieces = [
    "a",
    "dev",
    "1MiB",
    "0a:de:67:a0:94:f9",
    "00:11:22:33:44:55",
    "12:30",
    "2024-01-01",
    "1.5",
    "1e3",
    "0x1f",
    "0o17",
    "true",
    "True",
    "yes",
    "No",
    "null",
    "~",
    ".inf",
    "-.5",
    "-a",
    ".x",
    "a:",
    "a: b",
    "a #b",
    "#a",
    "",
    " a",
    "a ",
    "x/y.z",
    "/abs/path",
    "@me",
    "a@b",
    "+1",
    "-",
    "é",
    "a\nb",
    "'q'",
    '"q"',
    "[x]",
    "{x}",
    "*x",
    "&x",
    "!x",
    "%x",
    "`x",
    "a,b",
    "?x",
    "|",
    ">",
  ];
  let seed = 11;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const value = (depth: number): unknown => {
    const r = rand(depth > 2 ? 6 : 9);
    if (r < 3) return pieces[rand(pieces.length)];
    if (r === 3) return rand(3) === 0 ? -rand(1000) : rand(100000);
    if (r === 4) return rand(2) === 0;
    if (r === 5) return rand(4) === 0 ? null : rand(2) === 0 ? 1.5 : undefined;
    if (r <= 7) {
      const m: Record<string, unknown> = {};
      for (let i = rand(4); i > 0; i--) m[pieces[rand(pieces.length)] || "k"] = value(depth + 1);
      return m;
    }
    return Array.from({ length: rand(4) }, () => value(depth + 1));
  };
  let printed = 0;
  for (let i = 0; i < 5000; i++) {
    const v = { top: value(0), other: value(1) };
    if (same(v)) printed++;
  }
  assert(printed > 100, `the check prints some (${printed})`);
});
