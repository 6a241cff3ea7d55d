/**
 * One multifd receive channel (QEMU 7.2 multifd_recv_thread): the init
 * packet, then packets until EOF, pages straight into guest RAM. The same loop
 * runs on the main thread (MultifdReceiver's fallback) and in a worker thread
 * (recv-worker.ts); what differs is how it reports to the receiver, hence the
 * context. Every failure leaves as a MultifdError naming the channel and the
 * byte offset in that channel's stream.
 */
import type { RamBlock } from '../block.js';
import type { RamBlockTable } from '../block-table.js';
import { StreamError, UnexpectedEndError, type StreamReader } from '../../wire/index.js';
import { compressionOfFlags, createRecvCodec, ensureMultifdCodecs, MULTIFD_COMPRESSION_FLAGS, type MultifdCompression, type MultifdRecvCodec } from './codec.js';
import {
  findBadOffset,
  MULTIFD_COMPRESSED_MAX,
  MULTIFD_FLAG_COMPRESSION_MASK,
  MULTIFD_FLAG_SYNC,
  MULTIFD_HEADER_BYTES,
  MULTIFD_INIT_BYTES,
  MULTIFD_PAGE_SIZE,
  MULTIFD_PAGES_PER_PACKET,
  MultifdError,
  pageRunLength,
  parseInitPacket,
  type MultifdPacketHeader,
  parsePacketHeader,
} from './packet.js';


export interface RecvChannelCounters {
  packets: number;
  pages: number;
  bytes: number;
}

export interface RecvChannelContext {
  uuid: Uint8Array;
  channels: number;
  compression: MultifdCompression;
  /** Where packets' block names are looked up. */
  table: RamBlockTable;
  /** The init packet named this channel `id` (throw to refuse it, e.g. a duplicate id). */
  onInit(id: number): void;
  /** A SYNC packet arrived: resolves once the main channel releases this channel (multifd_recv_sync_main). */
  onSync(): Promise<void>;
  /** True once the receiver failed or closed: stop quietly. */
  stopped(): boolean;
  counters: RecvChannelCounters;
}

/**
 * Receive one channel until its clean end. Returns the channel id, or throws
 * a MultifdError.
 */
export async function receiveMultifdChannel(reader: StreamReader, ctx: RecvChannelContext): Promise<number> {
  let id = -1;
  try {
    await ensureMultifdCodecs(ctx.compression);
    const init = new Uint8Array(MULTIFD_INIT_BYTES);
    await reader.readInto(init, 0, MULTIFD_INIT_BYTES);
    id = parseInitPacket(init, ctx.uuid, ctx.channels);
    ctx.onInit(id);
    await receivePackets(reader, ctx, id);
    return id;
  } catch (err) {
    throw asMultifdError(err, id < 0 ? undefined : id, reader.offset);
  }
}

