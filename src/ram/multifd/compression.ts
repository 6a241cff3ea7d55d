/**
 * Multifd compression codecs (parameter `multifd-compression`: none, zlib,
 * zstd), byte-compatible with QEMU 7.2's migration/multifd-zlib.c and
 * migration/multifd-zstd.c.
 *
 * QEMU 7.2 semantics, which these codecs follow:
 * - One compression stream per channel for the whole migration (zlib:
 *   deflateInit(level), i.e. zlib wrapper, 32 KiB window, memLevel 8; zstd:
 *   ZSTD_initCStream(level), no checksum, no content size). Within a packet
 *   each 4 KiB page is fed without flushing (Z_NO_FLUSH / ZSTD_e_continue) and
 *   the last page with a flush (Z_SYNC_FLUSH / ZSTD_e_flush); the payload
 *   (next_packet_size) is what came out for this packet.
 * - The output buffer is twice MULTIFD_PACKET_SIZE (1 MiB); QEMU fails the
 *   channel when a packet does not fit ("deflate failed to compress all
 *   input", "compressStream buffer too small"), and its receiver reads
 *   next_packet_size bytes into a buffer of that size, so neither side may
 *   exceed it.
 * - The receiver keeps one decompression stream per channel, inflates page by
 *   page straight into guest memory, and requires exactly pages × 4096 bytes
 *   out of the packet. Packets without pages never reach the codec (QEMU calls
 *   recv_pages only when normal_num > 0; such packets may carry a stale
 *   next_packet_size and no payload).
 *
 * Backing off on incompressible data (not in QEMU): each channel measures the
 * ratio of every packet it compresses. After `streak` packets in a row that
 * save less than 1 − `ratio` of their size, it stops spending CPU on matching:
 * - zlib: deflateParams(level 0) after the packet's sync flush; the following
 *   packets are stored blocks in the same deflate stream (about 6 GB/s instead
 *   of ~45 MB/s for random pages at level 1);
 * - zstd: libzstd only changes the level between frames, so the channel ends
 *   its frame at the end of that packet (ZSTD_e_end: a 3-byte empty last
 *   block, consumed by the receiver together with the packet's last page) and
 *   starts a new frame at level −5 (fast mode: random pages go ~1.8× faster
 *   than at level 1, much faster than at high levels). A 7.2 receiver's
 *   ZSTD_decompressStream loop reads frames back to back, so this stays
 *   decodable.
 * Every `probe` packets (starting at 4, doubling while probes fail, up to
 * 64) one packet is compressed at the configured level again; if it
 * compresses, the channel returns to normal. A backed-off packet whose pages
 * look compressible (few distinct values among 64 sampled bytes per page)
 * triggers a probe at once (zlib: that very packet; zstd: the next one); if
 * such an early probe fails, only scheduled probes remain until the channel
 * compresses again. Level switches happen at packet boundaries, so every
 * payload still decodes with QEMU's own receive loop.
 */
import { MULTIFD_COMPRESSION_FLAGS, MULTIFD_DEFAULT_LEVEL, multifdLevelRange, registerMultifdCodec, type MultifdCompression, type MultifdRecvCodec, type MultifdSendCodec } from './codec.js';
import { ZlibStream, Z_NO_FLUSH, Z_SYNC_FLUSH } from './compression-zlib.js';
import { ZstdCompressStream, ZstdDecompressStream, ZstdEnd } from './compression-zstd.js';
import { MULTIFD_COMPRESSED_MAX, MULTIFD_PAGES_PER_PACKET, MULTIFD_PAGE_SIZE } from './packet.js';

export type { MultifdCompression } from './codec.js';
export { zstdAvailable } from './compression-zstd.js';
// Defined with the codec interface (pure, for the parameter checks); exported here as well for callers of this module.
export { MULTIFD_COMPRESSED_MAX } from './packet.js';
export { MULTIFD_DEFAULT_LEVEL, MULTIFD_ZLIB_LEVEL_MAX, MULTIFD_ZSTD_LEVEL_MAX, multifdLevelRange } from './codec.js';

