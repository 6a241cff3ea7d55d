/**
 * Multifd wire format, QEMU 7.2 (migration/multifd.c, multifd.h).
 *
 * Each extra channel starts with a 64-byte init packet (magic, version, the
 * source's UUID, channel id), then carries data packets: a fixed 1344-byte
 * header (magic, version, flags, pages_alloc, normal_pages, next_packet_size,
 * packet_num, 32 unused bytes, a 256-byte NUL-padded block name, 128 be64 page
 * offsets) followed by the payload (normal_pages × 4096 raw bytes, or
 * next_packet_size compressed bytes when a compression flag is set).
 *
 * Everything here is pure (no I/O) so it runs in worker threads as well.
 */

import { TARGET_PAGE_SIZE } from '../../wire/constants.js';

export const MULTIFD_MAGIC = 0x11223344;

/** The error QEMU 7.2 gives for multifd over exec:/fd:/file:. */
export const MULTIFD_PROTOCOL_ERROR = 'multifd is not supported by current protocol';
export const MULTIFD_VERSION = 1;
export const MULTIFD_INIT_BYTES = 64;
/** MULTIFD_PACKET_SIZE (512 KiB) / 4 KiB pages. */
export const MULTIFD_PAGES_PER_PACKET = 128;
export const MULTIFD_PAGE_SIZE = TARGET_PAGE_SIZE;
/** Fixed part (64) + ramblock (256) + offsets (8 × 128). */
export const MULTIFD_HEADER_BYTES = 64 + 256 + 8 * MULTIFD_PAGES_PER_PACKET;
export const MULTIFD_RAMBLOCK_BYTES = 256;

export const MULTIFD_FLAG_SYNC = 1 << 0;
export const MULTIFD_FLAG_COMPRESSION_MASK = 7 << 1;
export const MULTIFD_FLAG_NOCOMP = 0 << 1;
export const MULTIFD_FLAG_ZLIB = 1 << 1;
export const MULTIFD_FLAG_ZSTD = 2 << 1;

/** A compressed payload may not exceed this: twice the packet size, as QEMU 7.2's zbuff_len on both sides. */
export const MULTIFD_COMPRESSED_MAX = 2 * MULTIFD_PAGES_PER_PACKET * MULTIFD_PAGE_SIZE;

/** Default of parameter `multifd-channels` (QEMU: 2, range 1..255). */
export const DEFAULT_MULTIFD_CHANNELS = 2;

/** A problem with multifd input or a multifd channel; `offset` is the byte offset in that channel's stream. */
export class MultifdError extends Error {
  constructor(readonly channel: number | undefined, readonly offset: number, readonly reason: string, options?: { cause?: unknown }) {
    super(`${channel === undefined ? 'multifd channel' : `multifd channel ${channel}`} at offset ${offset} (0x${offset.toString(16)}): ${reason}`, options);
    this.name = 'MultifdError';
  }
}

export const ZERO_UUID = new Uint8Array(16);

/** `11111111-2222-3333-4444-555555555555` → 16 bytes. */
export function parseUuid(text: string): Uint8Array {
  const hex = text.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex) || !/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(text)) {
    throw new RangeError(`'${text}' is not a UUID`);
  }
  // No Buffer: MigrationConfig (and so the browser core) reads this module's constants.
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16));
}

