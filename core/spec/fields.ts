/**
 * Readings of spec fields that need no validator: what runs a VM (the
 * supervisor, the engines) uses these, so that it loads no zod when its
 * spec comes from the summary (see Bundle.readSpecSummarized). The schema
 * (./schema.ts) re-exports them.
 * @module
 */
import type { VmSpec } from "./schema.ts";

/** The keyboard device kind of a spec's `keyboard`. */
export function keyboardKind(k: VmSpec["keyboard"]): "auto" | "usb" | "mac" | "none" {
  return typeof k === "string" ? k : k.type;
}

/** The host keyboard layout a spec's `keyboard` names (ansi unless it says iso). */
export function keyboardLayout(k: VmSpec["keyboard"]): "ansi" | "iso" {
  return typeof k === "string" ? "ansi" : k.layout;
}

/** The tag of a share: its own, or the name of its directory. */
export function shareTag(share: { path: string; tag?: string }): string {
  return share.tag ?? (share.path.replace(/\/+$/, "").split("/").pop() || "share");
}