const PAGE = MULTIFD_PAGE_SIZE;



/** Levels the channels drop to while backed off. */
export const MULTIFD_ZLIB_BACKOFF_LEVEL = 0;
export const MULTIFD_ZSTD_BACKOFF_LEVEL = -5;


/** Packet flag bits of a method: none 0, zlib 0x2, zstd 0x4 (QEMU 7.2 MULTIFD_FLAG_*). */
export function multifdCompressionFlags(method: MultifdCompression): number {
  return MULTIFD_COMPRESSION_FLAGS[method];
}

/** When to stop compressing a channel's packets and when to try again. */
export interface MultifdBackoffPolicy {
  /** A packet "does not compress" when payload > ratio × input (default 0.9: saves under 10 %). */
  ratio: number;
  /** Packets in a row that do not compress before the channel backs off (default 2). */
  streak: number;
  /** Backed-off packets before the first probe at the full level (default 4); doubles per failed probe. */
  probe: number;
  /** Largest probe interval (default 64 packets, i.e. 32 MiB of pages). */
  probeMax: number;
}

export const DEFAULT_BACKOFF_POLICY: Readonly<MultifdBackoffPolicy> = Object.freeze({ ratio: 0.9, streak: 2, probe: 4, probeMax: 64 });

export interface MultifdCodecOptions {
  /** Channel id, for error messages. */
  channel?: number;
  /** Backoff policy (partial: the rest from DEFAULT_BACKOFF_POLICY), or false to always compress at the configured level. */
  backoff?: Partial<MultifdBackoffPolicy> | false;
}

/** Counters of one channel's codec (live object; read it any time). */
export interface MultifdCodecStats {
  /** Sender: packets compressed at the configured level (probes included). */
  packetsCompressed: number;
  /** Sender: packets sent at the backoff level (stored blocks / zstd fast mode). */
  packetsBackedOff: number;
  /** Sender: times the channel backed off. */
  backoffs: number;
  /** Sender: probe packets (full level while backed off). */
  probes: number;
  /** Sender: page bytes in and payload bytes out, all packets. */
  bytesIn: number;
  bytesOut: number;
  /** Sender: page bytes of backed-off packets (their share of bytesIn). */
  bytesInBackedOff: number;
  /** Sender: true while the channel is backed off. */
  backedOff: boolean;
  /** Receiver: packets decoded, payload bytes in, page bytes out. */
  packetsDecompressed: number;
  recvBytesIn: number;
  recvBytesOut: number;
}

/** Pages to compress: one contiguous buffer (page i at i × 4096) or one view per page. */
export type MultifdPages = Uint8Array | readonly Uint8Array[];
/** Where decoded pages go: one contiguous buffer, one view per page, or a function giving page i's view. */
export type MultifdPageTargets = Uint8Array | readonly Uint8Array[] | ((index: number) => Uint8Array);

export interface MultifdCodec {
  readonly method: MultifdCompression;
  /** The configured level (0 for none). */
  readonly level: number;
  /** Compression bits for the packet flags: none 0, zlib 0x2, zstd 0x4. */
  readonly flags: number;
  readonly stats: MultifdCodecStats;
  /**
   * The payload (next_packet_size bytes) for `count` pages (default: all of
   * `pages`; 1..128). zlib/zstd return a new buffer; none returns the pages
   * themselves (a view when contiguous). Throws if the payload would exceed
   * QEMU's 1 MiB buffer (cannot happen for ≤ 128 pages).
   */
  compressPacket(pages: MultifdPages, count?: number): Uint8Array;
  /**
   * Decode one packet's payload into `pageCount` pages (1..128; 0 is a no-op
   * and the payload is ignored, as in QEMU). Throws MultifdCompressionError if
   * the payload is corrupt, truncated, or yields any other number of bytes
   * than pageCount × 4096, naming the channel and packet; after a zlib/zstd
   * error the channel's stream is unusable (as in QEMU, the migration fails).
   * `packetNum` (the header's packet_num) is only used in messages.
   */
  decompressPacket(payload: Uint8Array, pageCount: number, into: MultifdPageTargets, packetNum?: number): void;
  /** Free the streams. */
  close(): void;
}

