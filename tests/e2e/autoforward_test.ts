/**
 * End to end, under TCG, one boot: automatic port forwards (issue #14). The
 * Debian cloud guest (tests/fixtures/debian_cloud_guest.ts, with
 * qemu-guest-agent) runs on QEMU user networking with
 * `autoForward: {ignore: [IGNORED]}`. Through the guest agent, a listener is
 * started in the guest; within 5 s of the guest reporting it listening (plus
 * one 2 s poll of the watcher) `cove port` lists an `auto` forward for it,
 * and 127.0.0.1 at that host port serves the listener's bytes. Stopped, the
 * forward leaves `cove port` and the host port stops answering. Listeners
 * bound to the guest's 127.0.0.1, or on an ignored port, are never forwarded.
 * @module
 */
import { join } from "node:path";
import { assert, assertEquals } from "../helpers/assert.ts";
import { linuxTest } from "../helpers/guard.ts";
import {
  BOOT_WAIT_S,
  consoleTail,
  createAndStart,
  requireTools,
  run,
  waitForAgent,
} from "./debian_agent_helpers.ts";
import { ensureDebianCloudGuest } from "../fixtures/debian_cloud_guest.ts";

/** The issue's bound, plus one poll interval of the watcher (core/net/autoforward.ts). */
const APPEAR_BOUND_MS = 5_000 + 2_000;

async function supervisorTail(home: string, name: string): Promise<string> {
  const dir = join(home, "vms", name);
  const names = await Array.fromAsync(Deno.readDir(dir), (e) => e.name).catch(() => []);
  const logs = names.filter((n) => n.endsWith(".log") && n !== "console.log");
  let out = "";
  for (const n of logs) {
    const text = await Deno.readTextFile(join(dir, n)).catch(() => "");
    out += `--- ${n}\n${text.split("\n").slice(-30).join("\n")}\n`;
  }
  return out;
}

interface Forward {
  protocol: string;
  address: string;
  host: number;
  guest: number;
  origin: string;
  via: string;
}

