/**
 * The guest's part in a snapshot, through the guest agent when it answers:
 * freeze and thaw the file systems around a disk copy, and set the clock
 * after a memory restore. Pluggable: the supervisor passes the hooks of its
 * agent channel; a VM without an agent channel gets {@link NO_AGENT}, whose
 * steps do nothing (the snapshot is then crash-consistent, like a power cut).
 * @module
 */

/** What a snapshot asks of the guest. */
export interface GuestHooks {
  /** Whether an agent channel exists for this VM at all. */
  readonly present: boolean;
  /**
   * Freezes the guest's file systems. Returns a thaw that always thaws
   * (and never throws); a guest that did not answer returns a thaw that does nothing.
   */
  freeze(): Promise<() => Promise<void>>;
  /** Sets the guest clock to the host's (after its memory was restored). Never throws. */
  setClock(): Promise<void>;
}

/** The hooks of a VM with no agent channel: every step is a no-op. */
export const NO_AGENT: GuestHooks = {
  present: false,
  freeze: () => Promise.resolve(() => Promise.resolve()),
  setClock: () => Promise.resolve(),
};