/** Any failure as a MultifdError that names the channel and where its stream broke. */
export function asMultifdError(err: unknown, channel: number | undefined, offset: number): MultifdError {
  if (err instanceof MultifdError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  const at = e instanceof StreamError ? e.offset : offset;
  const what = e instanceof UnexpectedEndError ? `the channel ended inside a packet or init packet (${e.reason})` : e.message;
  return new MultifdError(channel, at, what, { cause: e });
}

/**
 * multifd_recv_unfill_packet: the header at stream offset `at` parsed and
 * checked (fixed part, compression flags, block, offsets), with QEMU 7.2's
 * texts. `block` is set when the packet has pages.
 */
export function checkPacket(
  header: Uint8Array,
  id: number,
  at: number,
  offsets: Float64Array,
  ctx: { compression: MultifdCompression; table: RamBlockTable },
): { h: MultifdPacketHeader; block: RamBlock | undefined } {
  const expectedFlags = MULTIFD_COMPRESSION_FLAGS[ctx.compression];
  const h = parsePacketHeader(header, id, at, offsets);
  // As 7.2, only packets with pages are checked (QEMU sets no compression bits on the others).
  if (h.normalPages > 0 && (h.flags & MULTIFD_FLAG_COMPRESSION_MASK) !== expectedFlags) {
    const name = compressionOfFlags(h.flags) ?? 'unknown';
    throw new MultifdError(id, at + 8, `multifd ${id}: flags received ${(h.flags & MULTIFD_FLAG_COMPRESSION_MASK).toString(16)} flags expected ${expectedFlags.toString(16)} (compression ${name}, expected ${ctx.compression})`);
  }
  if (h.normalPages === 0) return { h, block: undefined };
  const found = ctx.table.lookup(h.ramblock);
  if (!found.block) throw new MultifdError(id, at + 64, `multifd: unknown ram block ${h.ramblock}`);
  const block = found.block;
  const bad = findBadOffset(h, block.lengthBytes);
  if (bad >= 0) {
    throw new MultifdError(id, at + 320 + 8 * bad, `multifd: offset too long ${h.offsets[bad]!.toString(16)} (max ${block.lengthBytes.toString(16)})${h.offsets[bad]! % MULTIFD_PAGE_SIZE ? ' (not page-aligned)' : ''}`);
  }
  return { h, block };
}

async function receivePackets(reader: StreamReader, ctx: RecvChannelContext, id: number): Promise<void> {
  const expectedFlags = MULTIFD_COMPRESSION_FLAGS[ctx.compression];
  const counters = ctx.counters;
  const header = new Uint8Array(MULTIFD_HEADER_BYTES);
  const offsets = new Float64Array(MULTIFD_PAGES_PER_PACKET);
  let codec: MultifdRecvCodec | undefined;
  for (;;) {
    if (ctx.stopped()) return;
    if (await reader.atEnd()) return;
    const at = reader.offset;
    await reader.readInto(header, 0, MULTIFD_HEADER_BYTES);
    const { h, block } = checkPacket(header, id, at, offsets, ctx);
    counters.packets++;
    counters.bytes += MULTIFD_HEADER_BYTES;
    if (block) {
      if (expectedFlags === 0) {
        await readPages(reader, block, h.offsets, h.normalPages);
        counters.bytes += h.normalPages * MULTIFD_PAGE_SIZE;
      } else {
        codec ??= createRecvCodec(ctx.compression);
        const payloadAt = reader.offset;
        const payload = await reader.bytes(h.nextPacketSize, MULTIFD_COMPRESSED_MAX, 'multifd payload');
        const targets: Uint8Array[] = [];
        for (let i = 0; i < h.normalPages; i++) targets.push(block.pageForUpdate(h.offsets[i]! / MULTIFD_PAGE_SIZE));
        try {
          codec!.decode(payload, targets);
        } catch (err) {
          throw new MultifdError(id, payloadAt, `multifd ${id}: cannot decompress the payload: ${(err as Error).message}`, { cause: err });
        } finally {
          for (let i = 0; i < h.normalPages; i++) block.pageUpdated(h.offsets[i]! / MULTIFD_PAGE_SIZE);
        }
        counters.bytes += h.nextPacketSize;
      }
      counters.pages += h.normalPages;
    }
    // Wait for the main channel's EOS (multifd_recv_sync_main) before reading on.
    if (h.flags & MULTIFD_FLAG_SYNC) await ctx.onSync();
  }
}

/**
 * Pages straight from the received chunks into guest RAM. A block over one
 * memory takes each run of consecutive pages as one read into its place (no
 * view per page; a run's bytes may span chunks, readInto copies each part).
 */
async function readPages(reader: StreamReader, block: RamBlock, offsets: Float64Array, count: number): Promise<void> {
  const memory = block.memory;
  if (memory !== undefined && block.pageOffsetForUpdate !== undefined) {
    for (let i = 0; i < count; ) {
      const first = offsets[i]!;
      const run = pageRunLength(offsets, i, count);
      // Every page of the run is marked written before its bytes land (as pageForUpdate would).
      const at = block.pageOffsetForUpdate(first / MULTIFD_PAGE_SIZE);
      for (let k = 1; k < run; k++) block.pageOffsetForUpdate(first / MULTIFD_PAGE_SIZE + k);
      const bytes = run * MULTIFD_PAGE_SIZE;
      if (reader.buffered >= bytes) reader.readIntoSync(memory, at, bytes);
      else await reader.readInto(memory, at, bytes);
      i += run;
    }
    return;
  }
  for (let i = 0; i < count; i++) {
    const pageIndex = offsets[i]! / MULTIFD_PAGE_SIZE;
    const page = block.pageForUpdate(pageIndex);
    try {
      if (reader.buffered >= MULTIFD_PAGE_SIZE) reader.readIntoSync(page, 0, MULTIFD_PAGE_SIZE);
      else await reader.readInto(page, 0, MULTIFD_PAGE_SIZE);
    } finally {
      block.pageUpdated(pageIndex);
    }
  }
}