async function forwards(home: string, name: string): Promise<Forward[]> {
  const r = await run(home, ["port", name, "--format", "json"]);
  assertEquals(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Forward[];
}

const autoFor = (list: Forward[], guest: number) =>
  list.find((f) => f.origin === "auto" && f.guest === guest && f.protocol === "tcp");

/** Polls `cove port` until `pred` holds; the time (ms since epoch) the answer came back, or undefined. */
async function pollForwards(
  home: string,
  name: string,
  pred: (list: Forward[]) => boolean,
  boundMs: number,
): Promise<{ at: number; list: Forward[] } | undefined> {
  const until = Date.now() + boundMs;
  while (true) {
    const list = await forwards(home, name);
    const at = Date.now();
    if (pred(list)) return { at, list };
    if (at > until) return undefined;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Runs `sh -c SCRIPT` in the guest through its agent. */
async function guestSh(home: string, name: string, script: string, stdin?: string) {
  const r = await run(home, ["exec", name, "--via", "agent", "--", "sh", "-c", script], { stdin });
  assertEquals(r.code, 0, `${script}: ${r.stderr}`);
  return r.stdout;
}

/**
 * A guest shell test that holds while TCP `port` listens on `addrHex` (as
 * /proc/net/tcp prints it: 00000000 is 0.0.0.0, 0100007F is 127.0.0.1).
 */
function listening(port: number, addrHex: string): string {
  const p = port.toString(16).toUpperCase().padStart(4, "0");
  return `grep -q '^ *[0-9]*: ${addrHex}:${p} 00000000:0000 0A ' /proc/net/tcp`;
}

/** Shell that waits (up to 120 s) until `test` holds, else fails. */
function until(test: string): string {
  return `{ n=0; until ${test}; do n=$((n+1)); [ $n -lt 1200 ] || exit 9; sleep 0.1; done; }`;
}

/** GET http://127.0.0.1:PORT/PATH: the body's bytes, or the error's name. */
async function fetchHost(port: number, path: string): Promise<Uint8Array | string> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}/${path}`, {
      signal: AbortSignal.timeout(20_000),
    });
    const body = new Uint8Array(await r.arrayBuffer());
    return r.ok ? body : `HTTP ${r.status}`;
  } catch (e) {
    return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  }
}

/** Whether something accepts a TCP connection on 127.0.0.1:PORT and answers HTTP. */
async function answers(port: number): Promise<boolean> {
  return typeof (await fetchHost(port, "")) !== "string";
}

function randomPort(): number {
  return 20_000 + Math.floor(Math.random() * 20_000);
}

linuxTest({
  needs: "builds a Debian cloud guest with debootstrap and boots it under QEMU, as root",
  root: true,
  name:
    "automatic forwards: a guest listener appears in cove port within 5 s and answers on 127.0.0.1; stopped, it disappears",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    requireTools(["qemu-system-x86_64", "debootstrap", "mkfs.ext4"]);
    const g = await ensureDebianCloudGuest();
    const home = await Deno.makeTempDir({ prefix: "cove-e2e-autofwd-" });
    const name = "autofwd";
    const port = randomPort();
    const loopbackPort = port + 1;
    const ignoredPort = port + 2;
    const config = {
      engine: "qemu",
      cpus: 2,
      memory: "1GiB",
      disks: [{ path: "disk.img", size: "4GiB" }],
      networks: [{ mode: "user", autoForward: { ignore: [ignoredPort] } }],
    };
    const content = crypto.randomUUID() + crypto.randomUUID() + "\n";
    let started = false;
    try {
      await t.step("create and start a VM on user networking with autoForward", async () => {
        started = true; // from here on, the finally stops it
        await createAndStart(home, name, g, config);
        const r = await waitForAgent(home, name, BOOT_WAIT_S);
        if (r.code !== 0) {
          throw new Error(
            `the agent never answered: ${r.stderr}\n${await consoleTail(home, name)}`,
          );
        }
      });

      await t.step("the guest has an address on its user-networking NIC", async () => {
        // cloud-init's network-config asks for DHCP on eth0; configure it by hand if it has not.
        let addr = await guestSh(home, name, "ip -4 -o addr show dev eth0");
        if (!/inet 10\.0\.2\.\d+/.test(addr)) {
          await guestSh(
            home,
            name,
            "ip link set eth0 up && (ip addr add 10.0.2.15/24 dev eth0 || true)",
          );
          addr = await guestSh(home, name, "ip -4 -o addr show dev eth0");
        }
        assert(/inet 10\.0\.2\.\d+/.test(addr), addr);
      });

      const serve = (p: number, bind: string) =>
        `(cd /root/srv && { setsid nohup python3 -m http.server ${p} --bind ${bind} >/dev/null 2>&1 & echo $! > /root/http-${p}.pid; })`;
      await t.step("listeners on the guest's 127.0.0.1 and on an ignored port", async () => {
        await guestSh(
          home,
          name,
          `mkdir -p /root/srv && cat > /root/srv/content.txt && ${
            serve(loopbackPort, "127.0.0.1")
          } && ${serve(ignoredPort, "0.0.0.0")} && ${
            until(listening(loopbackPort, "0100007F"))
          } && ${until(listening(ignoredPort, "00000000"))}`,
          content,
        );
      });

      let hostPort = 0;
      await t.step(
        "a listener on 0.0.0.0 appears in cove port as an auto forward within the bound",
        async () => {
          const launched = Date.now();
          // The command returns once the guest lists the socket as listening (its poll is 0.1 s,
          // cove exec's at most 0.25 s): the listener is up from about then.
          await guestSh(
            home,
            name,
            `${serve(port, "0.0.0.0")} && ${until(listening(port, "00000000"))}`,
          );
          const up = Date.now();
          const seen = await pollForwards(
            home,
            name,
            (l) => autoFor(l, port) !== undefined,
            APPEAR_BOUND_MS + 60_000,
          );
          if (!seen) {
            throw new Error(
              `no auto forward of guest port ${port} in cove port\n${await supervisorTail(
                home,
                name,
              )}`,
            );
          }
          const after = seen.at - up;
          console.log(
            `autoforward_test: forward visible ${
              (after / 1000).toFixed(1)
            } s after the guest reported listening (${
              ((seen.at - launched) / 1000).toFixed(1)
            } s after the listener was launched)`,
          );
          console.log(`autoforward_test: cove port: ${JSON.stringify(seen.list)}`);
          assert(
            after <= APPEAR_BOUND_MS,
            `the forward appeared ${after} ms after the guest listened (bound ${APPEAR_BOUND_MS} ms)`,
          );
          const f = autoFor(seen.list, port)!;
          assertEquals(f.address, "127.0.0.1");
          // User networking: QEMU forwards it (hostfwd_add); no proxy could reach 10.0.2.15.
          assertEquals(f.via, "engine");
          hostPort = f.host;
          assert(hostPort >= port, `host port ${hostPort} for guest port ${port}`);
          // The loopback and the ignored listeners were up before this poll: it saw and skipped them.
          assertEquals(autoFor(seen.list, loopbackPort), undefined, JSON.stringify(seen.list));
          assertEquals(autoFor(seen.list, ignoredPort), undefined, JSON.stringify(seen.list));
        },
      );

      await t.step("127.0.0.1 at the forward's host port serves the guest's file", async () => {
        const body = await fetchHost(hostPort, "content.txt");
        assert(typeof body !== "string", `GET through the forward: ${body}`);
        assertEquals(new TextDecoder().decode(body), content);
      });

      await t.step(
        "stopped, the listener's forward leaves cove port and the host port stops answering",
        async () => {
          await guestSh(
            home,
            name,
            `kill $(cat /root/http-${port}.pid) && ${until(`! ${listening(port, "00000000")}`)}`,
          );
          const gone = Date.now();
          const seen = await pollForwards(
            home,
            name,
            (l) => autoFor(l, port) === undefined,
            APPEAR_BOUND_MS + 60_000,
          );
          assert(seen, `the auto forward of ${port} stayed\n${await supervisorTail(home, name)}`);
          console.log(
            `autoforward_test: forward removed ${
              ((seen.at - gone) / 1000).toFixed(1)
            } s after the guest stopped listening`,
          );
          assert(
            seen.at - gone <= APPEAR_BOUND_MS,
            `the forward left ${seen.at - gone} ms after the listener stopped`,
          );
          assertEquals(await answers(hostPort), false, `127.0.0.1:${hostPort} still answers`);
          // The others were never forwarded either.
          assertEquals(autoFor(seen.list, loopbackPort), undefined);
          assertEquals(autoFor(seen.list, ignoredPort), undefined);
        },
      );
    } finally {
      if (started) await run(home, ["stop", name, "--force"]).catch(() => undefined);
      await Deno.remove(home, { recursive: true }).catch(() => {});
    }
  },
});
