/**
 * The vz engine's guest agent channel: VZ attaches the virtio console port
 * `org.qemu.guest_agent.0` to a pair of pipes, and this bridge serves their
 * host ends as the unix socket the supervisor connects to (the same contract
 * as QEMU's chardev socket). One client at a time: a second connection is
 * closed at once, so the channel stays the supervisor's alone.
 * @module
 */
import { dirname } from "node:path";
import { fds, readableFromFd, writeAllFd } from "../../ffi/fd.ts";

/** A running bridge. */
export interface AgentBridge {
  close(): void;
}

/** Serves `socket` over the host ends of the agent port's pipes. */
export function serveAgentBridge(
  socket: string,
  host: { readFd: number; writeFd: number },
): AgentBridge {
  Deno.mkdirSync(dirname(socket), { recursive: true, mode: 0o700 });
  const listener = Deno.listen({ transport: "unix", path: socket });
  try {
    Deno.chmodSync(socket, 0o600);
  } catch { /* best effort */ }
  let current: Deno.UnixConn | undefined;
  let closed = false;
  // Guest output goes to the connected client; with none it is dropped (the
  // supervisor resynchronises with guest-sync-delimited anyway).
  const fromGuest = (async () => {
    try {
      for await (const chunk of readableFromFd(host.readFd)) {
        const c = current;
        if (!c) continue;
        let off = 0;
        try {
          while (off < chunk.length) off += await c.write(chunk.subarray(off));
        } catch { /* client gone */ }
      }
    } catch { /* pipe closed: the VM stopped */ }
  })();
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        if (current || closed) {
          try {
            conn.close(); // the channel is taken
          } catch { /* closed */ }
          continue;
        }
        current = conn;
        void (async () => {
          const buf = new Uint8Array(64 * 1024);
          try {
            while (true) {
              const n = await conn.read(buf);
              if (n === null) break;
              await writeAllFd(host.writeFd, buf.subarray(0, n));
            }
          } catch { /* client or pipe gone */ }
          if (current === conn) current = undefined;
          try {
            conn.close();
          } catch { /* closed */ }
        })();
      }
    } catch { /* listener closed */ }
  })();
  return {
    close() {
      if (closed) return;
      closed = true;
      try {
        listener.close();
      } catch { /* closed */ }
      try {
        current?.close();
      } catch { /* closed */ }
      for (const fd of [host.readFd, host.writeFd]) {
        try {
          fds().close(fd);
        } catch { /* closed */ }
      }
      void fromGuest;
      void accepting;
      Deno.remove(socket).catch(() => {});
    },
  };
}
