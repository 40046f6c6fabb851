/**
 * The vz engine's guest agent bridge, on pipes as VZ would hold them: bytes
 * pass both ways between the unix socket and the console port's pipes, and a
 * second client is refused while the first holds the channel.
 */
import { assertEquals } from "../helpers/assert.ts";
import { serveAgentBridge } from "../../engines/vz/agent_bridge.ts";
import { fds, readableFromFd, writeAllFd } from "../../ffi/fd.ts";

Deno.test({
  name: "the vz agent bridge carries bytes both ways and refuses a second client",
  ignore: Deno.build.os !== "linux" && Deno.build.os !== "darwin",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const f = fds();
    const [guestIn, hostOut] = f.pipe();
    const [hostIn, guestOut] = f.pipe();
    const dir = await Deno.makeTempDir({ prefix: "cove-bridge-" });
    const socket = `${dir}/agent.sock`;
    const bridge = serveAgentBridge(socket, { readFd: hostIn, writeFd: hostOut });
    const guestReader = readableFromFd(guestIn).getReader();
    try {
      const first = await Deno.connect({ transport: "unix", path: socket });
      await first.write(new TextEncoder().encode('{"execute":"guest-ping"}'));
      let got = "";
      while (got.length < 24) {
        const r = await guestReader.read();
        if (r.done) break;
        got += new TextDecoder().decode(r.value);
      }
      assertEquals(got, '{"execute":"guest-ping"}');
      await writeAllFd(guestOut, new TextEncoder().encode('{"return": {}}\n'));
      const buf = new Uint8Array(64);
      const n = await first.read(buf);
      assertEquals(new TextDecoder().decode(buf.subarray(0, n ?? 0)), '{"return": {}}\n');
      const second = await Deno.connect({ transport: "unix", path: socket });
      assertEquals(await second.read(new Uint8Array(8)).catch(() => null), null);
      second.close();
      first.close();
    } finally {
      bridge.close();
      await guestReader.cancel().catch(() => {});
      for (const fd of [guestIn, guestOut]) {
        try {
          f.close(fd);
        } catch { /* closed */ }
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