/** QEMU's qemu_uuid_unparse. */
export function formatUuid(uuid: Uint8Array): string {
  const h = Array.from(uuid.subarray(0, 16), (b) => b.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** MultiFDInit_t of channel `id`. */
export function encodeInitPacket(uuid: Uint8Array, id: number): Uint8Array {
  const b = new Uint8Array(MULTIFD_INIT_BYTES);
  const v = new DataView(b.buffer);
  v.setUint32(0, MULTIFD_MAGIC);
  v.setUint32(4, MULTIFD_VERSION);
  b.set(uuid.subarray(0, 16), 8);
  b[24] = id;
  return b;
}

/**
 * multifd_recv_initial_packet: check magic, version, UUID and id with QEMU
 * 7.2's texts; returns the channel id.
 */
export function parseInitPacket(b: Uint8Array, expectedUuid: Uint8Array, channels: number): number {
  const v = new DataView(b.buffer, b.byteOffset, MULTIFD_INIT_BYTES);
  const magic = v.getUint32(0);
  const version = v.getUint32(4);
  if (magic !== MULTIFD_MAGIC) {
    throw new MultifdError(undefined, 0, `multifd: received packet magic ${magic.toString(16)} expected ${MULTIFD_MAGIC.toString(16)}`);
  }
  if (version !== MULTIFD_VERSION) {
    throw new MultifdError(undefined, 4, `multifd: received packet version ${version} expected ${MULTIFD_VERSION}`);
  }
  const id = b[24]!;
  const uuid = b.subarray(8, 24);
  if (!uuid.every((x, i) => x === expectedUuid[i])) {
    throw new MultifdError(id, 8, `multifd: received uuid '${formatUuid(uuid)}' and expected uuid '${formatUuid(expectedUuid)}' for channel ${id}`);
  }
  if (id >= channels) {
    throw new MultifdError(id, 24, `multifd: received channel id ${id} is greater than number of channels ${channels}`);
  }
  return id;
}

export interface MultifdPacketHeader {
  flags: number;
  pagesAlloc: number;
  normalPages: number;
  nextPacketSize: number;
  /** Global packet number (exact below 2^53). */
  packetNum: number;
  ramblock: string;
  /** Page byte offsets in the block; the first normalPages are valid. */
  offsets: Float64Array;
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/** Names encoded once (block names repeat in every packet). */
const nameCache = new Map<string, Uint8Array>();
function encodedName(idstr: string): Uint8Array {
  let n = nameCache.get(idstr);
  if (!n) {
    n = textEncoder.encode(idstr);
    if (n.length >= MULTIFD_RAMBLOCK_BYTES) throw new RangeError(`RAM block name '${idstr}' is too long for a multifd packet`);
    nameCache.set(idstr, n);
  }
  return n;
}

/**
 * multifd_send_fill_packet into `out` (at least MULTIFD_HEADER_BYTES, from
 * `at`). `offsets` holds `normalPages` page byte offsets.
 */
export function writePacketHeader(
  out: Uint8Array,
  at: number,
  h: { flags: number; normalPages: number; nextPacketSize: number; packetNum: number; ramblock: string | undefined; offsets: ArrayLike<number> },
): void {
  const v = new DataView(out.buffer, out.byteOffset + at, MULTIFD_HEADER_BYTES);
  out.fill(0, at, at + MULTIFD_HEADER_BYTES);
  v.setUint32(0, MULTIFD_MAGIC);
  v.setUint32(4, MULTIFD_VERSION);
  v.setUint32(8, h.flags);
  v.setUint32(12, MULTIFD_PAGES_PER_PACKET);
  v.setUint32(16, h.normalPages);
  v.setUint32(20, h.nextPacketSize);
  v.setUint32(24, Math.floor(h.packetNum / 0x100000000));
  v.setUint32(28, h.packetNum >>> 0);
  if (h.ramblock !== undefined) out.set(encodedName(h.ramblock), at + 64);
  for (let i = 0; i < h.normalPages; i++) {
    const o = h.offsets[i]!;
    v.setUint32(320 + 8 * i, Math.floor(o / 0x100000000));
    v.setUint32(324 + 8 * i, o >>> 0);
  }
}

/**
 * multifd_recv_unfill_packet's checks on the fixed header (block and offset
 * checks need the destination's blocks: see checkPacketPages). `offset` is
 * where the header starts in the channel's stream, for error messages.
 */
export function parsePacketHeader(b: Uint8Array, channel: number, offset: number, into?: Float64Array): MultifdPacketHeader {
  const v = new DataView(b.buffer, b.byteOffset, MULTIFD_HEADER_BYTES);
  const magic = v.getUint32(0);
  if (magic !== MULTIFD_MAGIC) {
    throw new MultifdError(channel, offset, `multifd: received packet magic ${magic.toString(16)} and expected magic ${MULTIFD_MAGIC.toString(16)}`);
  }
  const version = v.getUint32(4);
  if (version !== MULTIFD_VERSION) {
    throw new MultifdError(channel, offset + 4, `multifd: received packet version ${version} and expected version ${MULTIFD_VERSION}`);
  }
  const flags = v.getUint32(8);
  const pagesAlloc = v.getUint32(12);
  if (pagesAlloc > MULTIFD_PAGES_PER_PACKET) {
    throw new MultifdError(channel, offset + 12, `multifd: received packet with ${pagesAlloc} pages and expected maximum pages are ${MULTIFD_PAGES_PER_PACKET}`);
  }
  const normalPages = v.getUint32(16);
  if (normalPages > pagesAlloc) {
    throw new MultifdError(channel, offset + 16, `multifd: received packet with ${normalPages} pages and expected maximum pages are ${pagesAlloc}`);
  }
  const nextPacketSize = v.getUint32(20);
  const packetNum = v.getUint32(24) * 0x100000000 + v.getUint32(28);
  let ramblock = '';
  if (normalPages > 0) {
    const raw = b.subarray(64, 64 + MULTIFD_RAMBLOCK_BYTES - 1); // QEMU forces ramblock[255] = 0
    const end = raw.indexOf(0);
    ramblock = textDecoder.decode(end < 0 ? raw : raw.subarray(0, end));
  }
  const offsets = into ?? new Float64Array(MULTIFD_PAGES_PER_PACKET);
  for (let i = 0; i < normalPages; i++) offsets[i] = v.getUint32(320 + 8 * i) * 0x100000000 + v.getUint32(324 + 8 * i);
  return { flags, pagesAlloc, normalPages, nextPacketSize, packetNum, ramblock, offsets };
}

/**
 * How many pages from `from` (at most up to `count`) are consecutive in guest
 * RAM: such a run is one read or one write of guest memory on either side.
 */
export function pageRunLength(offsets: ArrayLike<number>, from: number, count: number): number {
  const first = offsets[from]!;
  let run = 1;
  while (from + run < count && offsets[from + run] === first + run * MULTIFD_PAGE_SIZE) run++;
  return run;
}

/** The per-offset check of multifd_recv_unfill_packet; returns the index of a bad offset or -1. */
export function findBadOffset(h: MultifdPacketHeader, blockLengthBytes: number): number {
  for (let i = 0; i < h.normalPages; i++) {
    const o = h.offsets[i]!;
    if (o > blockLengthBytes - MULTIFD_PAGE_SIZE || o % MULTIFD_PAGE_SIZE !== 0) return i;
  }
  return -1;
}
