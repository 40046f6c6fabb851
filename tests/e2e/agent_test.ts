/**
 * End to end, under TCG, one boot: the Debian cloud guest (with
 * qemu-guest-agent, tests/fixtures/debian_cloud_guest.ts) runs with its
 * network off (`networks: [{mode: none}]`), so only the guest agent reaches
 * it. Over the agent: exec (exit code, stdout/stderr apart, stdin, a
 * signal), cp of a 20 MiB random file both ways and of a directory tree
 * with -r, the bad-input lines of cp, ip, an agent that stops answering,
 * the clock set after a 60 s pause, freeze and thaw around a copy, a clone
 * and a push of the running VM with its file systems frozen (what it wrote
 * an instant before is on the copy, read back with debugfs), and a stop
 * that the guest's ACPI handler ignores.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { ensureDebianCloudGuest } from "../fixtures/debian_cloud_guest.ts";
import { startRegistry } from "../helpers/oci_registry.ts";
import { linuxTest } from "../helpers/guard.ts";
import {
  BOOT_WAIT_S,
  consoleTail,
  createAndStart,
  requireTools,
  run,
  waitForAgent,
} from "./debian_agent_helpers.ts";
import { agentOf, cloneFile, Store, withFrozenGuest } from "../../mod.ts";

const TOOLS = [
  "qemu-system-x86_64",
  "debootstrap",
  "mkfs.ext4",
  "debugfs",
  "tar",
  "docker-registry",
];

/** A file's content inside an ext4 disk image, read with debugfs (e2fsprogs) without mounting it. */
async function readFromImage(image: string, path: string): Promise<string> {
  const r = await new Deno.Command("debugfs", {
    args: ["-R", `cat ${path}`, image],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(r.success, new TextDecoder().decode(r.stderr));
  return new TextDecoder().decode(r.stdout);
}

async function sha256(path: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

linuxTest({
  needs:
    "builds a Debian cloud guest with debootstrap, boots it under QEMU and reads its disk with debugfs, as root",
  root: true,
  name:
    "a Debian guest with its network off is reached only through its guest agent: exec, cp, ip, clock, freeze and stop",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    requireTools(TOOLS);
    const g = await ensureDebianCloudGuest();
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-agent-" });
    const name = "agentvm";
    const config = {
      engine: "qemu",
      cpus: 2,
      memory: "1GiB",
      disks: [{ path: "disk.img", size: "4GiB" }],
      networks: [{ mode: "none" }],
    };
    let started = false;
    try {
      await t.step("create and start a VM with networks: [{mode: none}]", async () => {
        started = true; // from here on, the finally stops it
        await createAndStart(home, name, g, config);
      });

      await t.step(
        "cove agent reports that the agent answers, its version and commands",
        async () => {
          const r = await waitForAgent(home, name, BOOT_WAIT_S);
          if (r.code !== 0) {
            throw new Error(
              `the agent never answered: ${r.stderr}\n${await consoleTail(home, name)}`,
            );
          }
          assertMatch(r.stdout, /the guest agent answers \(qemu-guest-agent \d+\.\d+/);
          assertMatch(r.stdout, /guest-exec/);
          const j = await run(home, ["agent", name, "--format", "json"]);
          assertEquals(JSON.parse(j.stdout).answers, true);
          const get = await run(home, ["get", name, "--format", "json"]);
          assertEquals(JSON.parse(get.stdout).agent.answers, true);
          // The supervisor holds the channel; a second client cannot open it.
          const second = await Deno.connect({
            transport: "unix",
            path: join(home, "vms", name, "run", "agent.sock"),
          }).then((c) => (c.close(), "connected"), (e) => e.name);
          assertEquals(second, "NotFound");
        },
      );

      await t.step(
        "exec over the agent keeps stdout and stderr apart, passes stdin and returns the exit code",
        async () => {
          const r = await run(home, [
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "cat; echo to-stderr >&2; exit 3",
          ], { stdin: "from the host's stdin\n" });
          assertEquals(r.code, 3, r.stderr);
          assertEquals(r.stdout, "from the host's stdin\n");
          assertEquals(r.stderr, "to-stderr\n");
          const host = await run(home, [
            "exec",
            name,
            "--via",
            "agent",
            "--",
            "cat",
            "/etc/hostname",
          ]);
          assertEquals(host.code, 0, host.stderr);
          assertEquals(host.stdout.trim(), name);
        },
      );

      await t.step("a guest command killed by a signal exits 128+N", async () => {
        const r = await run(home, ["exec", name, "--", "sh", "-c", "kill -TERM $$"]);
        assertEquals(r.code, 143, r.stderr);
      });

      await t.step("exec --via ssh on a guest without a network is one line", async () => {
        const r = await run(home, ["exec", name, "--via", "ssh", "--", "true"]);
        assert(r.code !== 0);
        assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
      });

      const work = join(home, "work");
      await Deno.mkdir(work);
      await t.step(
        "cp of a 20 MiB random file both ways is byte-identical and keeps the mode",
        async () => {
          const big = join(work, "big.bin");
          const data = new Uint8Array(20 * 2 ** 20);
          for (let o = 0; o < data.length; o += 65536) {
            crypto.getRandomValues(data.subarray(o, o + 65536));
          }
          await Deno.writeFile(big, data);
          await Deno.chmod(big, 0o751);
          const up = await run(home, ["cp", big, `${name}:/root/big.bin`], { timeoutMs: 900_000 });
          assertEquals(up.code, 0, up.stderr);
          const sum = await run(home, [
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "sha256sum /root/big.bin; stat -c %a /root/big.bin",
          ]);
          const [line, mode] = sum.stdout.trim().split("\n");
          assertEquals(line.split(/\s+/)[0], await sha256(big));
          assertEquals(mode, "751");
          const back = join(work, "back.bin");
          const down = await run(home, ["cp", `${name}:/root/big.bin`, back], {
            timeoutMs: 900_000,
          });
          assertEquals(down.code, 0, down.stderr);
          assertEquals(await sha256(back), await sha256(big));
          assertEquals((await Deno.stat(back)).mode! & 0o777, 0o751);
        },
      );

      await t.step("cp -r copies a directory tree both ways", async () => {
        const tree = join(work, "tree");
        await Deno.mkdir(join(tree, "sub", "deeper"), { recursive: true });
        await Deno.writeTextFile(join(tree, "a.txt"), "alpha\n");
        await Deno.writeTextFile(join(tree, "sub", "deeper", "b.txt"), "beta\n");
        const up = await run(home, ["cp", "-r", tree, `${name}:/root`]);
        assertEquals(up.code, 0, up.stderr);
        const ls = await run(home, ["exec", name, "--", "cat", "/root/tree/sub/deeper/b.txt"]);
        assertEquals(ls.stdout, "beta\n");
        const out = join(work, "tree-back");
        const down = await run(home, ["cp", "-r", `${name}:/root/tree`, out]);
        assertEquals(down.code, 0, down.stderr);
        assertEquals(await Deno.readTextFile(join(out, "a.txt")), "alpha\n");
        assertEquals(await Deno.readTextFile(join(out, "sub", "deeper", "b.txt")), "beta\n");
      });

      await t.step(
        "cp of a missing guest path, or of a directory without -r, is one line",
        async () => {
          const missing = await run(home, ["cp", `${name}:/no/such/file`, join(work, "x")]);
          assertEquals(missing.code, 3);
          assertEquals(
            missing.stderr.trim(),
            `cove: ${name}:/no/such/file does not exist in the guest (check the path with 'cove exec ${name} -- ls -l /no/such')`,
          );
          const dir = await run(home, ["cp", `${name}:/etc`, join(work, "etc")]);
          assertEquals(dir.code, 2);
          assertEquals(
            dir.stderr.trim(),
            `cove: ${name}:/etc is a directory (copy directories with -r)`,
          );
          const unwritable = await run(home, ["cp", `${name}:/etc/hostname`, "/proc/cove-no"]);
          assert(unwritable.code !== 0);
          assertEquals(unwritable.stderr.trim().split("\n").length, 1, unwritable.stderr);
        },
      );

      await t.step("cove ip reports the address the agent sees", async () => {
        const add = await run(home, [
          "exec",
          name,
          "--",
          "sh",
          "-c",
          "ip link add cove0 type dummy && ip addr add 192.0.2.10/24 dev cove0 && ip link set cove0 up",
        ]);
        assertEquals(add.code, 0, add.stderr);
        const r = await run(home, ["ip", name]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout.trim(), "192.0.2.10");
      });

      await t.step(
        "an agent that stops answering gives one line within the bound, then comes back",
        async () => {
          const freeze = await run(home, [
            "exec",
            name,
            "--",
            "sh",
            "-c",
            'p=$PPID; (sleep 2; kill -STOP "$p"; sleep 30; kill -CONT "$p") >/dev/null 2>&1 </dev/null &',
          ]);
          assertEquals(freeze.code, 0, freeze.stderr);
          await new Promise((r) => setTimeout(r, 5000));
          const r = await run(home, ["agent", name], { timeoutMs: 60_000 });
          assertEquals(r.code, 5, r.stderr);
          assertEquals(r.stderr.trim().split("\n").length, 1);
          assertMatch(r.stderr, /does not answer/);
          const back = await waitForAgent(home, name, 120);
          assertEquals(back.code, 0, back.stderr);
        },
      );

      await t.step("after a 60 s pause, resume sets the guest clock", async () => {
        // Set the guest an hour behind first, so the proof does not hang on how the pause ages it.
        const behind = await run(home, [
          "exec",
          name,
          "--",
          "sh",
          "-c",
          "date -s @$(( $(date +%s) - 3600 )) >/dev/null",
        ]);
        assertEquals(behind.code, 0, behind.stderr);
        assertEquals((await run(home, ["pause", name])).code, 0);
        await new Promise((r) => setTimeout(r, 60_000));
        const res = await run(home, ["resume", name]);
        assertEquals(res.code, 0, res.stderr);
        const d = await run(home, ["exec", name, "--", "date", "+%s"]);
        const skew = Math.abs(Number(d.stdout.trim()) - Date.now() / 1000);
        assert(skew < 30, `the guest clock is ${skew}s off after resume`);
      });

      await t.step(
        "freeze and thaw around a copy of the disk, and thaw when the copy fails",
        async () => {
          const b = await new Store(home).get(name);
          const agent = await agentOf(b);
          let during = "";
          await withFrozenGuest(agent, async () => {
            during = await agent.command<string>("guest-fsfreeze-status");
            await cloneFile(join(b.dir, "disk.img"), join(work, "disk-copy.img"));
          });
          assertEquals(during, "frozen");
          assertEquals(await agent.command<string>("guest-fsfreeze-status"), "thawed");
          let failed = false;
          await withFrozenGuest(agent, () => Promise.reject(new Error("copy failed"))).catch(() =>
            failed = true
          );
          assert(failed);
          assertEquals(await agent.command<string>("guest-fsfreeze-status"), "thawed");
          await Deno.remove(join(work, "disk-copy.img"));
          // The guest still writes after the thaw.
          const w = await run(home, [
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "echo ok > /root/after-thaw && sync && cat /root/after-thaw",
          ]);
          assertEquals(w.stdout, "ok\n");
        },
      );

      /** Writes a new line to /root/unsynced, not synced: without a freeze it stays in the page cache. */
      const writeUnsynced = async (prefix: string): Promise<string> => {
        const data = `${prefix}-${crypto.randomUUID()}`;
        const w = await run(home, [
          "exec",
          name,
          "--",
          "sh",
          "-c",
          `echo ${data} > /root/unsynced`,
        ]);
        assertEquals(w.code, 0, w.stderr);
        return data;
      };

      await t.step(
        "a clone of the running VM is taken with its file systems frozen: what the guest wrote an instant before is on the clone's disk",
        async () => {
          const data = await writeUnsynced("written");
          const c = await run(home, ["clone", name, "copy"], { timeoutMs: 600_000 });
          assertEquals(c.code, 0, c.stderr);
          assertMatch(
            c.stderr,
            /'agentvm' is running: its disks were copied with its file systems frozen/,
          );
          assertEquals(
            await readFromImage(join(home, "vms", "copy", "disk.img"), "/root/unsynced"),
            `${data}\n`,
          );
          const b = await new Store(home).get(name);
          assertEquals(await (await agentOf(b)).command<string>("guest-fsfreeze-status"), "thawed");
          assertEquals((await run(home, ["list", "--format", "json"])).code, 0);
          const state = async (vm: string) =>
            (JSON.parse((await run(home, ["get", vm, "--format", "json"])).stdout)).state;
          assertEquals(await state(name), "running", "the source runs on");
          assertEquals(await state("copy"), "stopped");
          // The clone is a VM of its own: new identity, no snapshot of the copy left behind.
          assertEquals(
            await Array.fromAsync(Deno.readDir(join(home, "vms", name, "snapshots"))),
            [],
          );
          assertEquals((await run(home, ["delete", "copy"])).code, 0);
        },
      );

      await t.step(
        "a push of the running VM is taken with its file systems frozen, and the pulled image has what the guest wrote",
        async () => {
          const reg = await startRegistry();
          try {
            const data = await writeUnsynced("pushed");
            const ref = `${reg.host}/test/running:1`;
            const p = await run(home, ["push", name, ref, "--insecure"], { timeoutMs: 900_000 });
            assertEquals(p.code, 0, p.stderr);
            assertMatch(
              p.stderr,
              /'agentvm' is running: its disks were copied with its file systems frozen/,
            );
            assertMatch(
              p.stdout,
              /^pushed 127\.0\.0\.1:\d+\/test\/running:1@sha256:[0-9a-f]{64}$/m,
            );
            assertEquals(
              (JSON.parse((await run(home, ["get", name, "--format", "json"])).stdout)).state,
              "running",
            );
            const pulled = await run(home, ["clone", ref, "pulled", "--insecure"], {
              timeoutMs: 900_000,
            });
            assertEquals(pulled.code, 0, pulled.stderr);
            assertEquals(
              await readFromImage(join(home, "vms", "pulled", "disk.img"), "/root/unsynced"),
              `${data}\n`,
            );
            assertEquals((await run(home, ["delete", "pulled"])).code, 0);
            // The copy the push read from is gone: nothing of it in the store's scratch space.
            assertEquals(
              (await Array.fromAsync(Deno.readDir(join(home, "tmp")))).map((e) => e.name),
              [],
            );
          } finally {
            await reg.stop();
          }
        },
      );

      await t.step(
        "a stop that the guest's ACPI handler ignores goes through the agent",
        async () => {
          const ignore = await run(home, [
            "exec",
            name,
            "--",
            "sh",
            "-c",
            "mkdir -p /etc/systemd/logind.conf.d && printf '[Login]\\nHandlePowerKey=ignore\\n' > /etc/systemd/logind.conf.d/cove-test.conf && (systemctl try-restart systemd-logind || true)",
          ]);
          assertEquals(ignore.code, 0, ignore.stderr);
          const r = await run(home, ["stop", name, "--timeout", "10s", "--format", "json"], {
            timeoutMs: 180_000,
          });
          assertEquals(r.code, 0, r.stderr);
          const j = JSON.parse(r.stdout);
          assertEquals(j.via, "agent");
          assertEquals(j.forced, false);
          // The guest shut itself down at cove's request: QEMU exited cleanly ("host", not "crash").
          assertEquals(j.exit.reason, "host");
          started = false;
        },
      );

      await t.step("with agent: false, agent commands are one line and exit 5", async () => {
        const spec = join(home, "vms", name, "cove.yaml");
        const text = await Deno.readTextFile(spec);
        await Deno.writeTextFile(
          spec,
          /^agent: true$/m.test(text)
            ? text.replace(/^agent: true$/m, "agent: false")
            : text + "agent: false\n",
        );
        const r = await run(home, ["exec", name, "--via", "agent", "--", "true"]);
        assertEquals(r.code, 5);
        assertEquals(r.stderr.trim().split("\n").length, 1);
        assertMatch(r.stderr, /agent: false/);
        const c = await run(home, ["cp", `${name}:/etc/hostname`, join(work, "h")]);
        assertEquals(c.code, 5);
      });
    } finally {
      if (started) await run(home, ["stop", name, "--force"]).catch(() => undefined);
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
