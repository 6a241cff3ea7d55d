/**
 * Postcopy's commands (source to destination) and their payloads, as QEMU 7.2
 * (migration/savevm.c):
 *
 *   POSTCOPY_ADVISE       be64 page-size summary, be64 target page size
 *   POSTCOPY_RAM_DISCARD  u8 0 (version), u8 n + block name, u8 0, then up to
 *                         12 x (be64 start, be64 length), bytes within the block
 *   PACKAGED              be32 length; that many bytes of stream follow the
 *                         command (LISTEN, device sections, RUN), loaded as one
 *   POSTCOPY_LISTEN / RUN / RESUME   no payload
 *   RECV_BITMAP           u8 n + block name
 *
 * The return path's postcopy messages are in return-path.ts.
 */
import { StreamError } from './errors.js';
import { MigCommand, TARGET_PAGE_SIZE } from './constants.js';
import { writeCommand } from './framing.js';
import type { StreamWriter } from './writer.js';

/** QEMU's MAX_DISCARDS_PER_COMMAND. */
export const MAX_DISCARD_RANGES_PER_COMMAND = 12;
/**
 * The largest package we accept. QEMU's limit is 2^32 - 1 bytes, but a package
 * holds device state only (13 KB for a -M pc guest); reading gigabytes into
 * memory because a stream says so would be an unbounded allocation.
 */
export const MAX_PACKAGE_BYTES = 64 * 1024 * 1024;

export interface PostcopyAdvice {
  /** OR of every RAM block's page size. */
  pageSizeSummary: number;
  targetPageSize: number;
}

