/**
 * Errors raised while reading or writing a migration stream.
 *
 * Every error about bad input carries the byte offset in the stream where the
 * problem was found and, when known, the section it belongs to, so that a user
 * can locate it with `livemig analyze` or a hex dump.
 *
 * Messages are built from strings the stream supplied (section idstrs, RAM
 * block and device names, vmdesc names) and end up on an operator's
 * terminal: StreamError escapes them with printable() once, here, so no
 * call site can forget (call sites pass raw text; errors of other classes
 * they embed are escaped with it).
 */
import { printable } from './printable.js';

/** Where in a stream something happened. */
export interface StreamLocation {
  /** Byte offset from the start of the stream. */
  offset: number;
  /** The section being read, when inside one: idstr (if known) and stream section id. */
  section?: { idstr?: string; sectionId?: number; instanceId?: number };
}

export type StreamErrorCode =
  | 'unexpected-end' // the stream ended inside a structure
  | 'bad-magic'
  | 'bad-version'
  | 'bad-configuration'
  | 'machine-mismatch'
  | 'unknown-section-type'
  | 'unknown-section'
  | 'version-too-new'
  | 'version-too-old'
  | 'bad-footer'
  | 'unsupported-command'
  | 'bad-command'
  | 'bad-ram-record'
  | 'bad-xbzrle'
  | 'bad-vmstate'
  | 'bad-vmdesc'
  | 'too-large' // a length in the stream exceeds a bound we enforce
  | 'handler-failed'
  | 'incomplete-stream'; // the stream ended (EOF) without state the guest needs: RAM never completed, a required section missing

function describeLocation(loc: StreamLocation): string {
  const at = `at offset ${loc.offset} (0x${loc.offset.toString(16)})`;
  const s = loc.section;
  if (!s) return at;
  const name = s.idstr !== undefined ? `section '${printable(s.idstr)}'` : 'section';
  const inst = s.instanceId !== undefined ? ` instance ${s.instanceId}` : '';
  const id = s.sectionId !== undefined ? ` (id ${s.sectionId})` : '';
  return `in ${name}${inst}${id} ${at}`;
}

/** Bad or unsupported input in a migration stream. */
export class StreamError extends Error {
  readonly code: StreamErrorCode;
  readonly offset: number;
  section: StreamLocation['section'];
  /** The message without the location suffix (escaped, as the message). */
  readonly reason: string;
  /** As given, for withSection to build the message again without escaping twice. */
  private readonly rawReason: string;

  constructor(code: StreamErrorCode, reason: string, location: StreamLocation, options?: { cause?: unknown }) {
    super(`${printable(reason)} ${describeLocation(location)}`, options);
    this.name = 'StreamError';
    this.code = code;
    this.reason = printable(reason);
    this.rawReason = reason;
    this.offset = location.offset;
    this.section = location.section;
  }

  /** Attach the enclosing section to an error raised deeper down (keeps the innermost one). */
  withSection(section: NonNullable<StreamLocation['section']>): StreamError {
    if (this.section) return this;
    return new StreamError(this.code, this.rawReason, { offset: this.offset, section }, { cause: this.cause });
  }

  /**
   * The same error, for a fault inside a PACKAGED command's package: the
   * offset stays the package's own, and the reason says which package.
   */
  inPackage(commandOffset: number): StreamError {
    return new StreamError(this.code, `${this.rawReason} (at offset ${this.offset} of the package of the PACKAGED command at stream offset ${commandOffset})`, { offset: commandOffset, ...(this.section ? { section: this.section } : {}) }, { cause: this.cause });
  }
}

/** What an incomplete stream lacked: a required entry that never arrived. */
export interface MissingSection {
  idstr: string;
  instanceId: number;
}

/**
 * A well-formed stream reached EOF without everything a guest needs (code
 * 'incomplete-stream'): loading it would start a guest with blank RAM or
 * default devices. `missing` names the required entries that never arrived
 * (empty when the cause is elsewhere, e.g. RAM).
 */
export class IncompleteStreamError extends StreamError {
  readonly missing: readonly MissingSection[];

  constructor(reason: string, location: StreamLocation, missing: readonly MissingSection[] = []) {
    super('incomplete-stream', reason, location);
    this.name = 'IncompleteStreamError';
    this.missing = missing;
  }
}

/** The stream ended before a structure was complete. */
export class UnexpectedEndError extends StreamError {
  constructor(wanted: number, available: number, offset: number) {
    super('unexpected-end', `stream ended: wanted ${wanted} more byte(s), ${available} available`, { offset });
    this.name = 'UnexpectedEndError';
  }
}

/** Failure of the channel underneath (socket reset, file error). */
export class ChannelError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ChannelError';
  }
}
