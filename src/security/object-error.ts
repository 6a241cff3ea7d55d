/** A credentials or authorization object could not be created, used or found; the message names which and why. */
export class ObjectError extends Error {
  override readonly name = 'ObjectError';
}

/** Which end of a TLS session credentials are for (QEMU's `endpoint`). */
export type Endpoint = 'server' | 'client';
