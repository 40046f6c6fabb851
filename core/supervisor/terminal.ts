/**
 * Connects this process's terminal to a VM's serial console: guest output
 * to stdout, keystrokes to the guest, with the terminal in raw mode so that
 * the guest's shell gets every key (Ctrl-C included). Ctrl-] (0x1d, as in
 * telnet and virsh) detaches. When stdin is not a terminal, its bytes are
 * sent as they are, and at its end the console keeps printing until the
 * guest has been quiet for a second.
 * @module
 */

/** The detach key: Ctrl-]. */
export const ESCAPE_BYTE = 0x1d;
/** How the detach key is shown to users. */
export const ESCAPE_NAME = "Ctrl-]";

/** Why an attachment ended. */
export type AttachEnd = "detached" | "eof" | "closed";

/** Options of {@link attachTerminal}. */
export interface AttachOptions {
  /** Guest output. */
  output: ReadableStream<Uint8Array>;
  /** Sends bytes to the guest. */
  write: (b: Uint8Array) => Promise<void>;
  /** Called once the terminal is in raw mode (for a hint line). */
  onAttached?: (raw: boolean) => void;
  /** Where guest output goes (default stdout). */
  stdout?: { writeSync(b: Uint8Array): number };
  /** Where keystrokes come from (default stdin). */
  stdin?: {
    read(b: Uint8Array): Promise<number | null>;
    isTerminal(): boolean;
    setRaw?(raw: boolean): void;
  };
  /** Quiet time after stdin's end before returning (non-terminal stdin). */
  lingerMs?: number;
}

/** Pumps bytes both ways until detach, stdin's end (non-terminal) or the console closing. */
export async function attachTerminal(opts: AttachOptions): Promise<AttachEnd> {
  const stdout = opts.stdout ?? Deno.stdout;
  const stdin = opts.stdin ?? Deno.stdin;
  const raw = stdin.isTerminal();
  if (raw) stdin.setRaw?.(true);
  let lastOutput = Date.now();
  let ended: ((e: AttachEnd) => void) | undefined;
  const done = new Promise<AttachEnd>((r) => (ended = r));
  const reader = opts.output.getReader();
  const outLoop = (async () => {
    try {
      while (true) {
        const r = await reader.read();
        if (r.done) break;
        lastOutput = Date.now();
        let off = 0;
        while (off < r.value.length) off += stdout.writeSync(r.value.subarray(off));
      }
    } catch { /* closed */ }
    ended?.("closed");
  })();
  const inLoop = (async () => {
    const buf = new Uint8Array(4096);
    try {
      while (true) {
        const n = await stdin.read(buf);
        if (n === null) break;
        const chunk = buf.subarray(0, n);
        const esc = chunk.indexOf(ESCAPE_BYTE);
        if (esc >= 0) {
          if (esc > 0) await opts.write(chunk.slice(0, esc));
          ended?.("detached");
          return;
        }
        await opts.write(chunk.slice());
      }
    } catch {
      ended?.("closed");
      return;
    }
    // stdin ended: linger while the guest is still talking.
    const linger = opts.lingerMs ?? 1000;
    while (Date.now() - lastOutput < linger) await new Promise((r) => setTimeout(r, 100));
    ended?.("eof");
  })();
  try {
    opts.onAttached?.(raw);
    return await done;
  } finally {
    if (raw) {
      try {
        stdin.setRaw?.(false);
      } catch { /* not a terminal any more */ }
    }
    reader.cancel().catch(() => {});
    void outLoop;
    void inLoop;
  }
}