/** A bad multifd compressed payload (or a compressor failure), naming channel and packet. */
export class MultifdCompressionError extends Error {
  constructor(
    readonly channel: number | undefined,
    readonly method: MultifdCompression,
    /** Index of the packet in this channel's stream (0-based). */
    readonly packet: number,
    readonly packetNum: number | undefined,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(
      `multifd${channel === undefined ? '' : ` channel ${channel}`}: ${method} packet ${packet}${packetNum === undefined ? '' : ` (packet_num ${packetNum})`}: ${reason}`,
      options,
    );
    this.name = 'MultifdCompressionError';
  }
}

/**
 * A codec for one channel: compressPacket on the source, decompressPacket on
 * the destination (each side creates its stream on first use). `level`
 * defaults to 1 (QEMU's default for both methods) and must be in
 * multifdLevelRange(method).
 */
export function createMultifdCodec(method: MultifdCompression, level: number = MULTIFD_DEFAULT_LEVEL, options: MultifdCodecOptions = {}): MultifdCodec {
  if (method !== 'none' && method !== 'zlib' && method !== 'zstd') throw new RangeError(`unknown multifd compression '${String(method)}'`);
  if (method === 'none') level = 0;
  const [min, max] = multifdLevelRange(method);
  if (!Number.isInteger(level) || level < min || level > max) {
    throw new RangeError(`multifd-${method}-level must be an integer in ${min}..${max}, got ${level}`);
  }
  return new Codec(method, level, options);
}

/** Pages of a packet as (buffer, offset) pairs without allocating. */
function pageAt(pages: MultifdPages, i: number): [Uint8Array, number] {
  if (pages instanceof Uint8Array) return [pages, i * PAGE];
  return [pages[i]!, 0];
}

function targetAt(into: MultifdPageTargets, i: number): [Uint8Array, number] {
  if (into instanceof Uint8Array) return [into, i * PAGE];
  const t = typeof into === 'function' ? into(i) : into[i];
  if (!(t instanceof Uint8Array) || t.length < PAGE) throw new RangeError(`target for page ${i} is not a ${PAGE}-byte view`);
  return [t, 0];
}

const EMPTY = new Uint8Array(0);

class Codec implements MultifdCodec {
  readonly flags: number;
  readonly stats: MultifdCodecStats = {
    packetsCompressed: 0,
    packetsBackedOff: 0,
    backoffs: 0,
    probes: 0,
    bytesIn: 0,
    bytesOut: 0,
    bytesInBackedOff: 0,
    backedOff: false,
    packetsDecompressed: 0,
    recvBytesIn: 0,
    recvBytesOut: 0,
  };
  private readonly policy: MultifdBackoffPolicy | undefined;
  private readonly backoffLevel: number;
  private readonly channel: number | undefined;

  private deflate: ZlibStream | undefined;
  private inflate: ZlibStream | undefined;
  private zcs: ZstdCompressStream | undefined;
  private zds: ZstdDecompressStream | undefined;
  private out: Uint8Array | undefined;
  private readonly probeByte = new Uint8Array(1);

  /** Level the sender's stream is at now. */
  private current: number;
  private sendPackets = 0;
  private recvPackets = 0;
  private badStreak = 0;
  private probeInterval = 0;
  private untilProbe = 0;
  private probing: false | 'early' | 'scheduled' = false;
  /** Probe as soon as a backed-off packet looks compressible (off after such a probe failed). */
  private earlyProbes = true;
  private readonly seen = new Uint16Array(256);
  private seenMark = 0;
  private closed = false;

