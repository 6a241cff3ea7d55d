/**
 * Return-path messages, destination to source (QEMU migration/migration.c,
 * `enum mig_rp_message_type`): be16 type, be16 length, payload. Only the
 * precopy ones are understood; the rest are recognised and refused.
 */
import { StreamError } from './errors.js';
import type { StreamReader } from './reader.js';
import type { StreamWriter } from './writer.js';

export const enum ReturnPathMessage {
  Invalid = 0,
  /** be32: 0 = the destination loaded everything and took over; non-zero = it failed. */
  Shut = 1,
  /** be32 echo of a PING. */
  Pong = 2,
  ReqPagesId = 3,
  ReqPages = 4,
  RecvBitmap = 5,
  ResumeAck = 6,
}

const NAMES: Record<number, string> = { 1: 'SHUT', 2: 'PONG', 3: 'REQ_PAGES_ID', 4: 'REQ_PAGES', 5: 'RECV_BITMAP', 6: 'RESUME_ACK' };
/** The source's buffer for one message in QEMU; longer messages are an error there too. */
const MAX_MESSAGE_BYTES = 512;

export type ReturnPathRecord = { type: 'shut'; value: number } | { type: 'pong'; value: number };

export function writeShut(out: StreamWriter, value: number): void {
  out.be16(ReturnPathMessage.Shut).be16(4).be32(value);
}

export function writePong(out: StreamWriter, value: number): void {
  out.be16(ReturnPathMessage.Pong).be16(4).be32(value);
}

/** The next message, or null at a clean end of the return path. */
export async function readReturnPathMessage(input: StreamReader): Promise<ReturnPathRecord | null> {
  if (await input.atEnd()) return null;
  const at = input.offset;
  const type = await input.be16();
  const length = await input.be16();
  const payload = await input.bytes(length, MAX_MESSAGE_BYTES, 'return-path message');
  const name = NAMES[type];
  if ((type === ReturnPathMessage.Shut || type === ReturnPathMessage.Pong) && length === 4) {
    const value = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
    return { type: type === ReturnPathMessage.Shut ? 'shut' : 'pong', value };
  }
  if (name === undefined) throw new StreamError('bad-command', `return path: unknown message type ${type}`, { offset: at });
  throw new StreamError('unsupported-command', `return path: ${name} (length ${length}) is not supported`, { offset: at });
}
