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
   * Freezes the guest's file systems. Returns whether it did, and a thaw
   * that always thaws (and never throws); a guest that did not answer is
   * not frozen, and its thaw does nothing.
   */
  freeze(): Promise<Freeze>;
  /** Sets the guest clock to the host's (after its memory was restored). Never throws. */
  setClock(): Promise<void>;
}

/** What a freeze did: whether the guest's file systems are frozen, and how to thaw them. */
export interface Freeze {
  frozen: boolean;
  thaw(): Promise<void>;
}

/** A freeze that froze nothing. */
export const NOT_FROZEN: Freeze = { frozen: false, thaw: () => Promise.resolve() };

/** The hooks of a VM with no agent channel: every step is a no-op. */
export const NO_AGENT: GuestHooks = {
  present: false,
  freeze: () => Promise.resolve(NOT_FROZEN),
  setClock: () => Promise.resolve(),
};