  constructor(
    readonly method: MultifdCompression,
    readonly level: number,
    options: MultifdCodecOptions,
  ) {
    this.flags = MULTIFD_COMPRESSION_FLAGS[method];
    this.channel = options.channel;
    this.current = level;
    this.backoffLevel = method === 'zlib' ? MULTIFD_ZLIB_BACKOFF_LEVEL : MULTIFD_ZSTD_BACKOFF_LEVEL;
    // zlib level 0 is already stored blocks; nothing to back off from.
    const canBackOff = method !== 'none' && !(method === 'zlib' && level === 0) && options.backoff !== false;
    if (canBackOff) {
      const p = { ...DEFAULT_BACKOFF_POLICY, ...(options.backoff || {}) };
      if (!(p.ratio > 0) || !(p.streak >= 1) || !(p.probe >= 1) || !(p.probeMax >= p.probe)) throw new RangeError(`bad multifd backoff policy ${JSON.stringify(p)}`);
      this.policy = p;
    }
  }

  // ---- sender ----

  compressPacket(pages: MultifdPages, count?: number): Uint8Array {
    const n = count ?? (pages instanceof Uint8Array ? Math.floor(pages.length / PAGE) : pages.length);
    const packet = this.sendPackets;
    if (this.closed) throw this.error(packet, undefined, 'codec closed');
    if (!Number.isInteger(n) || n < 1 || n > MULTIFD_PAGES_PER_PACKET) throw this.error(packet, undefined, `page count ${n} is not in 1..${MULTIFD_PAGES_PER_PACKET}`);
    if (pages instanceof Uint8Array ? pages.length < n * PAGE : pages.length < n) throw this.error(packet, undefined, `fewer than ${n} pages given`);
    this.sendPackets++;
    const inBytes = n * PAGE;

    if (this.method === 'none') {
      this.stats.packetsCompressed++;
      this.stats.bytesIn += inBytes;
      this.stats.bytesOut += inBytes;
      if (pages instanceof Uint8Array) return pages.length === inBytes ? pages : pages.subarray(0, inBytes);
      const out = new Uint8Array(inBytes);
      for (let i = 0; i < n; i++) out.set(pages[i]!.subarray(0, PAGE), i * PAGE);
      return out;
    }

    // While backed off, a packet that looks compressible triggers a probe:
    // zlib switches right now (deflateParams is free between sync-flushed
    // packets), zstd from the next packet on (its level changes between frames).
    let early = this.current !== this.level && this.earlyProbes && this.looksCompressible(pages, n);
    if (early && this.method === 'zlib') {
      this.deflate!.setLevel(this.level);
      this.current = this.level;
      this.probing = 'early';
      this.stats.probes++;
      early = false;
    }

    const out = (this.out ??= new Uint8Array(MULTIFD_COMPRESSED_MAX));
    let pos: number;
    try {
      pos = this.method === 'zlib' ? this.deflatePages(pages, n, out, packet) : this.zstdPages(pages, n, out, packet);
    } catch (err) {
      if (err instanceof MultifdCompressionError) throw err;
      throw this.error(packet, undefined, `compressor failed: ${(err as Error).message}`, err);
    }

    const backedOff = this.current !== this.level;
    if (backedOff) {
      this.stats.packetsBackedOff++;
      this.stats.bytesInBackedOff += inBytes;
    } else this.stats.packetsCompressed++;
    // Measure, decide the next packet's level, and switch at this boundary
    // (zstd appends its end of frame to this payload).
    const next = this.nextLevel(backedOff, early, pos, inBytes);
    if (next !== this.current) pos = this.switchLevel(next, out, pos, packet);
    this.stats.bytesIn += inBytes;
    this.stats.bytesOut += pos;
    return out.slice(0, pos);
  }

