/**
 * Why a migration ended other than `completed`, as a code the engine, the
 * monitor and tests decide on (never the message text) and a sentence for
 * people. Errors from the layers below (StreamError, TransportError,
 * ChannelError) are kept as the `cause`.
 */
import { TransportError } from '../transport/errors.js';
import { ChannelError, StreamError, UnexpectedEndError } from '../wire/index.js';

export type MigrationErrorCode =
  /** migrate_cancel (source or destination). */
  | 'cancelled'
  /** The peer sent or acknowledged nothing for `x-livemig-peer-timeout-ms`. */
  | 'peer-timeout'
  /** The peer closed the connection or it broke. */
  | 'peer-closed'
  /** The destination said it could not load the stream (SHUT non-zero). */
  | 'destination-failed'
  /** The go-ahead (or the whole stream, with a QEMU peer) was sent, then the peer went silent: it may run the guest. */
  | 'outcome-unknown'
  /** Postcopy: the link broke while the guest ran on the destination; both sides wait for recovery. */
  | 'postcopy-paused'
  /** Postcopy: the destination failed after it ran the guest; neither side has the guest's current state. */
  | 'postcopy-lost'
  /** The stream is bad or incomplete (a StreamError is the cause). */
  | 'bad-stream'
  /** Opening a channel failed (a TransportError is the cause). */
  | 'transport'
  /** TLS failed: the handshake, a certificate, a key, or the peer's authorization (tls-authz). */
  | 'tls'
  /** The configuration does not allow this migration (e.g. multifd over exec:). */
  | 'refused'
  /** Anything else: a local failure (disk, handler). */
  | 'internal';

export class MigrationError extends Error {
  override readonly name = 'MigrationError';
  constructor(
    readonly code: MigrationErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** `err` as a MigrationError: itself, or wrapped with `code` (its message kept). */
  static from(err: unknown, code: MigrationErrorCode = 'internal'): MigrationError {
    if (err instanceof MigrationError) return err;
    if (err instanceof Error) {
      const derived: MigrationErrorCode =
        isTlsFailure(err) ? 'tls'
        : err instanceof UnexpectedEndError || err instanceof ChannelError ? 'peer-closed'
        : err instanceof StreamError ? 'bad-stream'
        : err instanceof TransportError ? 'transport'
        : code;
      return new MigrationError(derived, err.message, { cause: err });
    }
    return new MigrationError(code, String(err));
  }
}


/** A TLS handshake failure, or a TLS alert that arrived after it (TLS 1.3 checks client certificates late). */
function isTlsFailure(err: Error): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof TransportError && e.code === 'tls-failed') return true;
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('ERR_SSL_')) return true;
  }
  return false;
}
