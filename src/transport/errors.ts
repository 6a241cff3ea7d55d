/**
 * Transport errors.
 *
 * Setting a channel up (bad URI, connect, listen, spawn, open) fails with a
 * TransportError that names the URI. Once a channel is up, failures surface
 * from read()/write()/close() as the wire layer's ChannelError, so the stream
 * code above needs to know only one error type for "the bytes stopped".
 */
import { ChannelError } from '../wire/errors.js';

export type TransportErrorCode =
  | 'bad-uri' // the URI does not parse
  | 'unsupported' // a protocol or option QEMU 7.2 knows but livemig does not do
  | 'connect-failed'
  | 'listen-failed'
  | 'spawn-failed'
  | 'open-failed'
  | 'timeout'
  | 'tls-failed' // the TLS handshake or the peer's authorization failed
  | 'aborted'
  | 'closed'; // the listener was closed, or its only connection was already taken

export class TransportError extends Error {
  constructor(
    readonly code: TransportErrorCode,
    readonly uri: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TransportError';
  }
}

/** An exec: command that ended badly: non-zero exit code, or killed by a signal. */
export class ExecExitError extends ChannelError {
  constructor(
    readonly uri: string,
    readonly exitCode: number | null,
    readonly signal: NodeJS.Signals | null,
    note = '',
    options?: { cause?: unknown },
  ) {
    const how = signal !== null ? `was killed by ${signal}` : `exited with code ${exitCode}`;
    super(`${uri}: command ${how}${note ? ` (${note})` : ''}`, options);
    this.name = 'ExecExitError';
  }
}

/** A ChannelError for `reason` (an abort reason, a Node error), keeping ChannelErrors as they are. */
export function asChannelError(reason: unknown, context: string): ChannelError {
  if (reason instanceof ChannelError) return reason;
  const text = reason instanceof Error ? reason.message : String(reason);
  return new ChannelError(`${context}: ${text}`, { cause: reason });
}