  /** QEMU's zlib_send_prepare: deflate page by page, sync flush on the last. */
  private deflatePages(pages: MultifdPages, n: number, out: Uint8Array, packet: number): number {
    const z = (this.deflate ??= new ZlibStream('deflate', this.current));
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const flush = i === n - 1 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
      const [buf, off] = pageAt(pages, i);
      if (buf.length < off + PAGE) throw this.error(packet, undefined, `page ${i} is shorter than ${PAGE} bytes`);
      let done = 0;
      for (;;) {
        const step = z.run(flush, buf, off + done, PAGE - done, out, pos, out.length - pos);
        done += step.consumed;
        pos += step.produced;
        if (done === PAGE || pos === out.length || (step.consumed === 0 && step.produced === 0)) break;
      }
      // A full output buffer may hold an unfinished flush: treat it as too small.
      if (done < PAGE || pos === out.length) throw this.error(packet, undefined, `compressed payload exceeds ${MULTIFD_COMPRESSED_MAX} bytes (QEMU 7.2's buffer)`);
    }
    return pos;
  }

  /** QEMU's zstd_send_prepare: ZSTD_e_continue per page, ZSTD_e_flush on the last. */
  private zstdPages(pages: MultifdPages, n: number, out: Uint8Array, packet: number): number {
    const z = (this.zcs ??= new ZstdCompressStream(this.current));
    let pos = 0;
    for (let i = 0; i < n; i++) {
      const last = i === n - 1;
      const [buf, off] = pageAt(pages, i);
      if (buf.length < off + PAGE) throw this.error(packet, undefined, `page ${i} is shorter than ${PAGE} bytes`);
      const src = buf.subarray(off, off + PAGE);
      pos = this.zstdRun(z, src, last ? ZstdEnd.flush : ZstdEnd.continue, out, pos, packet);
    }
    return pos;
  }

  private zstdRun(z: ZstdCompressStream, src: Uint8Array, end: ZstdEnd, out: Uint8Array, pos: number, packet: number): number {
    let done = 0;
    let ret: number;
    for (;;) {
      const [r, produced, consumed] = z.run(out.subarray(pos), done === 0 ? src : src.subarray(done), end);
      ret = r;
      done += consumed;
      pos += produced;
      const finished = done === src.length && (end === ZstdEnd.continue || ret === 0);
      if (finished || pos === out.length || (produced === 0 && consumed === 0)) break;
    }
    if (done < src.length || (end !== ZstdEnd.continue && ret !== 0)) {
      throw this.error(packet, undefined, `compressed payload exceeds ${MULTIFD_COMPRESSED_MAX} bytes (QEMU 7.2's buffer)`);
    }
    return pos;
  }

  /**
   * While backed off: does this packet look compressible? Samples 64 bytes
   * of each page and counts distinct values: random pages show ~57 of 64,
   * text or structured binary far fewer. True when at least 1/8 of the pages
   * show under 48. Only a hint to probe early; the probe measures.
   */
  private looksCompressible(pages: MultifdPages, n: number): boolean {
    const seen = this.seen;
    let low = 0;
    for (let i = 0; i < n; i++) {
      const [buf, off] = pageAt(pages, i);
      const mark = ++this.seenMark;
      if (mark === 0xffff) {
        seen.fill(0);
        this.seenMark = 1;
      }
      let distinct = 0;
      for (let k = off + 31; k < off + PAGE; k += 64) {
        const b = buf[k]!;
        if (seen[b] !== this.seenMark) {
          seen[b] = this.seenMark;
          distinct++;
        }
      }
      if (distinct < 48 && ++low * 8 >= n) return true;
    }
    return false;
  }

  /** The backoff state machine: the level for the next packet. */
  private nextLevel(backedOff: boolean, early: boolean, outBytes: number, inBytes: number): number {
    const p = this.policy;
    if (!p) return this.level;
    if (backedOff) {
      if (--this.untilProbe <= 0 || early) {
        this.probing = early && this.untilProbe > 0 ? 'early' : 'scheduled';
        this.stats.probes++;
        return this.level;
      }
      return this.backoffLevel;
    }
    const bad = outBytes > inBytes * p.ratio;
    if (this.probing) {
      const kind = this.probing;
      this.probing = false;
      if (bad) {
        if (kind === 'early') {
          // The sample misled us: no early probes until the channel compresses again.
          this.earlyProbes = false;
        } else {
          this.probeInterval = Math.min(this.probeInterval * 2, p.probeMax);
          this.untilProbe = this.probeInterval;
        }
        return this.backoffLevel;
      }
      this.stats.backedOff = false;
      this.earlyProbes = true;
      this.badStreak = 0;
      return this.level;
    }
    this.badStreak = bad ? this.badStreak + 1 : 0;
    if (this.badStreak >= p.streak) {
      this.badStreak = 0;
      this.stats.backoffs++;
      this.stats.backedOff = true;
      this.probeInterval = p.probe;
      this.untilProbe = p.probe;
      return this.backoffLevel;
    }
    return this.level;
  }

  /** Change the stream's level at a packet boundary; returns the new payload end. */
  private switchLevel(level: number, out: Uint8Array, pos: number, packet: number): number {
    if (this.method === 'zlib') {
      // The packet ended with Z_SYNC_FLUSH: deflateParams emits nothing now.
      this.deflate!.setLevel(level);
    } else {
      // End the frame inside this packet (empty last block), new level from the next frame on.
      pos = this.zstdRun(this.zcs!, EMPTY, ZstdEnd.end, out, pos, packet);
      this.zcs!.setLevel(level);
    }
    this.current = level;
    return pos;
  }

  // ---- receiver ----

  decompressPacket(payload: Uint8Array, pageCount: number, into: MultifdPageTargets, packetNum?: number): void {
    const packet = this.recvPackets;
    if (this.closed) throw this.error(packet, packetNum, 'codec closed');
    if (!Number.isInteger(pageCount) || pageCount < 0 || pageCount > MULTIFD_PAGES_PER_PACKET) {
      throw this.error(packet, packetNum, `page count ${pageCount} is not in 0..${MULTIFD_PAGES_PER_PACKET}`);
    }
    if (pageCount === 0) return;
    if (into instanceof Uint8Array && into.length < pageCount * PAGE) throw this.error(packet, packetNum, `target holds fewer than ${pageCount} pages`);
    this.recvPackets++;
    const expected = pageCount * PAGE;

    if (this.method === 'none') {
      if (payload.length !== expected) throw this.error(packet, packetNum, `payload has ${payload.length} bytes, expected ${expected} (${pageCount} pages)`);
      if (into instanceof Uint8Array) into.set(payload, 0);
      else for (let i = 0; i < pageCount; i++) targetAt(into, i)[0].set(payload.subarray(i * PAGE, (i + 1) * PAGE));
    } else {
      if (payload.length > MULTIFD_COMPRESSED_MAX) {
        throw this.error(packet, packetNum, `payload of ${payload.length} bytes exceeds ${MULTIFD_COMPRESSED_MAX} (QEMU 7.2's buffer)`);
      }
      try {
        if (this.method === 'zlib') this.inflatePages(payload, pageCount, into, packet, packetNum);
        else this.zstdDecodePages(payload, pageCount, into, packet, packetNum);
      } catch (err) {
        if (err instanceof MultifdCompressionError) throw err;
        throw this.error(packet, packetNum, `corrupt payload (${payload.length} bytes): ${(err as Error).message}`, err);
      }
    }
    this.stats.packetsDecompressed++;
    this.stats.recvBytesIn += payload.length;
    this.stats.recvBytesOut += expected;
  }

  /** QEMU's zlib_recv_pages, with exact checks: every input byte used, exactly pages × 4096 out. */
  private inflatePages(payload: Uint8Array, n: number, into: MultifdPageTargets, packet: number, packetNum: number | undefined): void {
    const z = (this.inflate ??= new ZlibStream('inflate'));
    let inPos = 0;
    for (let i = 0; i < n; i++) {
      const flush = i === n - 1 ? Z_SYNC_FLUSH : Z_NO_FLUSH;
      const [t, off] = targetAt(into, i);
      let got = 0;
      while (got < PAGE) {
        const step = z.run(flush, payload, inPos, payload.length - inPos, t, off + got, PAGE - got);
        inPos += step.consumed;
        got += step.produced;
        if (step.consumed === 0 && step.produced === 0) break;
      }
      if (got < PAGE) throw this.short(packet, packetNum, i * PAGE + got, n, payload.length);
    }
    // Anything left must produce nothing: a pending literal or more blocks mean the packet holds more than n pages.
    for (;;) {
      const step = z.run(Z_SYNC_FLUSH, payload, inPos, payload.length - inPos, this.probeByte, 0, 1);
      inPos += step.consumed;
      if (step.produced) throw this.error(packet, packetNum, `payload yields more than ${n * PAGE} bytes (${n} pages)`);
      if (step.consumed === 0) break;
    }
    if (inPos < payload.length) throw this.error(packet, packetNum, `${payload.length - inPos} of ${payload.length} payload bytes left undecoded after ${n} pages`);
  }

  /** QEMU's zstd_recv_pages, with the same exact checks. */
  private zstdDecodePages(payload: Uint8Array, n: number, into: MultifdPageTargets, packet: number, packetNum: number | undefined): void {
    const z = (this.zds ??= new ZstdDecompressStream());
    let inPos = 0;
    for (let i = 0; i < n; i++) {
      const [t, off] = targetAt(into, i);
      const page = t.subarray(off, off + PAGE);
      let got = 0;
      while (got < PAGE) {
        const [, produced, consumed] = z.run(got === 0 ? page : page.subarray(got), payload.subarray(inPos));
        inPos += consumed;
        got += produced;
        if (consumed === 0 && produced === 0) break;
      }
      if (got < PAGE) throw this.short(packet, packetNum, i * PAGE + got, n, payload.length);
    }
    for (;;) {
      const [, produced, consumed] = z.run(this.probeByte, payload.subarray(inPos));
      inPos += consumed;
      if (produced) throw this.error(packet, packetNum, `payload yields more than ${n * PAGE} bytes (${n} pages)`);
      if (consumed === 0) break;
    }
    if (inPos < payload.length) throw this.error(packet, packetNum, `${payload.length - inPos} of ${payload.length} payload bytes left undecoded after ${n} pages`);
  }

  private short(packet: number, packetNum: number | undefined, got: number, n: number, size: number): MultifdCompressionError {
    return this.error(packet, packetNum, `payload (${size} bytes) yields only ${got} bytes, expected ${n * PAGE} (${n} pages): truncated or corrupt`);
  }

  private error(packet: number, packetNum: number | undefined, reason: string, cause?: unknown): MultifdCompressionError {
    return new MultifdCompressionError(this.channel, this.method, packet, packetNum, reason, cause === undefined ? undefined : { cause });
  }

  close(): void {
    this.closed = true;
    this.deflate?.close();
    this.inflate?.close();
    this.deflate = this.inflate = undefined;
    this.zcs = this.zds = undefined; // freed by their finalizers
    this.out = undefined;
  }
}

// ---- plug-in for the multifd channels (codec.ts) ----

/** Adapters to the multifd engine's per-channel codec interface. */
export function multifdSendCodec(method: MultifdCompression, level: number, options?: MultifdCodecOptions): MultifdSendCodec & { readonly codec: MultifdCodec } {
  const codec = createMultifdCodec(method, level, options);
  return { codec, flags: codec.flags, encode: (pages) => codec.compressPacket(pages), close: () => codec.close() };
}

export function multifdRecvCodec(method: MultifdCompression, options?: MultifdCodecOptions): MultifdRecvCodec & { readonly codec: MultifdCodec } {
  const codec = createMultifdCodec(method, multifdLevelRange(method)[0], options);
  return { codec, flags: codec.flags, decode: (payload, targets) => codec.decompressPacket(payload, targets.length, targets), close: () => codec.close() };
}

/** Register zlib and zstd with the multifd engine (done when this module is loaded). */
export function registerMultifdCompression(): void {
  for (const method of ['zlib', 'zstd'] as const) {
    registerMultifdCodec(method, { send: (level) => multifdSendCodec(method, level), recv: () => multifdRecvCodec(method) });
  }
}

registerMultifdCompression();
