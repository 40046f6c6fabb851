/**
 * Paths another user or the guest could control, through the real CLI:
 * disk paths (and an EFI variable store) are confined (a relative path stays in the bundle and names no
 * file cove keeps there; an absolute one is never resized, and a new one is
 * made only in a directory of yours), and a COVE_HOME, `vms/` or bundle
 * that another user owns or can write is refused with one line, as ssh's
 * StrictModes does.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { cove, withTempDir } from "../helpers/cli.ts";
import { linuxTest } from "../helpers/guard.ts";

async function createWith(home: string, name: string, yaml: string) {
  const file = join(home, `${name}.yaml`);
  await Deno.writeTextFile(file, yaml);
  return await cove(home, ["create", name, "--config", file]);
}

function oneLine(stderr: string): string {
  const lines = stderr.trim().split("\n");
  assertEquals(lines.length, 1, stderr);
  return lines[0];
}

Deno.test("disk paths: cove.yaml, a path out of the bundle and a grown outside file are refused with one line; an outside image is used as it is", () =>
  withTempDir(async (home) => {
    const own = await createWith(home, "own", "disks: [{ path: cove.yaml }]\n");
    assertEquals(own.code, 2, own.stderr);
    assertMatch(oneLine(own.stderr), /disks\[0\]\.path: 'cove\.yaml' is a file cove keeps/);
    const run = await createWith(home, "run", "disks: [{ path: run/qmp.sock, size: 1MiB }]\n");
    assertEquals(run.code, 2, run.stderr);
    // The EFI variable store, which the firmware writes and a snapshot restore renames onto,
    // follows the same rules; its default name is its own.
    for (
      const [store, why] of [["cove.yaml", "is a file cove keeps"], [
        "../x.fd",
        "leaves the VM's directory",
      ]]
    ) {
      const r = await createWith(
        home,
        "vars",
        `boot: { loader: efi, variableStore: "${store}" }\n`,
      );
      assertEquals(r.code, 2, r.stderr);
      assertMatch(
        oneLine(r.stderr),
        new RegExp(`^cove: boot\\.variableStore: '${store.replaceAll(".", "\\.")}' ${why}`),
      );
    }
    const vars = await createWith(
      home,
      "vars",
      "boot: { loader: efi, variableStore: efi-vars.fd }\n",
    );
    assertEquals(vars.code, 0, vars.stderr);
    assertEquals((await cove(home, ["delete", "vars"])).code, 0);

    const up = await createWith(home, "up", "disks: [{ path: ../../escaped.img, size: 1MiB }]\n");
    assertEquals(up.code, 2, up.stderr);
    assertMatch(oneLine(up.stderr), /'\.\.\/\.\.\/escaped\.img' leaves the VM's directory/);
    assertEquals(await Deno.stat(join(home, "..", "escaped.img")).catch(() => null), null);

    const outside = join(home, "outside");
    await Deno.mkdir(outside, { mode: 0o700 });
    const notes = join(outside, "notes.txt");
    await Deno.writeTextFile(notes, "not an image");
    const grow = await createWith(home, "grow", `disks: [{ path: ${notes}, size: 1GiB }]\n`);
    assertEquals(grow.code, 2, grow.stderr);
    assertMatch(oneLine(grow.stderr), /cove does not resize .* outside the VM's directory/);
    assertEquals((await Deno.stat(notes)).size, 12, "the file was not grown");

    const use = await createWith(home, "use", `disks: [{ path: ${notes} }]\n`);
    assertEquals(use.code, 0, use.stderr);
    assertEquals((await Deno.stat(notes)).size, 12);

    const fresh = join(outside, "new.img");
    const mk = await createWith(home, "mk", `disks: [{ path: ${fresh}, size: 1MiB }]\n`);
    assertEquals(mk.code, 0, mk.stderr);
    assertEquals((await Deno.stat(fresh)).size, 2 ** 20);

    // /tmp is writable by everyone: cove makes no new disk there.
    const shared = `/tmp/cove-shared-${crypto.randomUUID()}.img`;
    const tmp = await createWith(home, "tmp", `disks: [{ path: ${shared}, size: 1MiB }]\n`);
    assertEquals(tmp.code, 2, tmp.stderr);
    assertMatch(oneLine(tmp.stderr), /directories of yours that others cannot write/);
    assertEquals(await Deno.stat(shared).catch(() => null), null);

    assertEquals(
      (JSON.parse((await cove(home, ["list", "--format", "json"])).stdout) as { name: string }[])
        .map((v) => v.name),
      ["mk", "use"],
      "nothing half-made",
    );
  }));

Deno.test("disk paths: a spec edited by hand to attach its own cove.yaml is refused at start, before anything runs", () =>
  withTempDir(async (home) => {
    assertEquals((await cove(home, ["create", "edited", "--disk-size", "1MiB"])).code, 0);
    const spec = join(home, "vms", "edited", "cove.yaml");
    const text = await Deno.readTextFile(spec);
    await Deno.writeTextFile(spec, text.replace(/path: disk\.img/, "path: cove.yaml"));
    const r = await cove(home, ["start", "edited"]);
    assertEquals(r.code, 2, r.stderr);
    assertMatch(oneLine(r.stderr), /'cove\.yaml' is a file cove keeps/);
  }));

Deno.test("a COVE_HOME or vms/ writable by other users is refused with one line, and new directories are 0700", () =>
  withTempDir(async (home) => {
    assertEquals((await cove(home, ["create", "a", "--disk-size", "1MiB"])).code, 0);
    for (const d of [home, join(home, "vms"), join(home, "vms", "a"), join(home, "tmp")]) {
      assertEquals(((await Deno.stat(d)).mode ?? 0) & 0o777, 0o700, d);
    }
    await Deno.chmod(home, 0o777);
    const r = await cove(home, ["list"]);
    assertEquals(r.code, 5, r.stderr);
    assertMatch(
      oneLine(r.stderr),
      /refusing to use COVE_HOME .*: it is writable by other users \(mode 777\)/,
    );
    await Deno.chmod(home, 0o700);
    await Deno.chmod(join(home, "vms"), 0o775);
    const s = await cove(home, ["start", "a"]);
    assertEquals(s.code, 5, s.stderr);
    assertMatch(oneLine(s.stderr), /refusing to use the VM directory/);
  }));

const hasSetpriv = (() => {
  try {
    return Deno.statSync("/usr/bin/setpriv").isFile;
  } catch {
    return false;
  }
})();

linuxTest({
  needs: "plants a bundle as a second user (setpriv from util-linux, uid 65534), as root",
  root: true,
  name:
    "a bundle planted by a second user (setpriv, uid 65534) is never used: listed as broken, start refuses, its qemu.binary never runs (root only: needs a second user)",
  fn: () =>
    withTempDir(async (home) => {
      if (!hasSetpriv) throw new Error("/usr/bin/setpriv is missing: install util-linux");
      assertEquals((await cove(home, ["create", "mine", "--disk-size", "1MiB"])).code, 0);
      // The victim's mistake: a home and vms/ that everyone can write.
      await Deno.chmod(home, 0o777);
      await Deno.chmod(join(home, "vms"), 0o777);
      const marker = join(home, "pwned");
      const evil = join(home, "vms", "evil");
      const payload = join(home, "payload.sh");
      await Deno.writeTextFile(payload, `#!/bin/sh\ntouch ${marker}\n`, { mode: 0o755 });
      const plant = await new Deno.Command("/usr/bin/setpriv", {
        args: [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          "/bin/sh",
          "-c",
          `mkdir -m 700 ${evil} && printf 'engine: qemu\\nqemu: { binary: ${payload} }\\n' > ${evil}/cove.yaml`,
        ],
      }).output();
      assertEquals(plant.code, 0, new TextDecoder().decode(plant.stderr));
      assertEquals((await Deno.stat(evil)).uid, 65534);

      const open = await cove(home, ["start", "evil"]);
      assertEquals(open.code, 5, open.stderr);
      assertMatch(oneLine(open.stderr), /refusing to use COVE_HOME/);

      // Even once the home is private again, the planted bundle is not trusted.
      await Deno.chmod(home, 0o700);
      await Deno.chmod(join(home, "vms"), 0o700);
      const list = await cove(home, ["list", "--format", "json"]);
      assertEquals(list.code, 0, list.stderr);
      const rows = JSON.parse(list.stdout) as { name: string; state: string; error?: string }[];
      assertEquals(rows.map((v) => [v.name, v.state]), [["evil", "broken"], ["mine", "stopped"]]);
      assertMatch(rows[0].error ?? "", /owned by uid 65534, not by you \(uid 0\)/);
      const start = await cove(home, ["start", "evil"]);
      assertEquals(start.code, 5, start.stderr);
      assertMatch(oneLine(start.stderr), /refusing to use the directory of VM 'evil'/);
      assert(!(await Deno.stat(marker).then(() => true, () => false)), "the payload never ran");
    }),
});

Deno.test("qemu.binary and qemu.args are shown by cove get and cove start as running as you", () =>
  withTempDir(async (home) => {
    const r = await createWith(
      home,
      "custom",
      "engine: qemu\ndisks: [{ path: disk.img, size: 1MiB }]\nqemu: { binary: /bin/false, args: [-S] }\n",
    );
    assertEquals(r.code, 0, r.stderr);
    const get = await cove(home, ["get", "custom"]);
    assertEquals(get.code, 0, get.stderr);
    assertMatch(get.stdout, /note: qemu\.binary \/bin\/false runs as you/);
    assertMatch(get.stdout, /note: qemu\.args \["-S"\] are passed to qemu, which runs as you/);
    const start = await cove(home, ["start", "custom", "--timeout", "30s"]);
    assertMatch(start.stderr, /^note: qemu\.binary \/bin\/false runs as you$/m);
  }));