export interface DiscardRange {
  startBytes: number;
  lengthBytes: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder(); // as StreamReader.countedString

function view(payload: Uint8Array): DataView {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

/** A be64 at `at` as an exact number, or a StreamError naming `what`. */
function be64At(payload: Uint8Array, at: number, what: string, offset: number): number {
  const v = view(payload);
  const high = v.getUint32(at);
  if (high > 0x1fffff) throw new StreamError('too-large', `${what} 0x${high.toString(16)}${v.getUint32(at + 4).toString(16).padStart(8, '0')} exceeds 2^53`, { offset });
  return high * 0x100000000 + v.getUint32(at + 4);
}

export function writePostcopyAdvise(out: StreamWriter, advice: PostcopyAdvice = { pageSizeSummary: TARGET_PAGE_SIZE, targetPageSize: TARGET_PAGE_SIZE }): void {
  const payload = new Uint8Array(16);
  const v = view(payload);
  v.setBigUint64(0, BigInt(advice.pageSizeSummary));
  v.setBigUint64(8, BigInt(advice.targetPageSize));
  writeCommand(out, MigCommand.PostcopyAdvise, payload);
}

/**
 * ADVISE's payload; undefined for the empty form (dirty-bitmap postcopy
 * only, no RAM postcopy). `offset` is the command's, for errors.
 */
export function parsePostcopyAdvise(payload: Uint8Array, offset: number): PostcopyAdvice | undefined {
  if (payload.length === 0) return undefined;
  if (payload.length !== 16) throw new StreamError('bad-command', `POSTCOPY_ADVISE has length ${payload.length}, expected 0 or 16`, { offset });
  return { pageSizeSummary: be64At(payload, 0, 'POSTCOPY_ADVISE page-size summary', offset), targetPageSize: be64At(payload, 8, 'POSTCOPY_ADVISE target page size', offset) };
}

/**
 * POSTCOPY_RAM_DISCARD commands for `ranges` of block `idstr`, at most 12
 * ranges per command as QEMU. Returns the number of commands written.
 */
export function writeRamDiscard(out: StreamWriter, idstr: string, ranges: readonly DiscardRange[]): number {
  const name = encoder.encode(idstr);
  if (name.length > 255) throw new RangeError(`RAM block name '${idstr}' is longer than 255 bytes`);
  let commands = 0;
  for (let first = 0; first < ranges.length; first += MAX_DISCARD_RANGES_PER_COMMAND) {
    const chunk = ranges.slice(first, first + MAX_DISCARD_RANGES_PER_COMMAND);
    const payload = new Uint8Array(3 + name.length + 16 * chunk.length);
    payload[0] = 0; // version
    payload[1] = name.length;
    payload.set(name, 2);
    payload[2 + name.length] = 0; // QEMU writes the name's NUL
    const v = view(payload);
    let at = 3 + name.length;
    for (const range of chunk) {
      v.setBigUint64(at, BigInt(range.startBytes));
      v.setBigUint64(at + 8, BigInt(range.lengthBytes));
      at += 16;
    }
    writeCommand(out, MigCommand.PostcopyRamDiscard, payload);
    commands++;
  }
  return commands;
}

/** A POSTCOPY_RAM_DISCARD payload; every fault names the byte at fault. */
export function parseRamDiscard(payload: Uint8Array, offset: number): { idstr: string; ranges: DiscardRange[] } {
  // The payload starts 5 bytes after the command's type byte.
  const at = (i: number): number => offset + 5 + i;
  if (payload.length < 3) throw new StreamError('bad-command', `POSTCOPY_RAM_DISCARD of ${payload.length} bytes is too short`, { offset: at(0) });
  if (payload[0] !== 0) throw new StreamError('bad-command', `POSTCOPY_RAM_DISCARD version ${payload[0]} is not supported (only 0)`, { offset: at(0) });
  const nameLength = payload[1]!;
  if (payload.length < 3 + nameLength) throw new StreamError('bad-command', `POSTCOPY_RAM_DISCARD block name of ${nameLength} bytes runs past the command's ${payload.length} bytes`, { offset: at(1) });
  const idstr = decoder.decode(payload.subarray(2, 2 + nameLength));
  if (payload[2 + nameLength] !== 0) throw new StreamError('bad-command', `POSTCOPY_RAM_DISCARD: expected a 0 byte after the block name, got 0x${payload[2 + nameLength]!.toString(16)}`, { offset: at(2 + nameLength) });
  const rangeBytes = payload.length - 3 - nameLength;
  if (rangeBytes % 16 !== 0) throw new StreamError('bad-command', `POSTCOPY_RAM_DISCARD: ${rangeBytes} bytes of ranges is not a whole number of 16-byte ranges`, { offset: at(3 + nameLength) });
  const ranges: DiscardRange[] = [];
  for (let i = 3 + nameLength; i < payload.length; i += 16) {
    ranges.push({ startBytes: be64At(payload, i, 'discard start', at(i)), lengthBytes: be64At(payload, i + 8, 'discard length', at(i + 8)) });
  }
  return { idstr, ranges };
}

/** PACKAGED: the command (be32 length), then the package itself. */
export function writePackaged(out: StreamWriter, pkg: Uint8Array): void {
  if (pkg.length > 0xffffffff) throw new RangeError(`a package of ${pkg.length} bytes exceeds 2^32 - 1`);
  const payload = new Uint8Array(4);
  view(payload).setUint32(0, pkg.length);
  writeCommand(out, MigCommand.Packaged, payload);
  out.bytes(pkg);
}

/** PACKAGED's length, checked against MAX_PACKAGE_BYTES. */
export function parsePackagedLength(payload: Uint8Array, offset: number): number {
  const length = view(payload).getUint32(0);
  if (length > MAX_PACKAGE_BYTES) {
    throw new StreamError('too-large', `PACKAGED announces ${length} bytes; more than the ${MAX_PACKAGE_BYTES} a package of device state may take here`, { offset: offset + 5 });
  }
  return length;
}

/** RECV_BITMAP (recovery): u8 n + block name. */
export function writeRecvBitmapCommand(out: StreamWriter, idstr: string): void {
  const name = encoder.encode(idstr);
  if (name.length > 255) throw new RangeError(`RAM block name '${idstr}' is longer than 255 bytes`);
  const payload = new Uint8Array(1 + name.length);
  payload[0] = name.length;
  payload.set(name, 1);
  writeCommand(out, MigCommand.RecvBitmap, payload);
}

export function parseRecvBitmapCommand(payload: Uint8Array, offset: number): string {
  if (payload.length < 1 || payload[0]! + 1 !== payload.length) {
    throw new StreamError('bad-command', `RECV_BITMAP: a block name of ${payload[0] ?? 0} bytes in a ${payload.length}-byte command`, { offset: offset + 5 });
  }
  return decoder.decode(payload.subarray(1));
}
