/**
 * Connects this process's terminal to a VM's serial console: guest output
 * to stdout, keystrokes to the guest, with the terminal in raw mode so that
 * the guest's shell gets every key (Ctrl-C included). Ctrl-] (0x1d, as in
 * telnet and virsh) detaches; Ctrl-A then x (as in QEMU's console) detaches
 * and stops the VM; Ctrl-A Ctrl-A sends one Ctrl-A, and Ctrl-A followed by
 * any other key sends both. When stdin is not a terminal, its bytes are
 * sent as they are, and at its end the console keeps printing until the
 * guest has been quiet for a second.
 * @module
 */

/** The detach key: Ctrl-]. */
export const ESCAPE_BYTE = 0x1d;
/** How the detach key is shown to users. */
export const ESCAPE_NAME = "Ctrl-]";

/** The prefix of console commands: Ctrl-A. */
export const PREFIX_BYTE = 0x01;
/** After the prefix, this key detaches and stops the VM. */
export const STOP_KEY = 0x78; // "x"
/** How the detach-and-stop keys are shown to users. */
export const STOP_KEYS_NAME = "Ctrl-A x";

/** Why an attachment ended: detached, detached to stop the VM, stdin's end, or the console closed. */
export type AttachEnd = "detached" | "stop" | "eof" | "closed";

/**
 * Splits keystrokes into what goes to the guest and the console command
 * they end with, if any. `pending` carries a Ctrl-A from one read to the next.
 */
export function scanKeys(
  chunk: Uint8Array,
  state: { pending: boolean },
): { send: Uint8Array; end?: "detached" | "stop" } {
  const send: number[] = [];
  for (const b of chunk) {
    if (state.pending) {
      state.pending = false;
      if (b === STOP_KEY) return { send: new Uint8Array(send), end: "stop" };
      if (b === PREFIX_BYTE) {
        send.push(PREFIX_BYTE);
        continue;
      }
      send.push(PREFIX_BYTE);
    }
    if (b === ESCAPE_BYTE) return { send: new Uint8Array(send), end: "detached" };
    if (b === PREFIX_BYTE) state.pending = true;
    else send.push(b);
  }
  return { send: new Uint8Array(send) };
}

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
    const keys = { pending: false };
    try {
      while (true) {
        const n = await stdin.read(buf);
        if (n === null) break;
        const { send, end } = scanKeys(buf.subarray(0, n), keys);
        if (send.length) await opts.write(send);
        if (end) {
          ended?.(end);
          return;
        }
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
