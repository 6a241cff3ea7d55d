/**
 * Return-path messages, destination to source (QEMU migration/migration.c,
 * `enum mig_rp_message_type`): be16 type, be16 length, payload.
 *
 *   SHUT          be32 (0 = took over, else failed)
 *   PONG          be32 echo of a PING
 *   REQ_PAGES_ID  be64 start, be32 length, u8 n + block name   (postcopy: send these pages now)
 *   REQ_PAGES     be64 start, be32 length                      (same block as the last request)
 *   RECV_BITMAP   u8 n + block name; then, outside the message, be64 size,
 *                 the received bitmap (little-endian u64 words), be64 0x0123456789abcdef
 *   RESUME_ACK    be32 1 (postcopy recovery)
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

/** The RECV_BITMAP trailer's end mark (QEMU's RAMBLOCK_RECV_BITMAP_ENDING). */
export const RECV_BITMAP_ENDING = 0x0123456789abcdefn;

export type ReturnPathRecord =
  | { type: 'shut'; value: number }
  | { type: 'pong'; value: number }
  /** A page request; `idstr` only when the message named the block (REQ_PAGES_ID). */
  | { type: 'req-pages'; startBytes: number; lengthBytes: number; idstr?: string; offset: number }
  /** RECV_BITMAP: the bitmap follows the message; read it with readRecvBitmap(). */
  | { type: 'recv-bitmap'; idstr: string; offset: number }
  | { type: 'resume-ack'; value: number };

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

function nameBytes(idstr: string): Uint8Array {
  const name = textEncoder.encode(idstr);
  if (name.length > 255) throw new RangeError(`RAM block name '${idstr}' is longer than 255 bytes`);
  return name;
}

/** REQ_PAGES_ID when `idstr` is given (a new block), else REQ_PAGES. */
export function writeReqPages(out: StreamWriter, startBytes: number, lengthBytes: number, idstr?: string): void {
  if (idstr === undefined) {
    out.be16(ReturnPathMessage.ReqPages).be16(12).be64(startBytes).be32(lengthBytes);
    return;
  }
  const name = nameBytes(idstr);
  out.be16(ReturnPathMessage.ReqPagesId).be16(13 + name.length).be64(startBytes).be32(lengthBytes).u8(name.length).bytes(name);
}

export function writeResumeAck(out: StreamWriter, value = 1): void {
  out.be16(ReturnPathMessage.ResumeAck).be16(4).be32(value);
}

/**
 * RECV_BITMAP and its trailer: `bitmap` is one bit per page (bit n = page n,
 * LSB first in 32-bit words), sent as little-endian 64-bit words as QEMU.
 */
export function writeRecvBitmap(out: StreamWriter, idstr: string, bitmap: Uint32Array, pageCount: number): void {
  const name = nameBytes(idstr);
  out.be16(ReturnPathMessage.RecvBitmap).be16(1 + name.length).u8(name.length).bytes(name);
  const sizeBytes = Math.ceil(pageCount / 64) * 8;
  const bytes = new Uint8Array(sizeBytes);
  const v = new DataView(bytes.buffer);
  for (let w = 0; w < Math.ceil(pageCount / 32); w++) v.setUint32(w * 4, bitmap[w] ?? 0, true);
  out.be64(sizeBytes).bytes(bytes).be64(RECV_BITMAP_ENDING);
}

/**
 * The bitmap after a RECV_BITMAP message, for a block of `pageCount` pages:
 * its size must be the block's, rounded up to 8 bytes, and the end mark must follow.
 */
export async function readRecvBitmap(input: StreamReader, idstr: string, pageCount: number): Promise<Uint32Array> {
  const at = input.offset;
  const sizeBytes = await input.be64Number('RECV_BITMAP size');
  const expected = Math.ceil(pageCount / 64) * 8;
  if (sizeBytes !== expected) {
    throw new StreamError('bad-command', `RECV_BITMAP for '${idstr}': ${sizeBytes} bytes, but its ${pageCount} pages take ${expected}`, { offset: at });
  }
  const bytes = await input.bytes(sizeBytes, expected, 'RECV_BITMAP bitmap');
  const endAt = input.offset;
  const end = await input.be64();
  if (end !== RECV_BITMAP_ENDING) throw new StreamError('bad-command', `RECV_BITMAP for '${idstr}': end mark 0x${end.toString(16)}, expected 0x${RECV_BITMAP_ENDING.toString(16)}`, { offset: endAt });
  const words = new Uint32Array(Math.ceil(pageCount / 32));
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let w = 0; w < words.length; w++) words[w] = v.getUint32(w * 4, true);
  if (pageCount % 32) words[words.length - 1]! &= (1 << pageCount % 32) - 1;
  return words;
}

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
  if (name === undefined) throw new StreamError('bad-command', `return path: unknown message type ${type}`, { offset: at });
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const bad = (what: string): StreamError => new StreamError('bad-command', `return path: ${name} of ${length} bytes: ${what}`, { offset: at });
  switch (type) {
    case ReturnPathMessage.Shut:
    case ReturnPathMessage.Pong:
    case ReturnPathMessage.ResumeAck:
      if (length !== 4) throw bad('expected 4');
      return { type: type === ReturnPathMessage.Shut ? 'shut' : type === ReturnPathMessage.Pong ? 'pong' : 'resume-ack', value: v.getUint32(0) };
    case ReturnPathMessage.ReqPages:
    case ReturnPathMessage.ReqPagesId: {
      if (length < 12) throw bad('shorter than a start and a length');
      const high = v.getUint32(0);
      if (high > 0x1fffff) throw bad('the start exceeds 2^53');
      const request = { type: 'req-pages' as const, startBytes: high * 0x100000000 + v.getUint32(4), lengthBytes: v.getUint32(8), offset: at };
      if (type === ReturnPathMessage.ReqPages) {
        if (length !== 12) throw bad('expected 12');
        return request;
      }
      if (length < 13 || payload[12]! + 13 !== length) throw bad(`a block name of ${payload[12] ?? 0} bytes does not fit`);
      return { ...request, idstr: textDecoder.decode(payload.subarray(13)) };
    }
    case ReturnPathMessage.RecvBitmap:
      if (length < 1 || payload[0]! + 1 !== length) throw bad(`a block name of ${payload[0] ?? 0} bytes does not fit`);
      return { type: 'recv-bitmap', idstr: textDecoder.decode(payload.subarray(1)), offset: at };
    default:
      throw new StreamError('unsupported-command', `return path: ${name} (length ${length}) is not supported`, { offset: at });
  }
}
