/**
 * Byte buffers joined end to end: the one copy loop that the agent's file
 * reads, registry bodies, the Apple LZ4 codec, the seed ISO and the control
 * socket's request parser share.
 * @module
 */

/**
 * One new buffer holding `parts` in order (always a copy, even of one part).
 *
 * @example
 * ```ts
 * import { concatBytes } from "./bytes.ts";
 * concatBytes([new Uint8Array([1]), new Uint8Array([2, 3])]); // Uint8Array [1, 2, 3]
 * ```
 */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
